//! `loft bench-train`: the speed and peak memory of the trainer's own optimizer step ([`train_step`],
//! the one `loft train` runs) with the trainer's defaults — dropout, gradient clipping, accumulation —
//! on synthetic tokens. The Loft side of scripts/bench_train.sh, whose other side is PyTorch + PEFT on
//! the same model, batch and settings.

use std::time::Instant;

use anyhow::Result;
use clap::Args;

use super::models::ModelArg;
use crate::engine::data::Example;
use crate::engine::device;
use crate::engine::model::{LoadOptions, Model};
use crate::engine::source;
use crate::engine::train::checkpoint::optimizer_for;
use crate::engine::train::step::{pack, train_step, Batch};
use crate::engine::train::TrainConfig;

#[derive(Args)]
pub struct BenchTrainArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Examples per micro-batch (default: the trainer's, 4).
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per example.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Micro-batches per optimizer step (default: the trainer's, 4).
    #[arg(long)]
    grad_accum: Option<usize>,
    /// LoRA rank (default: the trainer's, 16; alpha stays twice the rank).
    #[arg(long)]
    rank: Option<usize>,
    /// LoRA dropout (default: the trainer's, 0.05).
    #[arg(long)]
    dropout: Option<f64>,
    /// Gradient clipping norm (default: the trainer's, 1.0; 0: off).
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Optimizer steps to time; the first is a warm-up and is not counted.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Recompute each layer in the backward pass instead of keeping its activations.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// lora (the base in f32) or qlora (the base quantized to NF4 as it loads).
    #[arg(long, value_parser = ["lora", "qlora"], default_value = "lora")]
    method: String,
    /// Print one JSON object (memory figures in bytes) instead of the line for people.
    #[arg(long)]
    json: bool,
}

impl BenchTrainArgs {
    /// The trainer's defaults, with what was asked for instead.
    fn config(&self) -> Result<TrainConfig> {
        let mut c = TrainConfig {
            max_steps: Some(self.steps.max(1)),
            max_seq_len: self.seq.max(8),
            gradient_checkpointing: self.gradient_checkpointing,
            ..TrainConfig::default()
        };
        if self.method == "qlora" {
            c.method = crate::engine::train::Method::Qlora;
        }
        if let Some(b) = self.batch {
            c.micro_batch_size = b;
        }
        if let Some(g) = self.grad_accum {
            c.grad_accum = g;
        }
        if let Some(r) = self.rank {
            c.lora.r = r;
            c.lora.alpha = 2.0 * r as f64;
        }
        if let Some(p) = self.dropout {
            c.lora.dropout = p;
        }
        if let Some(n) = self.max_grad_norm {
            c.max_grad_norm = n;
        }
        c.validate()
            .map_err(|m| anyhow::anyhow!("invalid setting: {m}"))?;
        Ok(c)
    }
}

pub fn bench_train(args: BenchTrainArgs) -> Result<()> {
    let config = args.config()?;
    let files = args.model.resolve()?;
    // What the process holds before the model: code, libraries, the runtime's own allocations.
    let baseline_rss = crate::engine::sysmem::resident().unwrap_or(0);
    let (device, dtype) = device::best_device();
    let mut model: Model = source::load(
        &files,
        &LoadOptions {
            device: device.clone(),
            dtype,
            base: config.base_format(),
        },
    )?
    .model;
    let loaded_rss = crate::engine::sysmem::resident().unwrap_or(0);
    model.attach_lora(&config.lora, config.seed)?;
    model.set_gradient_checkpointing(config.gradient_checkpointing)?;
    let mut optimizer = optimizer_for(&model, &config)?;
    let (size, accum, seq) = (
        config.micro_batch_size,
        config.grad_accum,
        config.max_seq_len,
    );
    // The same token ids as the reference script: position i of the whole step is (i · 7919) mod
    // (vocab − 152), every token trained on.
    let vocab = model.arch.vocab_size as u64 - 152;
    let examples: Vec<Example> = (0..size * accum)
        .map(|row| Example {
            row,
            ids: (0..seq as u64)
                .map(|t| ((row as u64 * seq as u64 + t) * 7919 % vocab) as u32)
                .collect(),
            mask: vec![true; seq],
            truncated: false,
        })
        .collect();
    let batches: Vec<Batch> = examples
        .chunks(size)
        .map(|rows| pack(&rows.iter().collect::<Vec<_>>(), seq, 0, &device))
        .collect::<crate::engine::error::Result<_>>()?;
    let total_steps = args.steps.max(1);
    // Wall-clock and CPU seconds of each step: on a shared machine the CPU time says what a step costs
    // when the wall clock says mostly how busy the neighbours were.
    let mut times = Vec::new();
    let mut cpu_times = Vec::new();
    for step in 0..total_steps {
        let (start, cpu_start) = (Instant::now(), cpu_seconds());
        train_step(
            &model,
            &mut optimizer,
            &batches,
            config.lr_at(step, total_steps),
            config.max_grad_norm,
            config.seed,
            step * accum,
            &mut || false,
        )?;
        times.push(start.elapsed().as_secs_f64());
        cpu_times.push(cpu_seconds() - cpu_start);
    }
    // The first step warms caches and allocators up: leave it out when there are others.
    let steady = |v: &[f64]| {
        let v = if v.len() > 1 { &v[1..] } else { v };
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (per_step, cpu_per_step) = (steady(&times), steady(&cpu_times));
    let tokens = size * accum * seq;
    if args.json {
        let figures = serde_json::json!({
            "method": config.method.name(),
            "rows": size, "seq": seq, "grad_accum": accum,
            "gradient_checkpointing": config.gradient_checkpointing,
            "baseline_rss": baseline_rss, "loaded_rss": loaded_rss, "peak_rss": peak_rss(),
            "seconds_per_step": per_step,
        });
        println!("{figures}");
        return Ok(());
    }
    println!(
        "loft{}  {size}x{seq} tokens x {accum} micro-batches, r={}, dropout {}, clip {}: {per_step:.2} s/step, {:.0} tokens/s, {cpu_per_step:.2} CPU s/step, peak RSS {:.2} GB ({})",
        if config.gradient_checkpointing {
            " (ckpt)"
        } else {
            "       "
        },
        config.lora.r,
        config.lora.dropout,
        config.max_grad_norm,
        tokens as f64 / per_step,
        peak_rss() as f64 / 1e9,
        device::describe(&device)
    );
    Ok(())
}

/// User and system CPU seconds this process has used (all threads); 0 where getrusage is missing.
fn cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes into the zeroed struct we own.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            return seconds(usage.ru_utime) + seconds(usage.ru_stime);
        }
    }
    0.0
}

/// Peak resident memory of this process, in bytes; 0 where the system does not say.
fn peak_rss() -> u64 {
    crate::engine::sysmem::peak_resident().unwrap_or(0)
}

#[derive(Args)]
pub struct BenchEstimateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Batch shapes to measure, rows × tokens, comma-separated.
    #[arg(long, default_value = "4x256,2x512")]
    shapes: String,
    /// Optimizer steps per measurement (each in a fresh process).
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 2)]
    grad_accum: usize,
}

/// `loft bench-estimate`: the memory estimate against the measured peak, for LoRA and QLoRA, with
/// and without gradient checkpointing, at each batch shape. Each row trains a few real steps in a
/// fresh `loft bench-train` process, so that one row's peak cannot hide in another's, and reads that
/// process's peak resident memory (the CPU; a GPU's peak would come from its allocator).
pub fn bench_estimate(args: BenchEstimateArgs) -> Result<()> {
    use crate::engine::train::memory::{BatchShape, DeviceKind, MemoryEstimate, Part};
    use crate::engine::train::Method;
    let shapes: Vec<(usize, usize)> = args
        .shapes
        .split(',')
        .map(|s| {
            let (r, t) = s.trim().split_once('x').unwrap_or(("", ""));
            match (r.parse(), t.parse()) {
                (Ok(r), Ok(t)) if r > 0 && t > 1 => Ok((r, t)),
                _ => Err(anyhow::anyhow!(
                    "--shapes: `{s}` is not rows x tokens, e.g. 4x256"
                )),
            }
        })
        .collect::<Result<_>>()?;
    let files = args.model.resolve()?;
    let arch = crate::engine::source::inspect(&files)?.arch;
    let exe = std::env::current_exe()?;
    println!(
        "CPU: {} threads; {}; {} steps of {} micro-batches per row, each row in a fresh process",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.model.model,
        args.steps,
        args.grad_accum
    );
    println!(
        "{:<6} {:<5} {:>8}  {:>10} {:>10} {:>7}   {:>10} {:>10} {:>10}",
        "method", "ckpt", "batch", "estimate", "measured", "error", "activ.", "logits", "baseline"
    );
    let mut worst: f64 = 0.0;
    for method in [Method::Lora, Method::Qlora] {
        for ckpt in [false, true] {
            for &(rows, seq) in &shapes {
                let mut command = std::process::Command::new(&exe);
                command.args([
                    "bench-train",
                    "--model",
                    &args.model.model,
                    "--batch",
                    &rows.to_string(),
                    "--seq",
                    &seq.to_string(),
                    "--grad-accum",
                    &args.grad_accum.to_string(),
                    "--steps",
                    &args.steps.to_string(),
                    "--method",
                    method.name(),
                    "--json",
                ]);
                if ckpt {
                    command.arg("--gradient-checkpointing");
                }
                if args.model.offline {
                    command.arg("--offline");
                }
                let out = command.output()?;
                if !out.status.success() {
                    anyhow::bail!(
                        "bench-train failed for {} {rows}x{seq}: {}",
                        method.name(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let figures: serde_json::Value =
                    serde_json::from_str(text.lines().last().unwrap_or_default())
                        .map_err(|e| anyhow::anyhow!("bench-train printed `{text}`: {e}"))?;
                let measured = figures["peak_rss"].as_u64().unwrap_or(0);
                let config = TrainConfig {
                    method,
                    gradient_checkpointing: ckpt,
                    micro_batch_size: rows,
                    max_seq_len: seq,
                    grad_accum: args.grad_accum,
                    ..TrainConfig::default()
                };
                let estimate = MemoryEstimate::new(
                    &arch,
                    &config,
                    DeviceKind::Cpu,
                    BatchShape { rows, longest: seq },
                );
                let error = 100.0 * (estimate.total as f64 - measured as f64) / measured as f64;
                worst = worst.max(error.abs());
                let gb = |b: u64| format!("{:.3} GB", b as f64 / 1e9);
                println!(
                    "{:<6} {:<5} {:>8}  {:>10} {:>10} {:>+6.1}%   {:>10} {:>10} {:>10}",
                    method.name(),
                    if ckpt { "on" } else { "off" },
                    format!("{rows}x{seq}"),
                    gb(estimate.total),
                    gb(measured),
                    error,
                    gb(estimate.bytes(Part::Activations)),
                    gb(estimate.bytes(Part::Logits)),
                    gb(figures["baseline_rss"].as_u64().unwrap_or(0)),
                );
            }
        }
    }
    println!("largest error: {worst:.1}%");
    Ok(())
}
