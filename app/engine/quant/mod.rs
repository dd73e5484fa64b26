//! Frozen base weights kept compressed: NF4 as QLoRA and bitsandbytes define it, and a GGUF model's own
//! quantized blocks.

pub mod ggml;
pub mod nf4;

pub use ggml::GgmlMatrix;
pub use nf4::Nf4Matrix;
