//! `loft train`: start a LoRA run (or resume one) and follow it with a progress bar and a line per step.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::model::lora::{ALL_LINEAR_TARGETS, ATTENTION_TARGETS};
use crate::engine::train::prepare::{prepare, PrepareEvent};
use crate::engine::train::run::{default_runs_dir, sha256_file, RunDir, RunSpec};
use crate::engine::train::{self, TrainConfig, TrainEvent};

#[derive(Args)]
pub struct TrainArgs {
    /// A Hugging Face model folder, a .gguf file, or a hub repo id.
    #[arg(long, short, required_unless_present = "resume")]
    model: Option<String>,
    /// The training data (.json or .jsonl).
    #[arg(long, short, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// A separate evaluation file (otherwise --eval-split holds rows out of --data).
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Fraction (below 1) or number of rows held out for evaluation.
    #[arg(long, default_value_t = 0.1)]
    eval_split: f64,
    /// A run.toml (or a TrainConfig TOML) to start from; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where run folders go (default: the platform's data folder, e.g. ~/.local/share/loft/runs).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A name for the run folder.
    #[arg(long, default_value = "lora")]
    name: String,
    /// Continue an interrupted run from its last checkpoint.
    #[arg(long, conflicts_with_all = ["model", "data", "config"])]
    resume: Option<PathBuf>,
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long)]
    epochs: Option<f64>,
    /// Examples per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    /// LoRA rank r.
    #[arg(long)]
    rank: Option<usize>,
    /// lora_alpha.
    #[arg(long)]
    alpha: Option<f64>,
    /// lora_dropout.
    #[arg(long)]
    dropout: Option<f64>,
    /// all | attention | a comma-separated list such as q_proj,v_proj.
    #[arg(long)]
    targets: Option<String>,
    /// Scale by alpha/sqrt(r) (rsLoRA).
    #[arg(long)]
    rslora: bool,
    #[arg(long)]
    max_seq_len: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    eval_every: Option<usize>,
    #[arg(long)]
    save_every: Option<usize>,
    /// Train on every token, not only the assistant's.
    #[arg(long)]
    train_on_all_tokens: bool,
    /// Truncate conversations longer than max_seq_len instead of dropping them.
    #[arg(long)]
    truncate: bool,
    /// Train without the rows that have errors instead of refusing the data.
    #[arg(long)]
    skip_error_rows: bool,
    /// Recompute activations in the backward pass: much less memory, about a third slower.
    #[arg(long)]
    gradient_checkpointing: bool,
}

impl TrainArgs {
    fn config(&self) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(path) => read_config(path)?,
            None => TrainConfig::default(),
        };
        let set = |slot: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut c.micro_batch_size, self.batch_size);
        set(&mut c.grad_accum, self.grad_accum);
        set(&mut c.lora.r, self.rank);
        set(&mut c.max_seq_len, self.max_seq_len);
        set(&mut c.eval_every, self.eval_every);
        set(&mut c.save_every, self.save_every);
        if self.max_steps.is_some() {
            c.max_steps = self.max_steps;
        }
        if let Some(e) = self.epochs {
            c.epochs = e;
            c.max_steps = self.max_steps;
        }
        if let Some(v) = self.lr {
            c.lr = v;
        }
        if let Some(v) = self.alpha {
            c.lora.alpha = v;
        }
        if let Some(v) = self.dropout {
            c.lora.dropout = v;
        }
        if let Some(v) = self.seed {
            c.seed = v;
        }
        if self.rslora {
            c.lora.use_rslora = true;
        }
        if self.gradient_checkpointing {
            c.gradient_checkpointing = true;
        }
        if let Some(t) = &self.targets {
            c.lora.targets = parse_targets(t)?;
        }
        c.validate()
            .map_err(|m| anyhow::anyhow!("invalid setting: {m}"))?;
        Ok(c)
    }
}

/// A TOML file holding either a whole run.toml (its [train] table is used) or a TrainConfig.
fn read_config(path: &PathBuf) -> Result<TrainConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Ok(spec) = toml::from_str::<RunSpec>(&text) {
        return Ok(spec.train);
    }
    toml::from_str::<TrainConfig>(&text)
        .with_context(|| format!("{} is not a valid training configuration", path.display()))
}

pub fn parse_targets(text: &str) -> Result<Vec<String>> {
    let names: Vec<String> = match text.trim() {
        "all" | "all-linear" => ALL_LINEAR_TARGETS.iter().map(|s| s.to_string()).collect(),
        "attention" => ATTENTION_TARGETS.iter().map(|s| s.to_string()).collect(),
        list => list
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    if let Some(bad) = names
        .iter()
        .find(|n| !ALL_LINEAR_TARGETS.contains(&n.as_str()))
    {
        bail!(
            "unknown target module `{bad}`; choose from {} (or all, attention)",
            ALL_LINEAR_TARGETS.join(", ")
        );
    }
    Ok(names)
}

pub fn train(args: TrainArgs) -> Result<()> {
    let (spec, run, resume) = match &args.resume {
        Some(dir) => {
            let (run, spec) = RunDir::open(dir)?;
            if run.checkpoints().is_empty() {
                bail!(
                    "{} has no checkpoint to resume from; start the run again",
                    dir.display()
                );
            }
            (spec, run, true)
        }
        None => {
            let (Some(model), Some(data)) = (&args.model, &args.data) else {
                bail!("--model and --data are required (or --resume RUN_DIR)");
            };
            let spec = RunSpec {
                name: args.name.clone(),
                model: model.clone(),
                data: data.clone(),
                data_sha256: sha256_file(data)?,
                eval_data: args.eval_data.clone(),
                eval_data_sha256: args
                    .eval_data
                    .as_ref()
                    .map(|p| sha256_file(p))
                    .transpose()?,
                eval_split: args.eval_split,
                train_on_all_tokens: args.train_on_all_tokens,
                truncate_overlong: args.truncate,
                skip_error_rows: args.skip_error_rows,
                created: crate::engine::train::run::timestamp(),
                loft_version: env!("CARGO_PKG_VERSION").to_string(),
                train: args.config()?,
            };
            let runs_dir = args.out.clone().unwrap_or_else(default_runs_dir);
            let run = RunDir::create(&runs_dir, &spec)?;
            (spec, run, false)
        }
    };
    let run_path = run.path.clone();
    eprintln!("run folder: {}", run_path.display());
    let cancel = AtomicBool::new(false);
    let mut on_prepare = |e: PrepareEvent| match e {
        PrepareEvent::LoadingModel => eprintln!("loading the model…"),
        PrepareEvent::Download(crate::engine::hub::DownloadEvent::File { name, .. }) => {
            eprintln!("downloading {name}…")
        }
        _ => {}
    };
    let (job, prepared) = prepare(&spec, run, resume, &mut on_prepare, &cancel)?;
    eprintln!(
        "{} training and {} evaluation examples on {}{}",
        prepared.train_examples,
        prepared.eval_examples,
        prepared.device,
        if prepared.dropped_overlong > 0 {
            format!(
                " ({} too long for max_seq_len {} were dropped)",
                prepared.dropped_overlong, spec.train.max_seq_len
            )
        } else {
            String::new()
        }
    );
    let handle = train::spawn(job);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // indicatif draws only on a terminal; elsewhere (logs, CI, tests) the lines go to stderr directly.
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let mut outcome = Ok(());
    for event in handle.events.iter() {
        match event {
            TrainEvent::Started {
                total_steps,
                start_step,
                trainable_parameters,
                total_parameters,
                ..
            } => {
                bar.set_length(total_steps as u64);
                bar.set_position(start_step as u64);
                say(format!(
                    "training {trainable_parameters} LoRA parameters ({:.2}% of {total_parameters}){}",
                    100.0 * trainable_parameters as f64 / total_parameters.max(1) as f64,
                    if start_step > 0 { format!(", resuming at step {start_step}") } else { String::new() }
                ));
            }
            TrainEvent::Step(m) => {
                bar.set_position(m.step as u64);
                bar.set_message(format!(
                    "loss {:.4}  {:.0} tok/s  ETA {}s",
                    m.loss,
                    m.tokens_per_second,
                    m.eta.as_secs()
                ));
                say(format!(
                    "step {:>5}/{}  loss {:.4}  lr {:.2e}  grad-norm {:.3}  {:.0} tok/s  {:.0} MB",
                    m.step,
                    m.total_steps,
                    m.loss,
                    m.lr,
                    m.grad_norm,
                    m.tokens_per_second,
                    m.memory_bytes as f64 / 1e6
                ));
            }
            TrainEvent::Eval {
                step,
                loss,
                perplexity,
            } => {
                say(format!(
                    "eval  {step:>5}  loss {loss:.4}  perplexity {perplexity:.2}"
                ));
            }
            TrainEvent::CheckpointSaved { step, path } => {
                say(format!("checkpoint {step}: {}", path.display()));
            }
            TrainEvent::Finished { adapter_dir, .. } => {
                bar.finish_and_clear();
                eprintln!("adapter (PEFT format): {}", adapter_dir.display());
            }
            TrainEvent::Cancelled { step, .. } => {
                bar.abandon();
                eprintln!(
                    "cancelled at step {step}; resume with `loft train --resume {}`",
                    run_path.display()
                );
            }
            TrainEvent::Failed { reason, advice } => {
                bar.abandon();
                outcome = Err(anyhow::anyhow!("{reason}\n{advice}"));
            }
            TrainEvent::Paused { .. } | TrainEvent::Resumed { .. } => {}
        }
    }
    handle.join();
    outcome?;
    println!("{}", run_path.display());
    Ok(())
}
