//! The whole product without pixels: plain blocking functions over plain data.
//! Nothing under `engine` may import a UI crate; the GUI and the CLI both call in here.

pub mod adapter;
pub mod arch;
pub mod cache;
pub mod chat;
pub mod clock;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod generate;
pub mod gguf;
pub mod hub;
pub mod jinja;
pub mod model;
pub mod quant;
pub mod rng;
pub mod source;
pub mod sysmem;
pub mod tokenizer;
pub mod train;
pub mod units;
pub mod weights;

pub use error::{ModelError, Result};
