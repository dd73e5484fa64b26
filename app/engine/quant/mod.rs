//! Frozen base weights kept compressed: NF4 as QLoRA and bitsandbytes define it, checkpoints that
//! bitsandbytes saved already quantized, and a GGUF model's own quantized blocks.

pub mod bnb;
pub mod ggml;
pub mod nf4;

pub use ggml::GgmlMatrix;
pub use nf4::Nf4Matrix;
