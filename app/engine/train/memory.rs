//! How much memory a training run needs, by part, before anything is loaded: the estimate people
//! choose LoRA or QLoRA by, that `loft estimate` prints, and that the trainer checks before its first
//! step (on the CPU, running out of memory is not an error Loft could report but the kernel ending
//! the process, so a step that cannot fit is refused up front with what to change).
//!
//! It needs only the model's shape ([`Arch`], from config.json or GGUF metadata), the run's
//! [`TrainConfig`], the device kind and the largest micro-batch ([`BatchShape`]), so it answers for
//! 7B and 70B models that are not downloaded. Each part follows what Loft's training code keeps
//! (see the notes on each function below); `loft bench-estimate` holds the total against the
//! measured peak.

use serde::Serialize;

use crate::engine::arch::Arch;
use crate::engine::units;

use super::config::{Method, QuantSource, TrainConfig};

/// Where training runs, as far as memory is concerned: the CPU computes in f32 out of system memory;
/// a CUDA GPU holds a bf16 base (f32 adapters and loss) in its own memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }

    /// "system memory" or "GPU memory", for sentences.
    pub fn memory_name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "system memory",
            DeviceKind::Cuda => "GPU memory",
        }
    }

    /// Bytes per value of the base weights, embeddings and activations.
    fn compute_bytes(self) -> u64 {
        match self {
            DeviceKind::Cpu => 4,
            DeviceKind::Cuda => 2,
        }
    }
}

/// The largest micro-batch a run will see: `rows` examples padded to the `longest` one's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchShape {
    pub rows: usize,
    pub longest: usize,
}

impl BatchShape {
    /// Without data: `micro_batch_size` rows of `max_seq_len` tokens, the most the settings allow.
    pub fn assumed(config: &TrainConfig) -> BatchShape {
        BatchShape {
            rows: config.micro_batch_size.max(1),
            longest: config.max_seq_len.max(1),
        }
    }

    /// From the encoded training examples' token counts: the longest example (cut to `max_seq_len`)
    /// can meet `micro_batch_size - 1` others in one batch, all padded to its length. `None` when
    /// there are no examples.
    pub fn from_lengths(lengths: &[usize], config: &TrainConfig) -> Option<BatchShape> {
        let longest = lengths.iter().max()?.min(&config.max_seq_len);
        Some(BatchShape {
            rows: config.micro_batch_size.min(lengths.len()).max(1),
            longest: (*longest).max(1),
        })
    }

    pub fn tokens(&self) -> usize {
        self.rows * self.longest
    }
}

/// One part of what training holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The decoder's frozen linear layers (and its norms), dense or packed 4-bit.
    BaseWeights,
    /// QLoRA's per-block scales (absmax, double-quantized) and code tables.
    QuantConstants,
    /// The token embedding table (always in the compute dtype).
    Embeddings,
    /// The output projection when it is not tied to the embeddings.
    LmHead,
    /// The adapters' A and B matrices (f32).
    LoraWeights,
    /// The adapters' gradients (f32).
    Gradients,
    /// AdamW's two moments per trainable weight (f32).
    OptimizerState,
    /// What the forward pass keeps for the backward pass.
    Activations,
    /// The vocabulary-sized scores for every token and their gradient.
    Logits,
    /// QLoRA: one layer's weight dequantized right before its product.
    DequantScratch,
    /// The process itself (CPU) or the CUDA context and allocator slack (GPU).
    Runtime,
}

impl Part {
    pub const ALL: [Part; 11] = [
        Part::BaseWeights,
        Part::QuantConstants,
        Part::Embeddings,
        Part::LmHead,
        Part::LoraWeights,
        Part::Gradients,
        Part::OptimizerState,
        Part::Activations,
        Part::Logits,
        Part::DequantScratch,
        Part::Runtime,
    ];

    /// A short name for tables and legends.
    pub fn label(self) -> &'static str {
        match self {
            Part::BaseWeights => "Base weights",
            Part::QuantConstants => "Quantization constants",
            Part::Embeddings => "Embeddings",
            Part::LmHead => "Output layer",
            Part::LoraWeights => "LoRA adapters",
            Part::Gradients => "Gradients",
            Part::OptimizerState => "Optimizer state",
            Part::Activations => "Activations",
            Part::Logits => "Logits",
            Part::DequantScratch => "Dequantization buffer",
            Part::Runtime => "Runtime",
        }
    }

    /// One sentence a non-specialist can follow, for tooltips.
    pub fn explanation(self) -> &'static str {
        match self {
            Part::BaseWeights => "The model's own weights in its layers. They stay frozen: LoRA keeps them at full precision, QLoRA packs them into 4 bits.",
            Part::QuantConstants => "QLoRA stores one scale per 64 weights so the 4-bit values can be turned back into numbers; the scales are themselves compressed.",
            Part::Embeddings => "The table that turns each token into a vector. It stays at full precision with both methods.",
            Part::LmHead => "The last layer, which scores every word of the vocabulary. This model has its own instead of reusing the embeddings.",
            Part::LoraWeights => "The small matrices that actually train.",
            Part::Gradients => "How each trainable number should change, computed at every step.",
            Part::OptimizerState => "AdamW remembers two running averages per trainable number to take smoother steps.",
            Part::Activations => "Intermediate results the forward pass keeps so the backward pass can compute gradients. They grow with batch size × sequence length; gradient checkpointing keeps far fewer and recomputes the rest.",
            Part::Logits => "A score for every vocabulary word at every trained position, and its gradient. Large vocabularies make this big; on the CPU Loft scores 256 positions at a time.",
            Part::DequantScratch => "QLoRA unpacks one layer's weights at a time right before using them; this buffer is reused from layer to layer.",
            Part::Runtime => "The program itself and the libraries it runs on (on a GPU: the CUDA context and the allocator's spare room).",
        }
    }
}

/// Whether a part lives in the training device's memory or, on a GPU, in the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    Device,
    Host,
}

/// One part's bytes, with a name that says its form ("Base weights (NF4)").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartEstimate {
    pub part: Part,
    /// The part's label with its form, e.g. "Base weights (bf16)".
    pub name: String,
    pub bytes: u64,
    pub place: Place,
}

/// How the estimate compares with the memory available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Fits with a tenth of the memory to spare.
    Fits,
    /// Fits, but with less than a tenth to spare: other programs or a long example may tip it over.
    Tight,
    DoesNotFit,
    /// The memory available is not known.
    Unknown,
}

/// A change that would make the run smaller, with the total it would need.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    pub change: Change,
    /// What to do, in words: "Turn on gradient checkpointing".
    pub text: String,
    /// The estimate's total (device memory) after the change.
    pub total: u64,
    /// Whether the change alone makes it fit.
    pub fits: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    GradientCheckpointing,
    Qlora,
    OptimizerOffload,
    MicroBatchSize { rows: usize },
    MaxSeqLen { tokens: usize },
    SmallerModel,
}

/// What a training run needs in memory, by part, against what is available.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryEstimate {
    pub device: DeviceKind,
    pub method: Method,
    pub batch: BatchShape,
    pub gradient_checkpointing: bool,
    /// Positions projected onto the vocabulary in the largest micro-batch (those with a trained next
    /// token).
    pub logit_rows: usize,
    /// Every part that takes memory in this configuration (parts of zero bytes are left out).
    pub parts: Vec<PartEstimate>,
    /// Bytes the training device's memory must hold (system memory on the CPU).
    pub total: u64,
    /// Bytes moved to host memory on a GPU (the offloaded optimizer state); 0 otherwise.
    pub host_total: u64,
    /// Memory the device can give the run, when known.
    pub available: Option<u64>,
    #[serde(skip)]
    arch: Arch,
    #[serde(skip)]
    config: TrainConfig,
    #[serde(skip)]
    trained_tokens: Option<usize>,
}

impl MemoryEstimate {
    /// The estimate for `arch` trained with `config` on `device`, at micro-batches of `batch`.
    /// Every position of the batch is assumed trained (the most logits it can need).
    pub fn new(
        arch: &Arch,
        config: &TrainConfig,
        device: DeviceKind,
        batch: BatchShape,
    ) -> MemoryEstimate {
        MemoryEstimate::with_trained(arch, config, device, batch, None)
    }

    /// From a dataset's measured shape: its largest micro-batch and the most trained tokens one
    /// micro-batch holds (only those are projected onto the vocabulary).
    pub fn for_data(
        arch: &Arch,
        config: &TrainConfig,
        device: DeviceKind,
        data: &super::sizing::DataShape,
    ) -> MemoryEstimate {
        MemoryEstimate::with_trained(arch, config, device, data.batch, Some(data.trained_tokens))
    }

    fn with_trained(
        arch: &Arch,
        config: &TrainConfig,
        device: DeviceKind,
        batch: BatchShape,
        trained_tokens: Option<usize>,
    ) -> MemoryEstimate {
        // The loss predicts each position's next token: the last position of a row has none.
        let targets = batch.rows * batch.longest.saturating_sub(1).max(1);
        let logit_rows = trained_tokens.map_or(targets, |t| t.min(targets));
        let parts = estimate_parts(arch, config, device, batch, logit_rows);
        let total = parts
            .iter()
            .filter(|p| p.place == Place::Device)
            .map(|p| p.bytes)
            .sum();
        let host_total = parts
            .iter()
            .filter(|p| p.place == Place::Host)
            .map(|p| p.bytes)
            .sum();
        MemoryEstimate {
            device,
            method: config.method,
            batch,
            gradient_checkpointing: config.gradient_checkpointing,
            logit_rows,
            parts,
            total,
            host_total,
            available: None,
            arch: arch.clone(),
            config: config.clone(),
            trained_tokens,
        }
    }

    /// The same estimate judged against `available` bytes.
    pub fn with_available(mut self, available: Option<u64>) -> MemoryEstimate {
        self.available = available;
        self
    }

    /// Bytes of one part (0 when it takes none here).
    pub fn bytes(&self, part: Part) -> u64 {
        self.parts
            .iter()
            .filter(|p| p.part == part)
            .map(|p| p.bytes)
            .sum()
    }

    /// The bytes that stay whatever the batch: weights, adapters, optimizer, runtime.
    pub fn fixed_bytes(&self) -> u64 {
        self.total - self.bytes(Part::Activations) - self.bytes(Part::Logits)
    }

    pub fn verdict(&self) -> Verdict {
        match self.available {
            None => Verdict::Unknown,
            Some(a) if self.total <= a - a / 10 => Verdict::Fits,
            Some(a) if self.total <= a => Verdict::Tight,
            Some(_) => Verdict::DoesNotFit,
        }
    }

    /// `Some(true)` when it fits (tightly or not), `None` when the memory available is unknown.
    pub fn fits(&self) -> Option<bool> {
        match self.verdict() {
            Verdict::Fits | Verdict::Tight => Some(true),
            Verdict::DoesNotFit => Some(false),
            Verdict::Unknown => None,
        }
    }

    /// The same run with `config` changed, judged against the same memory.
    pub fn with_config(&self, config: &TrainConfig, batch: BatchShape) -> MemoryEstimate {
        MemoryEstimate::with_trained(&self.arch, config, self.device, batch, self.trained_tokens)
            .with_available(self.available)
    }

    /// Changes that make the run smaller, each with its total and whether it alone fits, best first
    /// (those that fit, and among them the ones that change the run least). Empty when nothing is
    /// available to compare with or when it already fits.
    pub fn advice(&self) -> Vec<Advice> {
        if self.fits() != Some(false) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut try_change = |change: Change, text: String, config: TrainConfig, batch| {
            let e = self.with_config(&config, batch);
            out.push(Advice {
                change,
                text,
                total: e.total,
                fits: e.fits() == Some(true),
            });
        };
        let c = &self.config;
        if !c.gradient_checkpointing {
            let mut config = c.clone();
            config.gradient_checkpointing = true;
            try_change(
                Change::GradientCheckpointing,
                "Turn on gradient checkpointing".into(),
                config,
                self.batch,
            );
        }
        if c.method == Method::Lora {
            let mut config = c.clone();
            config.method = Method::Qlora;
            config.quant = QuantSource::Nf4;
            try_change(
                Change::Qlora,
                "Use QLoRA (4-bit base weights)".into(),
                config,
                self.batch,
            );
        }
        if self.device == DeviceKind::Cuda && !c.optimizer_offload {
            let mut config = c.clone();
            config.optimizer_offload = true;
            try_change(
                Change::OptimizerOffload,
                "Keep the optimizer state in host memory".into(),
                config,
                self.batch,
            );
        }
        if self.batch.rows > 1 {
            let rows = (self.batch.rows / 2).max(1);
            let mut config = c.clone();
            config.micro_batch_size = rows;
            try_change(
                Change::MicroBatchSize { rows },
                format!("Lower the micro-batch size to {rows} (raise gradient accumulation to keep the effective batch)"),
                config,
                BatchShape { rows, ..self.batch },
            );
        }
        if self.batch.longest > 64 {
            let tokens = self.batch.longest / 2;
            let mut config = c.clone();
            config.max_seq_len = tokens;
            try_change(
                Change::MaxSeqLen { tokens },
                format!("Cut examples to {tokens} tokens (max_seq_len)"),
                config,
                BatchShape {
                    longest: tokens,
                    ..self.batch
                },
            );
        }
        out.sort_by_key(|a| !a.fits);
        let fixed_fits = self.available.is_some_and(|a| self.fixed_bytes() <= a);
        if !out.iter().any(|a| a.fits) && !fixed_fits {
            out.push(Advice {
                change: Change::SmallerModel,
                text: "Choose a smaller model: the weights alone do not fit".into(),
                total: self.fixed_bytes(),
                fits: false,
            });
        }
        out
    }

    /// Why the run will not fit and what to change, in two sentences for an error message; `None`
    /// when it fits or the memory available is unknown.
    pub fn problem(&self) -> Option<(String, String)> {
        if self.fits() != Some(false) {
            return None;
        }
        let available = self.available?;
        let biggest: Vec<String> = {
            let mut parts: Vec<&PartEstimate> = self
                .parts
                .iter()
                .filter(|p| p.place == Place::Device)
                .collect();
            parts.sort_by_key(|p| std::cmp::Reverse(p.bytes));
            parts
                .iter()
                .take(3)
                .map(|p| format!("{} {}", units::bytes(p.bytes), p.name.to_lowercase()))
                .collect()
        };
        let reason = format!(
            "training needs about {} of {} for {} × {} tokens ({}), and {} is available",
            units::bytes(self.total),
            self.device.memory_name(),
            self.batch.rows,
            self.batch.longest,
            biggest.join(", "),
            units::bytes(available),
        );
        let advice = self.advice();
        let mut text = String::new();
        for a in advice.iter().filter(|a| a.fits).take(3) {
            if !text.is_empty() {
                text.push_str("; or ");
            }
            text.push_str(&format!("{} (about {})", a.text, units::bytes(a.total)));
        }
        if text.is_empty() {
            let all: Vec<&str> = advice.iter().map(|a| a.text.as_str()).collect();
            text = format!("No single change is enough; combine: {}", all.join("; "));
        }
        text.push_str(". Closing other programs frees memory too.");
        Some((reason, text))
    }
}

/// The smallest sensible first run of `method`, for "can this machine train it" before any setting
/// is chosen: one row of 512 tokens with gradient checkpointing, the trainer's other defaults.
pub fn smallest_run(arch: &Arch, method: Method, device: DeviceKind) -> MemoryEstimate {
    let config = TrainConfig {
        method,
        micro_batch_size: 1,
        max_seq_len: 512,
        gradient_checkpointing: true,
        ..TrainConfig::default()
    };
    MemoryEstimate::new(arch, &config, device, BatchShape::assumed(&config))
}

/// Why a step will not fit, and what to change (see [`MemoryEstimate::problem`]).
pub fn does_not_fit(estimate: &MemoryEstimate) -> Option<(String, String)> {
    estimate.problem()
}

/// Memory the system can give this process now without swapping, in bytes (Linux, macOS, Windows);
/// None where the system does not say, and then the check is skipped.
pub fn available_memory() -> Option<u64> {
    crate::engine::sysmem::available()
}

/// The memory a run on `device` can use: what the system has free on the CPU; on CUDA, `gpu_memory`
/// when the user gave it, else the first GPU's free memory as nvidia-smi reports it.
pub fn available_for(device: DeviceKind, gpu_memory: Option<u64>) -> Option<u64> {
    match device {
        DeviceKind::Cpu => available_memory(),
        DeviceKind::Cuda => gpu_memory.or_else(gpu_free_memory),
    }
}

/// The first NVIDIA GPU's free memory in bytes, asked of nvidia-smi; None without a driver.
pub fn gpu_free_memory() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.free", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mib: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some(mib << 20)
}

// ---------------------------------------------------------------------------------------------
// The parts.

/// The decoder's linear layers as `(in, out)` per layer.
fn linear_shapes(arch: &Arch) -> Vec<(usize, usize)> {
    crate::engine::model::lora::ALL_LINEAR_TARGETS
        .iter()
        .filter_map(|m| arch.projection_shape(m))
        .collect()
}

/// Norm weights and biases of the decoder (dense in every method).
fn small_dense_params(arch: &Arch) -> u64 {
    let h = arch.hidden_size as u64;
    let q = (arch.num_heads * arch.head_dim) as u64;
    let kv = (arch.num_kv_heads * arch.head_dim) as u64;
    let inter = arch.intermediate_size as u64;
    let mut per_layer = if arch.sandwich_norms { 4 * h } else { 2 * h };
    if arch.qkv_bias {
        per_layer += q + 2 * kv;
    }
    if arch.o_bias {
        per_layer += h;
    }
    if arch.qk_norm {
        per_layer += 2 * arch.head_dim as u64;
    }
    if arch.mlp_bias {
        per_layer += 2 * inter + h;
    }
    per_layer * arch.num_layers as u64 + h
}

/// Bytes of one NF4 matrix of `n` weights as Loft holds it (see `Nf4Matrix::bytes`): the packed
/// codes, then with double quantization one u8 code per block of 64, one f32 scale per 256 blocks,
/// the 256-entry map and the mean; plus the 16-level code table.
fn nf4_bytes(n: u64, double_quant: bool) -> (u64, u64) {
    let packed = n.div_ceil(2);
    let blocks = n.div_ceil(64);
    let constants = match double_quant {
        true => blocks + 4 * (blocks.div_ceil(256) + 256) + 4,
        false => 4 * blocks,
    } + 4 * 16;
    (packed, constants)
}

/// Bits per weight of a GGUF quantization type (blocks of 32 or 256 with their scales).
fn gguf_bits_per_weight(name: &str) -> Option<f64> {
    Some(match name.to_ascii_uppercase().as_str() {
        "F32" => 32.0,
        "F16" | "BF16" => 16.0,
        "Q8_0" => 8.5,
        "Q4_0" => 4.5,
        "Q4_1" => 5.0,
        "Q5_0" => 5.5,
        "Q5_1" => 6.0,
        "Q2_K" => 2.625,
        "Q3_K" => 3.4375,
        "Q4_K" => 4.5,
        "Q5_K" => 5.5,
        "Q6_K" => 6.5625,
        "Q8_K" => 9.125,
        _ => return None,
    })
}

fn estimate_parts(
    arch: &Arch,
    config: &TrainConfig,
    device: DeviceKind,
    batch: BatchShape,
    logit_rows: usize,
) -> Vec<PartEstimate> {
    let dtype = device.compute_bytes();
    let dtype_name = match device {
        DeviceKind::Cpu => "f32",
        DeviceKind::Cuda => "bf16",
    };
    let layers = arch.num_layers as u64;
    let shapes = linear_shapes(arch);
    let linear_params: u64 = shapes.iter().map(|(i, o)| (i * o) as u64).sum::<u64>() * layers;
    let small = small_dense_params(arch) * dtype;
    let mut parts = Vec::new();
    let mut push = |part: Part, name: String, bytes: u64, place: Place| {
        if bytes > 0 {
            parts.push(PartEstimate {
                part,
                name,
                bytes,
                place,
            });
        }
    };
    let label = |p: Part, form: &str| format!("{} ({form})", p.label());

    // Base weights.
    match (config.method, config.quant) {
        (Method::Lora, _) => push(
            Part::BaseWeights,
            label(Part::BaseWeights, dtype_name),
            linear_params * dtype + small,
            Place::Device,
        ),
        (Method::Qlora, QuantSource::Nf4) => {
            let (mut packed, mut constants) = (0, 0);
            for (i, o) in &shapes {
                let (p, c) = nf4_bytes((i * o) as u64, true);
                packed += p * layers;
                constants += c * layers;
            }
            push(
                Part::BaseWeights,
                label(Part::BaseWeights, "NF4"),
                packed + small,
                Place::Device,
            );
            push(
                Part::QuantConstants,
                label(Part::QuantConstants, "double-quantized absmax"),
                constants,
                Place::Device,
            );
        }
        (Method::Qlora, QuantSource::Source) => {
            let stored = arch.stored_dtype.clone().unwrap_or_default();
            let bits = gguf_bits_per_weight(&stored).unwrap_or(4.5);
            push(
                Part::BaseWeights,
                label(Part::BaseWeights, &format!("{stored} blocks")),
                (linear_params as f64 * bits / 8.0).ceil() as u64 + small,
                Place::Device,
            );
        }
    }

    // Embeddings and lm_head stay dense in the compute dtype.
    let embed = (arch.vocab_size * arch.hidden_size) as u64 * dtype;
    let tied = if arch.tie_word_embeddings {
        format!("{dtype_name}, shared with the output layer")
    } else {
        dtype_name.to_string()
    };
    push(
        Part::Embeddings,
        label(Part::Embeddings, &tied),
        embed,
        Place::Device,
    );
    if !arch.tie_word_embeddings {
        push(
            Part::LmHead,
            label(Part::LmHead, &format!("lm_head, {dtype_name}")),
            embed,
            Place::Device,
        );
    }

    // Adapters, gradients and AdamW's moments, all f32.
    let trainable = arch.lora_parameter_count(&config.lora.targets, config.lora.r);
    push(
        Part::LoraWeights,
        label(Part::LoraWeights, "f32"),
        4 * trainable,
        Place::Device,
    );
    // With accumulation, the sum of earlier micro-batches' gradients lives beside this one's.
    let gradient_copies = if config.grad_accum > 1 { 2 } else { 1 };
    push(
        Part::Gradients,
        match gradient_copies {
            1 => label(Part::Gradients, "f32"),
            _ => label(Part::Gradients, "f32, accumulated and current"),
        },
        4 * trainable * gradient_copies,
        Place::Device,
    );
    let offloaded = device == DeviceKind::Cuda && config.optimizer_offload;
    push(
        Part::OptimizerState,
        match offloaded {
            true => label(Part::OptimizerState, "AdamW f32, in host memory"),
            false => label(Part::OptimizerState, "AdamW f32"),
        },
        8 * trainable,
        if offloaded {
            Place::Host
        } else {
            Place::Device
        },
    );

    // Activations kept for the backward pass.
    let (t, rows) = (batch.longest as u64, batch.rows as u64);
    let per_layer = match device {
        DeviceKind::Cpu => cpu_layer_bytes(arch, config, t),
        DeviceKind::Cuda => cuda_layer_bytes(arch, config, t),
    };
    let (logits_at_peak, logits_freed) = logits(arch, device, logit_rows as u64);
    let kept = match config.gradient_checkpointing {
        // Each layer keeps only its input (the residual stream). The backward pass rebuilds one
        // layer at a time in full, after the loss has freed its logits, so the rebuilt layer adds
        // to the peak only where it outgrows those.
        true => {
            rows * t * (arch.hidden_size as u64 * dtype * layers)
                + (rows * per_layer).saturating_sub(logits_freed)
        }
        false => rows * per_layer * layers,
    };
    push(
        Part::Activations,
        match config.gradient_checkpointing {
            true => label(Part::Activations, "gradient checkpointing"),
            false => Part::Activations.label().to_string(),
        },
        kept,
        Place::Device,
    );

    // The logits of every trained position, projected onto the whole vocabulary.
    push(
        Part::Logits,
        match device {
            DeviceKind::Cpu => label(Part::Logits, "f32, 256 positions at a time"),
            DeviceKind::Cuda => label(Part::Logits, "bf16 and f32, with gradient"),
        },
        logits_at_peak,
        Place::Device,
    );

    if config.method == Method::Qlora {
        let largest = shapes
            .iter()
            .map(|(i, o)| (i * o) as u64)
            .max()
            .unwrap_or(0);
        push(
            Part::DequantScratch,
            label(Part::DequantScratch, &format!("one layer, {dtype_name}")),
            largest * dtype,
            Place::Device,
        );
    }

    let runtime = match device {
        DeviceKind::Cpu => {
            CPU_PROCESS_BASELINE + TOKENIZER_BYTES_PER_TOKEN * arch.vocab_size as u64
        }
        DeviceKind::Cuda => {
            let tensors: u64 = parts
                .iter()
                .filter(|p| p.place == Place::Device)
                .map(|p| p.bytes)
                .sum();
            CUDA_CONTEXT + tensors / 20
        }
    };
    parts.push(PartEstimate {
        part: Part::Runtime,
        name: match device {
            DeviceKind::Cpu => label(Part::Runtime, "the process and its libraries"),
            DeviceKind::Cuda => label(Part::Runtime, "CUDA context and allocator"),
        },
        bytes: runtime,
        place: Place::Device,
    });
    parts
}

/// Resident memory of a Loft process before it loads a model: code, libraries, thread pools
/// (9 MB measured by `loft bench-train --json` as `baseline_rss`).
const CPU_PROCESS_BASELINE: u64 = 10 << 20;

/// What the loaded model holds beside its tensors, mostly the tokenizer's tables (vocabulary,
/// merges, added tokens) and what the loader keeps of the file's metadata: SmolLM2's 49,152-token
/// model measured 30 MB more resident memory after loading than its weights and the baseline.
const TOKENIZER_BYTES_PER_TOKEN: u64 = 640;

/// The loss's memory at its peak for `rows` trained positions, and what of it is freed before the
/// backward pass rebuilds checkpointed layers.
/// CPU: the output layer and the loss run as one op, 256 rows at a time: one slice of f32 logits, and
/// the loss's gradient for the hidden states (kept). The slice is freed when the forward pass ends,
/// but a rebuilt layer's backward pass allocates its gradients beside the layer's activations, more
/// than the slice gives back, so none of it is counted as freed (measured: the estimate within 3% of
/// the checkpointed peaks this way, 6–11% under them otherwise).
/// CUDA, per position × vocabulary entry: the bf16 logits and their f32 copy (both kept), then in the
/// composed loss's backward the f32 softmax and gradient, and the accumulator and sum (all allocated
/// on a GPU): 2 + 4 + 4 × 4 bytes, of which all but the kept 6 are freed.
fn logits(arch: &Arch, device: DeviceKind, rows: u64) -> (u64, u64) {
    let vocab = arch.vocab_size as u64;
    match device {
        DeviceKind::Cpu => {
            let slice = rows.min(256) * vocab * 4;
            (slice + rows * arch.hidden_size as u64 * 4, 0)
        }
        DeviceKind::Cuda => (rows * vocab * 22, rows * vocab * 16),
    }
}

/// Bytes one sequence position keeps for the backward pass in one decoder layer, on the CPU's
/// training ops (all f32): the layer input and the residual sum after attention, the two norms'
/// outputs, q, k and v (the attention op's inputs; it recomputes its probabilities instead of keeping
/// them), the attention output, the attention and MLP projections' outputs (kept by the residual
/// adds), gate, up and their product, each adapted projection's `rows × r` intermediate, and with
/// dropout its mask, one bit per input value. Times the sequence length: the result is per sequence.
fn cpu_layer_bytes(arch: &Arch, config: &TrainConfig, t: u64) -> u64 {
    let (h, inter) = (arch.hidden_size as u64, arch.intermediate_size as u64);
    let q = (arch.num_heads * arch.head_dim) as u64;
    let kv = (arch.num_kv_heads * arch.head_dim) as u64;
    let adapted = adapted_count(arch, config);
    let per_position = 6 * h + 2 * q + 2 * kv + 3 * inter + adapted * config.lora.r as u64;
    let mask_bits: u64 = if config.lora.dropout > 0.0 {
        (config.lora.targets.iter())
            .filter_map(|t| arch.projection_shape(t))
            .map(|(inp, _)| inp as u64)
            .sum()
    } else {
        0
    };
    (per_position * 4 + mask_bits / 8) * t
}

/// The same for CUDA, where candle's composed ops keep more (bf16 activations, f32 adapters): each
/// adapted projection keeps its input in f32, the dropout mask and the dropped input (when dropout
/// is on), the f32 update and its bf16 copy, the base product and the sum; attention keeps
/// transposed and rotated copies of q, k, v, the grouped k and v, and per query the scores (bf16
/// and f32) and the probabilities (f32 and bf16) over the `t` positions; the MLP keeps the
/// activation and the product. Per sequence of `t` positions.
fn cuda_layer_bytes(arch: &Arch, config: &TrainConfig, t: u64) -> u64 {
    let (h, inter) = (arch.hidden_size as u64, arch.intermediate_size as u64);
    let (heads, d) = (arch.num_heads as u64, arch.head_dim as u64);
    let q = heads * d;
    let kv = arch.num_kv_heads as u64 * d;
    let r = config.lora.r as u64;
    let dropout = config.lora.dropout > 0.0;
    let projections = [
        ("q_proj", h, q),
        ("k_proj", h, kv),
        ("v_proj", h, kv),
        ("o_proj", q, h),
        ("gate_proj", h, inter),
        ("up_proj", h, inter),
        ("down_proj", inter, h),
    ];
    let mut per_position = 0;
    for (name, inp, out) in projections {
        // The output, in bf16 (the next op's input).
        per_position += 2 * out;
        if config.lora.targets.iter().any(|t| t == name) {
            let input = if dropout { 12 * inp } else { 4 * inp };
            per_position += input + 8 * r + 4 * out + 2 * out + 2 * out;
        }
    }
    let grouped = if heads == arch.num_kv_heads as u64 {
        0
    } else {
        2 * q
    };
    // x, the residual sum, the two norms' outputs.
    per_position += 2 * 4 * h;
    // Attention: transposed q, k, v; rotated q, k; scaled q; grouped k, v; output and its transpose.
    per_position += 2 * (q + 2 * kv + q + kv + q + grouped + 2 * q);
    per_position += heads * t * (2 + 4 + 4 + 2);
    // MLP: the activation and the gated product.
    per_position += 2 * 2 * inter;
    per_position * t
}

/// How many of a layer's projections carry an adapter.
fn adapted_count(arch: &Arch, config: &TrainConfig) -> u64 {
    config
        .lora
        .targets
        .iter()
        .filter(|t| arch.projection_shape(t).is_some())
        .count() as u64
}

/// What a CUDA context takes on the GPU before the first tensor (kernels, cuBLAS workspace).
const CUDA_CONTEXT: u64 = 500 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> Arch {
        crate::engine::arch::smollm2_for_tests()
    }

    fn config(method: Method, checkpointing: bool) -> TrainConfig {
        TrainConfig {
            method,
            gradient_checkpointing: checkpointing,
            ..TrainConfig::default()
        }
    }

    const BATCH: BatchShape = BatchShape {
        rows: 4,
        longest: 256,
    };

    #[test]
    fn checkpointing_cuts_the_activations_and_qlora_the_weights() {
        let arch = smollm2();
        let plain =
            MemoryEstimate::new(&arch, &config(Method::Lora, false), DeviceKind::Cpu, BATCH);
        let ckpt = MemoryEstimate::new(&arch, &config(Method::Lora, true), DeviceKind::Cpu, BATCH);
        assert!(ckpt.bytes(Part::Activations) * 5 < plain.bytes(Part::Activations));
        let q = MemoryEstimate::new(&arch, &config(Method::Qlora, false), DeviceKind::Cpu, BATCH);
        assert!(q.bytes(Part::BaseWeights) * 6 < plain.bytes(Part::BaseWeights));
        assert!(q.bytes(Part::QuantConstants) > 0 && q.bytes(Part::DequantScratch) > 0);
        assert_eq!(plain.bytes(Part::QuantConstants), 0);
    }

    /// The CPU estimate for SmolLM2-135M at 4 × 256 tokens against the peaks `loft bench-estimate`
    /// measured for it (1.91 GB LoRA, 0.83 GB with checkpointing, 1.55 GB QLoRA, 0.46 GB with
    /// checkpointing; two steps of one micro-batch): each within 5%.
    #[test]
    fn smollm2_estimate_is_close_to_the_measured_peaks() {
        let arch = smollm2();
        for (method, checkpointing, measured) in [
            (Method::Lora, false, 1.912e9),
            (Method::Lora, true, 0.827e9),
            (Method::Qlora, false, 1.546e9),
            (Method::Qlora, true, 0.462e9),
        ] {
            let c = TrainConfig {
                grad_accum: 1,
                ..config(method, checkpointing)
            };
            let e = MemoryEstimate::new(&arch, &c, DeviceKind::Cpu, BATCH);
            let error = (e.total as f64 - measured) / measured;
            assert!(
                error.abs() < 0.05,
                "{method:?} checkpointing {checkpointing}: {} vs {measured}",
                e.total
            );
        }
    }

    /// 4.127 bits per weight for NF4 with double quantization, as bitsandbytes stores it.
    #[test]
    fn nf4_costs_about_4_127_bits_per_weight() {
        let n = 4096 * 4096;
        let (packed, constants) = nf4_bytes(n, true);
        let bits = (packed + constants) as f64 * 8.0 / n as f64;
        assert!((bits - 4.127).abs() < 0.002, "{bits}");
    }

    #[test]
    fn a_run_too_big_for_the_memory_is_refused_with_advice() {
        let arch = smollm2();
        let c = TrainConfig {
            micro_batch_size: 16,
            max_seq_len: 2048,
            ..TrainConfig::default()
        };
        let e = MemoryEstimate::new(&arch, &c, DeviceKind::Cpu, BatchShape::assumed(&c))
            .with_available(Some(4_000_000_000));
        assert_eq!(e.verdict(), Verdict::DoesNotFit);
        let (reason, advice) = e.problem().unwrap();
        assert!(reason.contains("16 × 2048 tokens"), "{reason}");
        assert!(reason.contains("3.73 GiB is available"), "{reason}");
        assert!(advice.contains("gradient checkpointing"), "{advice}");
        assert!(e
            .clone()
            .with_available(Some(64_000_000_000))
            .problem()
            .is_none());
        assert_eq!(e.with_available(None).verdict(), Verdict::Unknown);
    }
}
