//! `loft` on the command line: the same engine functions the app calls, for scripts, tests and benchmarks.

mod models;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loft",
    version,
    about = "Fine-tune Hugging Face language models with LoRA and QLoRA"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, size, context length, vocabulary and chat template.
    Inspect(models::InspectArgs),
    /// List the models in the Hugging Face cache.
    Models(models::ModelsArgs),
    /// Answer a prompt with a model, streaming the reply.
    Generate(models::GenerateArgs),
}

/// Run the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Inspect(args)) => models::inspect(args),
        Some(Command::Models(args)) => models::models(args),
        Some(Command::Generate(args)) => models::generate(args),
        None => {
            use clap::CommandFactory;
            // The desktop window arrives with the app issue; until then, show what the CLI does.
            let _ = Cli::command().print_help();
            Ok(())
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
