//! The `loft train` command line that starts or resumes a run: shown by the app, so what a person set up
//! in the window can be scripted, and tested against the CLI's own parser.

use std::path::Path;

use super::config::TrainConfig;
use super::run::RunSpec;

/// The `loft train …` line that starts the same run as `spec` (runs under `out`), or that resumes
/// `resume`. Settings equal to their defaults are left out. (Learning-rate changes made on resume are
/// not flags: they stay in the run's run.toml.)
pub fn command_line(spec: &RunSpec, out: Option<&Path>, resume: Option<&Path>) -> String {
    let quote = |text: &str| -> String {
        let plain = text
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_./:=@,+".contains(ch));
        if plain && !text.is_empty() {
            text.to_string()
        } else {
            format!("'{}'", text.replace('\'', r"'\''"))
        }
    };
    if let Some(run) = resume {
        return format!("loft train --resume {}", quote(&run.display().to_string()));
    }
    let d = TrainConfig::default();
    let c = &spec.train;
    let mut args = vec![
        "loft train".to_string(),
        format!("--model {}", quote(&spec.model)),
        format!("--data {}", quote(&spec.data.display().to_string())),
    ];
    let mut push = |flag: &str, value: String| args.push(format!("--{flag} {value}"));
    match &spec.eval_data {
        Some(e) => push("eval-data", quote(&e.display().to_string())),
        None => push("eval-split", spec.eval_split.to_string()),
    }
    if let Some(out) = out {
        push("out", quote(&out.display().to_string()));
    }
    push("name", quote(&spec.name));
    if c.method != d.method {
        push("method", c.method.name().to_string());
    }
    if c.quant != d.quant {
        push("quant", c.quant.name().to_string());
    }
    match c.max_steps {
        Some(s) => push("max-steps", s.to_string()),
        None => push("epochs", c.epochs.to_string()),
    }
    push("batch-size", c.micro_batch_size.to_string());
    push("grad-accum", c.grad_accum.to_string());
    push("lr", c.lr.to_string());
    push("rank", c.lora.r.to_string());
    push("alpha", c.lora.alpha.to_string());
    push("dropout", c.lora.dropout.to_string());
    push("targets", c.lora.targets.join(","));
    push("max-seq-len", c.max_seq_len.to_string());
    push("seed", c.seed.to_string());
    if c.eval_every != d.eval_every {
        push("eval-every", c.eval_every.to_string());
    }
    if c.save_every != d.save_every {
        push("save-every", c.save_every.to_string());
    }
    if c.save_every_minutes != d.save_every_minutes {
        push("save-every-minutes", c.save_every_minutes.to_string());
    }
    if c.keep_checkpoints != d.keep_checkpoints {
        push("keep-checkpoints", c.keep_checkpoints.to_string());
    }
    if c.schedule != d.schedule {
        push("schedule", format!("{:?}", c.schedule).to_lowercase());
    }
    match c.warmup_steps {
        Some(w) => push("warmup-steps", w.to_string()),
        None if c.warmup_ratio != d.warmup_ratio => {
            push("warmup-ratio", c.warmup_ratio.to_string())
        }
        None => {}
    }
    let floats = [
        ("weight-decay", c.weight_decay, d.weight_decay),
        ("max-grad-norm", c.max_grad_norm, d.max_grad_norm),
        ("beta1", c.betas.0, d.betas.0),
        ("beta2", c.betas.1, d.betas.1),
        ("adam-eps", c.eps, d.eps),
    ];
    for (flag, value, default) in floats {
        if value != default {
            push(flag, value.to_string());
        }
    }
    if c.log_every != d.log_every {
        push("log-every", c.log_every.to_string());
    }
    let switches = [
        ("optimizer-offload", c.optimizer_offload),
        ("rslora", c.lora.use_rslora),
        ("gradient-checkpointing", c.gradient_checkpointing),
        ("group-by-length", c.group_by_length),
        ("train-on-all-tokens", spec.train_on_all_tokens),
        ("truncate", spec.truncate_overlong),
        ("skip-error-rows", spec.skip_error_rows),
    ];
    for (flag, on) in switches {
        if on {
            args.push(format!("--{flag}"));
        }
    }
    args.join(" ")
}
