//! `loft estimate`: how much memory a training run needs, by part, against the memory available —
//! from the model's description alone, so it answers for models that are not downloaded.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::train::parse_targets;
use crate::engine::hub::HubOptions;
use crate::engine::train::memory::{self, BatchShape, DeviceKind, MemoryEstimate, Place, Verdict};
use crate::engine::train::sizing::{self, DataShape, Reach};
use crate::engine::train::{Method, QuantSource, TrainConfig};
use crate::engine::units;

#[derive(Args)]
pub struct EstimateArgs {
    /// A Hugging Face model folder or its config.json, a .gguf file, or a hub repo id
    /// (org/name[@revision]; only its config.json and tokenizer are fetched, never the weights).
    #[arg(long, short)]
    model: String,
    /// Size the batch from this dataset (.json/.jsonl) encoded with the model's tokenizer and
    /// template, instead of assuming every row is --max-seq-len tokens long.
    #[arg(long)]
    data: Option<PathBuf>,
    /// lora (a full-precision base) or qlora (a 4-bit base).
    #[arg(long, value_parser = ["lora", "qlora"], default_value = "lora")]
    method: String,
    /// With qlora: nf4 or source (a GGUF model's own quantized blocks).
    #[arg(long, value_parser = ["nf4", "source"])]
    quant: Option<String>,
    /// Examples per micro-batch (default 4, as `loft train`).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Longest sequence in tokens (default 1024, as `loft train`).
    #[arg(long)]
    max_seq_len: Option<usize>,
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Where training runs: cpu (f32, system memory) or cuda (bf16 base, GPU memory).
    #[arg(long, value_parser = ["cpu", "cuda"], default_value = "cpu")]
    device: String,
    /// GPU memory to judge against, in GB (default: the first GPU's free memory, when one is present).
    #[arg(long, value_name = "GB")]
    gpu_memory: Option<f64>,
    /// Keep AdamW's state in host memory (cuda only).
    #[arg(long)]
    optimizer_offload: bool,
    /// LoRA rank r (default 16).
    #[arg(long)]
    rank: Option<usize>,
    /// all | attention | a comma-separated list such as q_proj,v_proj (default all).
    #[arg(long)]
    targets: Option<String>,
    /// With --data: train on every token (prompt and system too), not only the assistant's.
    #[arg(long, alias = "train-on-all")]
    train_on_all_tokens: bool,
    /// With --data: cut conversations longer than --max-seq-len instead of leaving them out.
    #[arg(long)]
    truncate: bool,
    /// Never download: use only local files and the Hugging Face cache.
    #[arg(long)]
    offline: bool,
    /// Print the estimate as JSON.
    #[arg(long)]
    json: bool,
}

/// Where the batch shape came from, for the reader.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum BatchSource {
    /// Sized from the dataset.
    Data { path: PathBuf, examples: usize },
    /// micro_batch_size × max_seq_len, no data given.
    Settings,
    /// Data was given but could not be encoded (no tokenizer): the settings were used.
    SettingsInstead { reason: String },
}

#[derive(Serialize)]
struct Output<'a> {
    model: String,
    described_by: PathBuf,
    #[serde(flatten)]
    estimate: &'a MemoryEstimate,
    verdict: Verdict,
    batch_source: BatchSource,
    advice: Vec<memory::Advice>,
}

impl EstimateArgs {
    fn config(&self) -> Result<TrainConfig> {
        let mut c = TrainConfig {
            gradient_checkpointing: self.gradient_checkpointing,
            optimizer_offload: self.optimizer_offload,
            ..TrainConfig::default()
        };
        if self.method == "qlora" {
            c.method = Method::Qlora;
        }
        if self.quant.as_deref() == Some("source") {
            c.quant = QuantSource::Source;
        }
        if let Some(b) = self.batch_size {
            c.micro_batch_size = b;
        }
        if let Some(n) = self.max_seq_len {
            c.max_seq_len = n;
        }
        if let Some(r) = self.rank {
            c.lora.r = r;
            c.lora.alpha = 2.0 * r as f64;
        }
        if let Some(t) = &self.targets {
            c.lora.targets = parse_targets(t)?;
        }
        c.validate()
            .map_err(|m| anyhow::anyhow!("invalid setting: {m}"))?;
        Ok(c)
    }

    fn device(&self) -> Result<DeviceKind> {
        let device = match self.device.as_str() {
            "cuda" => DeviceKind::Cuda,
            _ => DeviceKind::Cpu,
        };
        if self.gpu_memory.is_some() && device == DeviceKind::Cpu {
            bail!("--gpu-memory is for --device cuda; on the CPU the estimate is judged against the system's free memory");
        }
        if self.optimizer_offload && device == DeviceKind::Cpu {
            bail!("--optimizer-offload moves the optimizer state from GPU memory to host memory; it means nothing with --device cpu");
        }
        Ok(device)
    }

    fn gpu_memory_bytes(&self) -> Result<Option<u64>> {
        match self.gpu_memory {
            None => Ok(None),
            Some(gb) if gb.is_finite() && gb > 0.0 && gb < 1e6 => Ok(Some((gb * 1e9) as u64)),
            Some(gb) => {
                bail!("--gpu-memory {gb}: give the GPU's memory in GB, e.g. --gpu-memory 24")
            }
        }
    }
}

pub fn estimate(args: EstimateArgs) -> Result<()> {
    let config = args.config()?;
    let device = args.device()?;
    let gpu_memory = args.gpu_memory_bytes()?;
    let cancel = AtomicBool::new(false);
    let mut on_download = super::models::print_download;
    let mut reach = Reach {
        hub: HubOptions::default(),
        offline: args.offline,
        on_download: &mut on_download,
        cancel: &cancel,
    };
    let shape = sizing::model_shape(&args.model, &mut reach)
        .with_context(|| format!("cannot read the model `{}`", args.model))?;
    let (data, batch_source) = match (&args.data, &shape.text) {
        (None, _) => (None, BatchSource::Settings),
        (Some(path), Ok(tools)) => {
            let data = sizing::data_shape(
                path,
                tools,
                &config,
                args.train_on_all_tokens,
                args.truncate,
                &cancel,
            )?;
            let source = BatchSource::Data {
                path: path.clone(),
                examples: data.examples,
            };
            (Some(data), source)
        }
        (Some(_), Err(why)) => {
            let reason = format!(
                "the data was not measured because the model's tokenizer is missing ({why}); the estimate assumes {} rows of {} tokens",
                config.micro_batch_size, config.max_seq_len
            );
            if !args.json {
                eprintln!("note: {reason}");
            }
            (None, BatchSource::SettingsInstead { reason })
        }
    };
    let estimate = match &data {
        Some(d) => MemoryEstimate::for_data(&shape.arch, &config, device, d),
        None => MemoryEstimate::new(&shape.arch, &config, device, BatchShape::assumed(&config)),
    }
    .with_available(memory::available_for(device, gpu_memory));
    let advice = estimate.advice();
    if args.json {
        let out = Output {
            model: args.model.clone(),
            described_by: shape.described_by.clone(),
            estimate: &estimate,
            verdict: estimate.verdict(),
            batch_source,
            advice,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_table(&args, &shape.described_by, &estimate, &data, &advice);
    Ok(())
}

fn print_table(
    args: &EstimateArgs,
    described_by: &std::path::Path,
    e: &MemoryEstimate,
    data: &Option<DataShape>,
    advice: &[memory::Advice],
) {
    let method = match e.method {
        Method::Lora => "LoRA",
        Method::Qlora => "QLoRA",
    };
    println!("model     {} ({})", args.model, described_by.display());
    println!(
        "run       {method} on {}, {} × {} tokens{}{}",
        match e.device {
            DeviceKind::Cpu => "the CPU (f32)",
            DeviceKind::Cuda => "a CUDA GPU (bf16 base)",
        },
        e.batch.rows,
        e.batch.longest,
        match data {
            Some(d) => format!(
                " (the largest micro-batch of {} examples; {} trained tokens)",
                d.examples, d.trained_tokens
            ),
            None => " (micro-batch size × max_seq_len)".into(),
        },
        if e.gradient_checkpointing {
            ", gradient checkpointing"
        } else {
            ""
        },
    );
    println!();
    let width = e
        .parts
        .iter()
        .map(|p| p.name.chars().count())
        .max()
        .unwrap_or(0);
    for p in &e.parts {
        println!(
            "  {:<width$}  {:>10}{}",
            p.name,
            units::bytes(p.bytes),
            match p.place {
                Place::Host => "  (host memory)",
                Place::Device => "",
            }
        );
    }
    println!("  {:<width$}  {:>10}", "Total", units::bytes(e.total));
    if e.host_total > 0 {
        println!(
            "  {:<width$}  {:>10}",
            "In host memory besides",
            units::bytes(e.host_total)
        );
    }
    println!();
    let memory_name = e.device.memory_name();
    match e.available {
        Some(a) => println!("available {} of {memory_name}", units::bytes(a)),
        None => println!(
            "available unknown ({})",
            match e.device {
                DeviceKind::Cuda => "no GPU found here; give --gpu-memory GB",
                DeviceKind::Cpu => "this system does not say how much memory is free",
            }
        ),
    }
    let verdict = match e.verdict() {
        Verdict::Fits => "fits".to_string(),
        Verdict::Tight => "fits, tightly (less than a tenth to spare)".to_string(),
        Verdict::DoesNotFit => "does not fit".to_string(),
        Verdict::Unknown => "unknown".to_string(),
    };
    println!("verdict   {verdict}");
    for a in advice {
        println!(
            "  - {}: {}{}",
            a.text,
            units::bytes(a.total),
            if a.fits { ", fits" } else { "" }
        );
    }
}
