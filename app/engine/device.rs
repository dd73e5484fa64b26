//! Which device and compute dtype Loft runs on: the first CUDA GPU when built with `--features cuda`
//! and one is present (bf16 base weights), else the CPU (f32).

use candle_core::{DType, Device};

pub fn best_device() -> (Device, DType) {
    #[cfg(feature = "cuda")]
    if candle_core::utils::cuda_is_available() {
        if let Ok(device) = Device::new_cuda(0) {
            return (device, DType::BF16);
        }
    }
    (Device::Cpu, DType::F32)
}

/// A one-line description for people: "CPU (8 threads)" or "CUDA GPU 0: NVIDIA H200, 143771 MiB".
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!(
            "CPU ({} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        Device::Cuda(_) => match gpu_summary() {
            Some(gpu) => format!("CUDA GPU 0: {gpu}"),
            None => "CUDA GPU 0".to_string(),
        },
        Device::Metal(_) => "Apple GPU (Metal)".to_string(),
    }
}

/// The first NVIDIA GPU's name and memory ("NVIDIA H200, 143771 MiB"), asked of nvidia-smi; None when
/// there is no NVIDIA driver.
pub fn gpu_summary() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next()?.trim();
    (out.status.success() && !first.is_empty()).then(|| first.to_string())
}
