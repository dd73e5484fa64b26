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
use crate::engine::train::{Method, TrainConfig};

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
    /// lora (the base in f32) or qlora (the base in NF4 with double quantization, dequantized for each
    /// product).
    #[arg(long, value_parser = ["lora", "qlora"], default_value = "lora")]
    method: String,
}

impl BenchTrainArgs {
    /// The trainer's defaults, with what was asked for instead.
    fn config(&self) -> Result<TrainConfig> {
        let mut c = TrainConfig {
            max_steps: Some(self.steps.max(1)),
            max_seq_len: self.seq.max(8),
            gradient_checkpointing: self.gradient_checkpointing,
            method: match self.method.as_str() {
                "qlora" => Method::Qlora,
                _ => Method::Lora,
            },
            ..TrainConfig::default()
        };
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
    println!(
        "loft {:<5}{}  {size}x{seq} tokens x {accum} micro-batches, r={}, dropout {}, clip {}: {per_step:.2} s/step, {:.0} tokens/s, {cpu_per_step:.2} CPU s/step, peak RSS {:.2} GB ({})",
        config.method.name(),
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
