//! Training LoRA adapters: the configuration, the loss, the optimizer, the run folder, and the loop
//! that drives them on a worker thread.

pub mod checkpoint;
pub mod command;
pub mod config;
pub mod loss;
pub mod memory;
pub mod optim;
pub mod order;
pub mod prepare;
pub mod run;
pub mod runs;
pub mod session;
pub mod sizing;
pub mod step;
pub mod trainer;

pub use config::{Method, QuantSource, Schedule, TrainConfig};
pub use session::{Session, SessionEvent};
pub use trainer::{spawn, QuantizationPlan, TrainCommand, TrainEvent, TrainHandle, TrainJob};
