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

/// A one-line description for people: "CPU (8 threads)" or "CUDA GPU 0".
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!(
            "CPU ({} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        Device::Cuda(_) => "CUDA GPU 0".to_string(),
        Device::Metal(_) => "Apple GPU (Metal)".to_string(),
    }
}
