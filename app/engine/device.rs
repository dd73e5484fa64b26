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

/// Installed memory of this machine in bytes, when the system says (Linux, macOS, Windows).
pub fn system_memory() -> Option<u64> {
    crate::engine::sysmem::installed()
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

/// How well LoRA training of a model of `parameters` fits in `memory` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    Comfortable,
    Tight,
    TooBig,
}

/// A rough first answer to "can this machine train it": the frozen weights in the compute dtype, about
/// as much again for activations and gradients at a small batch, and a fixed runtime share. (Measured on
/// SmolLM2-135M in f32 at batch 4 × 256 on the CPU: 1.4–1.6 GB with gradient checkpointing, 2.4 GB
/// without.)
pub fn lora_fit(parameters: u64, bytes_per_weight: u64, memory: u64) -> (Fit, u64) {
    let weights = parameters * bytes_per_weight;
    let needed = weights * 2 + 1_000_000_000;
    let fit = if needed * 2 <= memory {
        Fit::Comfortable
    } else if needed <= memory {
        Fit::Tight
    } else {
        Fit::TooBig
    };
    (fit, needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_grows_with_the_model() {
        let gb = 1_000_000_000;
        assert_eq!(lora_fit(135_000_000, 4, 16 * gb).0, Fit::Comfortable);
        assert_eq!(lora_fit(1_700_000_000, 4, 16 * gb).0, Fit::Tight);
        assert_eq!(lora_fit(8_000_000_000, 4, 16 * gb).0, Fit::TooBig);
        assert!(system_memory().is_some_and(|m| m > 0));
    }
}
