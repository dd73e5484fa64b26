//! Frozen base weights kept compressed: NF4 as QLoRA and bitsandbytes define it, and checkpoints that
//! bitsandbytes saved already quantized.

pub mod bnb;
pub mod nf4;

pub use nf4::Nf4Matrix;
