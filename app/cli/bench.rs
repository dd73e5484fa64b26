//! `loft bench-train`: training-step speed and peak memory on synthetic tokens, the Loft side of
//! scripts/bench_train.sh (whose other side is PyTorch + PEFT on the same model, batch and settings).

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Tensor};
use clap::Args;

use super::models::ModelArg;
use crate::engine::device;
use crate::engine::model::{LoadOptions, LoraConfig, Model};
use crate::engine::source;
use crate::engine::train::loss::masked_lm_loss;
use crate::engine::train::optim::AdamW;

#[derive(Args)]
pub struct BenchTrainArgs {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Recompute each layer in the backward pass instead of keeping its activations.
    #[arg(long)]
    gradient_checkpointing: bool,
}

pub fn bench_train(args: BenchTrainArgs) -> Result<()> {
    let files = args.model.resolve()?;
    let (device, dtype) = device::best_device();
    let mut model: Model = source::load(
        &files,
        &LoadOptions {
            device: device.clone(),
            dtype,
        },
    )?
    .model;
    let lora = LoraConfig {
        r: args.rank,
        alpha: 2.0 * args.rank as f64,
        dropout: 0.0,
        ..LoraConfig::default()
    };
    model.attach_lora(&lora, 0)?;
    model.set_gradient_checkpointing(args.gradient_checkpointing)?;
    let params = model
        .adapters()
        .flat_map(|(p, a)| {
            [
                (format!("{p}.A"), a.a.clone()),
                (format!("{p}.B"), a.b.clone()),
            ]
        })
        .collect();
    let mut opt = AdamW::new(params, (0.9, 0.999), 1e-8, 0.0)?;
    // The same token ids as the reference script: (i · 7919) mod (vocab − 152).
    let vocab = model.arch.vocab_size as u64 - 152;
    let n = args.batch * args.seq;
    let ids: Vec<u32> = (0..n as u64).map(|i| (i * 7919 % vocab) as u32).collect();
    let ids = Tensor::from_vec(ids, (args.batch, args.seq), &device)?;
    let mask = Tensor::ones((args.batch, args.seq), DType::F32, &device)?;
    let mut times = Vec::new();
    // Forward and backward seconds of each step, to show where a step's time goes.
    let mut phases = Vec::new();
    for _ in 0..args.steps {
        let start = Instant::now();
        let (loss, _) = masked_lm_loss(&model, &ids, &mask)?;
        let forward = start.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        drop(loss);
        phases.push((forward, start.elapsed().as_secs_f64() - forward));
        let grads: Vec<Tensor> = opt
            .params()
            .iter()
            .map(|(_, v)| {
                grads
                    .get(v.as_tensor())
                    .cloned()
                    .map_or_else(|| v.as_tensor().zeros_like(), Ok)
            })
            .collect::<candle_core::Result<_>>()?;
        opt.apply(&grads, 2e-4)?;
        times.push(start.elapsed().as_secs_f64());
    }
    let steady = if times.len() > 1 {
        &times[1..]
    } else {
        &times[..]
    };
    let per_step = steady.iter().sum::<f64>() / steady.len() as f64;
    let skip = usize::from(phases.len() > 1);
    let mean = |f: fn(&(f64, f64)) -> f64| {
        phases[skip..].iter().map(f).sum::<f64>() / (phases.len() - skip) as f64
    };
    println!(
        "loft{}  {}x{} tokens, r={}: {per_step:.2} s/step (forward {:.2}, backward {:.2}), {:.0} tokens/s, peak RSS {:.2} GB ({})",
        if args.gradient_checkpointing {
            " (ckpt)"
        } else {
            "       "
        },
        args.batch,
        args.seq,
        args.rank,
        mean(|p| p.0),
        mean(|p| p.1),
        n as f64 / per_step,
        peak_rss() as f64 / 1e9,
        device::describe(&device)
    );
    Ok(())
}

/// Peak resident memory of this process, in bytes; 0 where the system does not say.
fn peak_rss() -> u64 {
    crate::engine::sysmem::peak_resident().unwrap_or(0)
}
