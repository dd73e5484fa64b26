//! Loft: fine-tune Hugging Face language models with LoRA on your own workstation.
//!
//! `engine` is the whole product without pixels; `ui` is the desktop window over it; `cli` is its
//! scripting face.

pub mod cli;
pub mod engine;
pub mod ui;
