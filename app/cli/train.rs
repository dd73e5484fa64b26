//! `loft train`: start a LoRA run (or resume one) and follow it with a progress bar and a line per step.

use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::interrupt;
use crate::engine::hub::DownloadEvent;
use crate::engine::model::lora::{ALL_LINEAR_TARGETS, ATTENTION_TARGETS};
use crate::engine::train::prepare::PrepareEvent;
use crate::engine::train::run::{default_runs_dir, sha256_file, RunDir, RunSpec};
use crate::engine::train::{
    Method, QuantSource, Schedule, Session, SessionEvent, TrainCommand, TrainConfig, TrainEvent,
};

#[derive(Args)]
pub struct TrainArgs {
    /// A Hugging Face model folder, a .gguf file, or a hub repo id.
    #[arg(long, short, required_unless_present = "resume")]
    model: Option<String>,
    /// The training data (.json or .jsonl).
    #[arg(long, short, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// A separate evaluation file (otherwise --eval-split holds rows out of --data).
    #[arg(long, alias = "eval-file")]
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
    /// A name for the run folder (default: the method, lora or qlora).
    #[arg(long)]
    name: Option<String>,
    /// Continue an interrupted run from its newest readable checkpoint, with the run's own settings
    /// (only --lr may change: e.g. lower it after a divergence; the change is recorded in run.toml).
    #[arg(long, conflicts_with_all = ["model", "data", "config"])]
    resume: Option<PathBuf>,
    /// lora (a full-precision base) or qlora (a 4-bit base: much less memory for the weights).
    #[arg(long, value_parser = ["lora", "qlora"])]
    method: Option<String>,
    /// With qlora: nf4 (bitsandbytes' NF4 with double quantization) or source (a GGUF model's own
    /// quantized blocks, the weights llama.cpp and Ollama will run).
    #[arg(long, value_parser = ["nf4", "source"])]
    quant: Option<String>,
    /// Keep AdamW's state in host memory instead of the GPU's (for when GPU memory is short).
    #[arg(long)]
    optimizer_offload: bool,
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
    /// Save a checkpoint every N steps (default: every tenth of the run).
    #[arg(long)]
    save_every: Option<usize>,
    /// Also save one after this many minutes of training since the last (default 10; 0: off).
    #[arg(long)]
    save_every_minutes: Option<f64>,
    /// Keep the newest N checkpoints, deleting older ones (default 3; 0 keeps all).
    #[arg(long)]
    keep_checkpoints: Option<usize>,
    /// Batch examples of similar length together: less padding, faster steps when lengths vary.
    #[arg(long)]
    group_by_length: bool,
    /// Train on every token, not only the assistant's.
    #[arg(long, alias = "train-on-all")]
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
    /// Learning-rate schedule after warm-up: cosine, linear or constant.
    #[arg(long)]
    schedule: Option<String>,
    /// Share of the steps spent warming up the learning rate.
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Warm-up steps (instead of --warmup-ratio).
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// AdamW's decoupled weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Clip the gradients' global norm to this (0: off).
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// AdamW's β₁.
    #[arg(long)]
    beta1: Option<f64>,
    /// AdamW's β₂.
    #[arg(long)]
    beta2: Option<f64>,
    /// AdamW's ε.
    #[arg(long)]
    adam_eps: Option<f64>,
    /// Report metrics every N steps.
    #[arg(long)]
    log_every: Option<usize>,
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
        set(&mut c.keep_checkpoints, self.keep_checkpoints);
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
        match self.method.as_deref() {
            Some("qlora") => c.method = Method::Qlora,
            Some(_) => c.method = Method::Lora,
            None => {}
        }
        match self.quant.as_deref() {
            Some("source") => c.quant = QuantSource::Source,
            Some(_) => c.quant = QuantSource::Nf4,
            None => {}
        }
        if self.optimizer_offload {
            c.optimizer_offload = true;
        }
        if self.group_by_length {
            c.group_by_length = true;
        }
        if let Some(t) = &self.targets {
            c.lora.targets = parse_targets(t)?;
        }
        if let Some(s) = &self.schedule {
            c.schedule = match s.as_str() {
                "cosine" => Schedule::Cosine,
                "linear" => Schedule::Linear,
                "constant" => Schedule::Constant,
                other => bail!("--schedule must be cosine, linear or constant, not `{other}`"),
            };
        }
        let set_f = |slot: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set_f(&mut c.warmup_ratio, self.warmup_ratio);
        set_f(&mut c.weight_decay, self.weight_decay);
        set_f(&mut c.max_grad_norm, self.max_grad_norm);
        set_f(&mut c.betas.0, self.beta1);
        set_f(&mut c.betas.1, self.beta2);
        set_f(&mut c.eps, self.adam_eps);
        set_f(&mut c.save_every_minutes, self.save_every_minutes);
        set(&mut c.log_every, self.log_every);
        if self.warmup_steps.is_some() {
            c.warmup_steps = self.warmup_steps;
        }
        c.validate()
            .map_err(|m| anyhow::anyhow!("invalid setting: {m}"))?;
        Ok(c)
    }

    /// With --resume the run keeps the settings in its run.toml; refuse other training flags rather
    /// than ignore them. Returns the new peak learning rate, if --lr was given.
    fn resume_lr(&self, spec: &RunSpec) -> Result<Option<f64>> {
        let given = self.config()?;
        let defaults = TrainConfig::default();
        if (TrainConfig {
            lr: defaults.lr,
            ..given
        }) != defaults
        {
            bail!("--resume continues the run with the settings in its run.toml; only --lr may change (start a new run to change the others)");
        }
        let Some(lr) = self.lr else {
            return Ok(None);
        };
        TrainConfig {
            lr,
            ..spec.train.clone()
        }
        .validate()
        .map_err(|m| anyhow::anyhow!("invalid setting: {m}"))?;
        Ok(Some(lr))
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

/// Train; returns the exit status: 0 when the run finished or was cancelled, 130 when Ctrl+C or
/// SIGTERM stopped it (after saving a checkpoint).
pub fn train(args: TrainArgs) -> Result<i32> {
    let mut new_lr = None;
    let (spec, run, resume) = match &args.resume {
        Some(dir) => {
            let (run, spec) = RunDir::open(dir)?;
            if run.checkpoints().is_empty() {
                bail!(
                    "{} has no checkpoint to resume from; start the run again",
                    dir.display()
                );
            }
            new_lr = args.resume_lr(&spec)?;
            (spec, run, true)
        }
        None => {
            let (Some(model), Some(data)) = (&args.model, &args.data) else {
                bail!("--model and --data are required (or --resume RUN_DIR)");
            };
            let train = args.config()?;
            let spec = RunSpec {
                name: args
                    .name
                    .clone()
                    .unwrap_or_else(|| train.method.name().to_string()),
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
                train,
            };
            let runs_dir = args.out.clone().unwrap_or_else(default_runs_dir);
            let run = RunDir::create(&runs_dir, &spec)?;
            (spec, run, false)
        }
    };
    let run_path = run.path.clone();
    eprintln!("run folder: {}", run_path.display());
    let session = Session::start(spec.clone(), run, resume, std::sync::Arc::new(|| {}));
    if let Some(lr) = new_lr {
        // Taken before the first step, so the change starts where the run resumes.
        session.send(TrainCommand::SetLr(lr));
    }
    let catches_signals = interrupt::install();
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
    let mut outcome = Ok(0);
    let mut stopping = false;
    loop {
        if catches_signals && !stopping && interrupt::requested() {
            stopping = true;
            session.send(TrainCommand::Cancel);
            say("stopping: saving a checkpoint… (Ctrl+C again quits without waiting)".into());
        }
        let event = match session.events.recv_timeout(Duration::from_millis(100)) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let event = match event {
            SessionEvent::Preparing(PrepareEvent::LoadingModel) => {
                eprintln!("loading the model…");
                continue;
            }
            SessionEvent::Preparing(PrepareEvent::Download(DownloadEvent::File {
                name, ..
            })) => {
                eprintln!("downloading {name}…");
                continue;
            }
            SessionEvent::Preparing(_) => continue,
            SessionEvent::Prepared(prepared) => {
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
                continue;
            }
            SessionEvent::Train(event) => event,
        };
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
            TrainEvent::QuantizationCost {
                dense_loss,
                quantized_loss,
            } => say(format!(
                "quantization: eval loss {dense_loss:.4} with the full-precision base, {quantized_loss:.4} with the 4-bit base ({:+.4})",
                quantized_loss - dense_loss
            )),
            TrainEvent::CheckpointSaved { step, path } => {
                say(format!("checkpoint {step}: {}", path.display()));
            }
            TrainEvent::Finished { adapter_dir, .. } => {
                bar.finish_and_clear();
                eprintln!("adapter (PEFT format): {}", adapter_dir.display());
            }
            TrainEvent::Cancelled { step, checkpoint } => {
                bar.abandon();
                match checkpoint {
                    Some(_) => eprintln!(
                        "stopped after step {step}; resume with `loft train --resume {}`",
                        run_path.display()
                    ),
                    None => eprintln!("stopped before the first step; nothing to resume"),
                }
                if stopping {
                    outcome = Ok(interrupt::INTERRUPTED_EXIT);
                }
            }
            TrainEvent::Failed { reason, advice } => {
                bar.abandon();
                outcome = Err(anyhow::anyhow!("{reason}\n{advice}"));
            }
            TrainEvent::Notice { message } => say(format!("note: {message}")),
            TrainEvent::Paused { .. } | TrainEvent::Resumed { .. } => {}
        }
    }
    session.join();
    let code = outcome?;
    println!("{}", run_path.display());
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::train::command::command_line;
    use clap::Parser;
    use std::path::Path;

    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        train: TrainArgs,
    }

    /// Split like a POSIX shell does for the quoting `command_line` produces.
    fn shell_words(line: &str) -> Vec<String> {
        let (mut words, mut word, mut quoted, mut in_word) =
            (Vec::new(), String::new(), false, false);
        let mut chars = line.chars();
        while let Some(ch) = chars.next() {
            match ch {
                '\\' if !quoted => {
                    word.extend(chars.next());
                    in_word = true;
                }
                '\'' => {
                    quoted = !quoted;
                    in_word = true;
                }
                ' ' if !quoted => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                    }
                    in_word = false;
                }
                _ => {
                    word.push(ch);
                    in_word = true;
                }
            }
        }
        if in_word {
            words.push(word);
        }
        words
    }

    #[test]
    fn the_copied_command_line_trains_with_the_same_settings() {
        let train = TrainConfig {
            max_steps: Some(30),
            lr: 1.5e-4,
            lora: crate::engine::model::LoraConfig {
                r: 8,
                alpha: 16.0,
                use_rslora: true,
                targets: vec!["q_proj".into(), "v_proj".into()],
                ..Default::default()
            },
            schedule: Schedule::Linear,
            warmup_ratio: 0.1,
            weight_decay: 0.01,
            betas: (0.85, 0.99),
            gradient_checkpointing: true,
            group_by_length: true,
            save_every: 5,
            save_every_minutes: 2.5,
            keep_checkpoints: 0,
            method: Method::Qlora,
            quant: QuantSource::Source,
            optimizer_offload: true,
            ..TrainConfig::default()
        };
        let spec = RunSpec {
            name: "it's mine".into(),
            model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            data: PathBuf::from("/data/my data.jsonl"),
            data_sha256: String::new(),
            eval_data: None,
            eval_data_sha256: None,
            eval_split: 0.2,
            train_on_all_tokens: false,
            truncate_overlong: true,
            skip_error_rows: true,
            created: String::new(),
            loft_version: String::new(),
            train: train.clone(),
        };
        let line = command_line(&spec, Some(Path::new("/runs")), None);
        let words = shell_words(&line);
        assert_eq!(&words[..2], ["loft", "train"]);
        let parsed = Line::try_parse_from(&words[1..]).unwrap_or_else(|e| panic!("{line}\n{e}"));
        let args = parsed.train;
        assert_eq!(args.config().unwrap(), train, "{line}");
        assert_eq!(args.data.as_deref(), Some(Path::new("/data/my data.jsonl")));
        assert_eq!(args.name.as_deref(), Some("it's mine"));
        assert_eq!(args.eval_split, 0.2);
        assert!(args.truncate && args.skip_error_rows && !args.train_on_all_tokens);
        assert_eq!(args.out.as_deref(), Some(Path::new("/runs")));
        assert_eq!(
            command_line(&spec, None, Some(Path::new("/runs/a b"))),
            "loft train --resume '/runs/a b'"
        );
    }
}
