//! `loft` on the command line: the same engine functions the app calls, for scripts, tests and benchmarks.
//! With no command it opens the desktop window.

mod bench;
mod data;
mod estimate;
mod eval;
mod interrupt;
mod models;
pub mod train;
mod window;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loft",
    version,
    about = "Fine-tune Hugging Face language models with LoRA or QLoRA on your own workstation"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no command: datasets or a model to open in the window (as if dropped on it).
    #[arg(value_name = "FILE")]
    open: Vec<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, size, context length, vocabulary and chat template.
    Inspect(models::InspectArgs),
    /// List the models in the Hugging Face cache.
    Models(models::ModelsArgs),
    /// Answer a prompt with a model, streaming the reply.
    Generate(models::GenerateArgs),
    /// Check a dataset (.json/.jsonl) and, with --model, encode it as training will. Exit status: 0 usable,
    /// 1 errors, 2 cannot be read.
    Validate(data::ValidateArgs),
    /// How much memory a training run needs, by part, and whether it fits (works from a model's
    /// config.json alone).
    Estimate(estimate::EstimateArgs),
    /// Evaluate the base model against fine-tuned adapters on held-out examples: task metrics with
    /// intervals, loss, latency; writes report.json, rows.jsonl and report.html, printed last.
    Eval(Box<eval::EvalArgs>),
    /// Train a LoRA adapter, on a full-precision or a 4-bit (QLoRA) base, or resume a run; the last
    /// line printed is the run folder.
    Train(Box<train::TrainArgs>),
    /// Measure training-step speed and peak memory on synthetic tokens (for scripts/bench_train.sh).
    #[command(hide = true)]
    BenchTrain(bench::BenchTrainArgs),
    /// The memory estimate against the measured peak of real training steps, row by row (LoRA/QLoRA ×
    /// checkpointing × batch shapes; each row in a fresh process).
    #[command(hide = true)]
    BenchEstimate(bench::BenchEstimateArgs),
    /// Open the window at a fixed size, optionally train a few steps, save a screenshot and print
    /// time-to-first-frame and frame-time figures as JSON (the smoke test and the UI benchmark).
    #[command(hide = true)]
    WindowCheck(window::WindowCheckArgs),
}

/// Run the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // Commands return the exit status they choose (`validate`: 0, 1 or 2); errors exit with 1.
    let result = match cli.command {
        Some(Command::Inspect(args)) => models::inspect(args).map(|()| 0),
        Some(Command::Models(args)) => models::models(args).map(|()| 0),
        Some(Command::Generate(args)) => models::generate(args).map(|()| 0),
        Some(Command::Validate(args)) => data::validate(args),
        Some(Command::Estimate(args)) => estimate::estimate(args).map(|()| 0),
        Some(Command::Train(args)) => train::train(*args),
        Some(Command::Eval(args)) => eval::eval(*args),
        Some(Command::BenchTrain(args)) => bench::bench_train(args).map(|()| 0),
        Some(Command::BenchEstimate(args)) => bench::bench_estimate(args).map(|()| 0),
        Some(Command::WindowCheck(args)) => window::window_check(args),
        None => Ok(crate::ui::run(crate::ui::WindowOptions {
            open: cli.open,
            check: None,
        })),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
