//! Frozen base weights kept compressed: NF4 as QLoRA and bitsandbytes define it.

pub mod nf4;

pub use nf4::Nf4Matrix;
