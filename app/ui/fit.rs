//! What fits: LoRA and QLoRA estimated side by side for the batch the data will really make, each
//! judged against the memory available, which one to choose, and — when neither fits — what would.
//! Plain data without pixels, so the Method and Model pages say the same thing and unit tests can
//! check the advice.

use crate::engine::arch::Arch;
use crate::engine::train::memory::StepMemory;
use crate::engine::train::{Method, TrainConfig};

/// What the checked training file says about lengths: its usable rows and its longest example in
/// tokens (as the model's tokenizer and chat template make them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataLengths {
    pub rows: usize,
    pub longest: usize,
}

/// The largest micro-batch a run will feed the model: `rows` examples padded to `longest` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    pub rows: usize,
    pub longest: usize,
    /// True when taken from the checked data, false when assumed from the settings alone
    /// (every example `max_seq_len` long).
    pub from_data: bool,
}

impl BatchShape {
    /// The data's longest batch: no more rows than the file has, no longer than `max_seq_len` (longer
    /// examples are cut or left out). Without checked data, every row is assumed `max_seq_len` long.
    pub fn of(config: &TrainConfig, data: Option<DataLengths>) -> BatchShape {
        match data {
            Some(d) if d.rows > 0 && d.longest > 0 => BatchShape {
                rows: config.micro_batch_size.min(d.rows),
                longest: config.max_seq_len.min(d.longest),
                from_data: true,
            },
            _ => BatchShape {
                rows: config.micro_batch_size,
                longest: config.max_seq_len,
                from_data: false,
            },
        }
    }

    pub fn tokens(&self) -> usize {
        self.rows * self.longest
    }
}

/// One part of the memory a run holds at its peak, named in plain words.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: &'static str,
    pub bytes: u64,
}

/// The peak memory of a run with one method, by part.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub method: Method,
    pub parts: Vec<Part>,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }
}

/// How a run's estimate compares with the memory available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fits with a tenth to spare: room for the estimate's error and the rest of the system.
    Comfortable,
    /// Fits, but within the estimate's error of the limit.
    Tight,
    TooBig,
}

impl Verdict {
    pub fn of(total: u64, available: u64) -> Verdict {
        if total.saturating_add(total / 10) <= available {
            Verdict::Comfortable
        } else if total <= available {
            Verdict::Tight
        } else {
            Verdict::TooBig
        }
    }

    pub fn fits(self) -> bool {
        self != Verdict::TooBig
    }

    /// The verdict in words, so that it never rests on colour alone.
    pub fn words(self) -> &'static str {
        match self {
            Verdict::Comfortable => "fits comfortably",
            Verdict::Tight => "fits, but only just",
            Verdict::TooBig => "does not fit",
        }
    }
}

/// The peak memory of a run of `config` with `method` at the batch `shape`, on the CPU (f32 compute).
///
/// The base's linear layers are f32 for LoRA and NF4 with double quantization for QLoRA (4 bits a
/// weight, one 8-bit scale per 64 weights, one f32 per 256 scales: about 4.13 bits); embeddings,
/// `lm_head` and norms stay f32 either way; the step's activations, logits and adapter state are
/// the trainer's own figures ([`StepMemory`]).
pub fn estimate(arch: &Arch, config: &TrainConfig, method: Method, shape: BatchShape) -> Estimate {
    let trainable = arch.lora_parameter_count(&config.lora.targets, config.lora.r);
    let step = StepMemory::estimate(
        arch,
        shape.tokens(),
        trainable,
        config.gradient_checkpointing,
    );
    let linear = linear_weights(arch);
    let rest = arch.parameter_count().saturating_sub(linear);
    let f32_bytes = 4u64;
    let base = match method {
        Method::Lora => linear * f32_bytes,
        Method::Qlora => {
            let blocks = linear.div_ceil(64);
            linear.div_ceil(2) + blocks + blocks.div_ceil(256) * f32_bytes
        }
    };
    Estimate {
        method,
        parts: vec![
            Part {
                name: "model layers",
                bytes: base,
            },
            Part {
                name: "embeddings and norms",
                bytes: rest * f32_bytes,
            },
            Part {
                name: "adapters and optimizer",
                bytes: step.adapters,
            },
            Part {
                name: "activations",
                bytes: step.activations,
            },
            Part {
                name: "logits",
                bytes: step.logits,
            },
        ],
    }
}

/// Weights in the decoder's projections (those QLoRA quantizes): in × out for each, in every layer.
fn linear_weights(arch: &Arch) -> u64 {
    crate::engine::model::lora::ALL_LINEAR_TARGETS
        .iter()
        .filter_map(|t| arch.projection_shape(t))
        .map(|(i, o)| (i * o) as u64)
        .sum::<u64>()
        * arch.num_layers as u64
}

/// One change to the settings that makes a run smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    GradientCheckpointing,
    BatchSize(usize),
    MaxSeqLen(usize),
}

impl Change {
    pub fn apply(self, config: &mut TrainConfig) {
        match self {
            Change::GradientCheckpointing => config.gradient_checkpointing = true,
            Change::BatchSize(b) => config.micro_batch_size = b,
            Change::MaxSeqLen(n) => config.max_seq_len = n,
        }
    }

    pub fn words(self) -> String {
        match self {
            Change::GradientCheckpointing => "turn on gradient checkpointing".into(),
            Change::BatchSize(b) => format!("lower the batch size to {b}"),
            Change::MaxSeqLen(n) => format!("lower the max sequence length to {n}"),
        }
    }
}

/// Settings that would make QLoRA fit, and what it would then need.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub changes: Vec<Change>,
    pub total: u64,
    pub verdict: Verdict,
}

impl Suggestion {
    pub fn words(&self) -> String {
        let changes: Vec<String> = self.changes.iter().map(|c| c.words()).collect();
        let mut text = changes.join(" and ");
        if let Some(first) = text.get(..1) {
            text = first.to_uppercase() + &text[1..];
        }
        text
    }
}

/// Which method to train with, and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Recommendation {
    /// Both fit comfortably (or LoRA does): the exact, faster one.
    Lora,
    /// LoRA does not fit comfortably but QLoRA fits.
    Qlora,
    /// Neither fits: what would (QLoRA with smaller settings), or nothing short of a smaller model.
    Neither(Vec<Suggestion>),
}

/// LoRA and QLoRA for the same settings and data, against the memory available.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub lora: Estimate,
    pub qlora: Estimate,
    pub shape: BatchShape,
    /// Bytes the run may use; None when unknown (then there is no verdict).
    pub available: Option<u64>,
    config: TrainConfig,
    data: Option<DataLengths>,
    arch: Arch,
}

impl Comparison {
    pub fn new(
        arch: &Arch,
        config: &TrainConfig,
        data: Option<DataLengths>,
        available: Option<u64>,
    ) -> Comparison {
        let shape = BatchShape::of(config, data);
        Comparison {
            lora: estimate(arch, config, Method::Lora, shape),
            qlora: estimate(arch, config, Method::Qlora, shape),
            shape,
            available,
            config: config.clone(),
            data,
            arch: arch.clone(),
        }
    }

    pub fn of(&self, method: Method) -> &Estimate {
        match method {
            Method::Lora => &self.lora,
            Method::Qlora => &self.qlora,
        }
    }

    pub fn verdict(&self, method: Method) -> Option<Verdict> {
        self.available
            .map(|a| Verdict::of(self.of(method).total(), a))
    }

    /// Prefer LoRA when it fits comfortably (exact, and faster); QLoRA when it fits and LoRA does
    /// not fit comfortably; else the smallest changes that make QLoRA fit.
    pub fn recommendation(&self) -> Option<Recommendation> {
        let lora = self.verdict(Method::Lora)?;
        let qlora = self.verdict(Method::Qlora)?;
        Some(if lora == Verdict::Comfortable {
            Recommendation::Lora
        } else if qlora.fits() {
            Recommendation::Qlora
        } else if lora.fits() {
            Recommendation::Lora
        } else {
            Recommendation::Neither(self.suggestions())
        })
    }

    /// Single changes first (checkpointing; the largest batch size, then the largest max sequence
    /// length, that fits), then all of them together; each with QLoRA's estimate under it.
    fn suggestions(&self) -> Vec<Suggestion> {
        let Some(available) = self.available else {
            return Vec::new();
        };
        let try_changes = |changes: Vec<Change>| -> Suggestion {
            let mut config = self.config.clone();
            for c in &changes {
                c.apply(&mut config);
            }
            let shape = BatchShape::of(&config, self.data);
            let total = estimate(&self.arch, &config, Method::Qlora, shape).total();
            Suggestion {
                changes,
                total,
                verdict: Verdict::of(total, available),
            }
        };
        let fitting = |s: &Suggestion| s.verdict.fits();
        let mut found = Vec::new();
        if !self.config.gradient_checkpointing {
            let s = try_changes(vec![Change::GradientCheckpointing]);
            if fitting(&s) {
                found.push(s);
            }
        }
        let halvings = |from: usize, floor: usize| {
            std::iter::successors(Some(from / 2), move |n| Some(n / 2))
                .take_while(move |n| *n >= floor)
        };
        if let Some(s) = halvings(self.shape.rows, 1)
            .map(|b| try_changes(vec![Change::BatchSize(b)]))
            .find(fitting)
        {
            found.push(s);
        }
        if let Some(s) = halvings(self.shape.longest, 16)
            .map(|n| try_changes(vec![Change::MaxSeqLen(n)]))
            .find(fitting)
        {
            found.push(s);
        }
        if found.is_empty() {
            let mut all = vec![Change::BatchSize(1)];
            if !self.config.gradient_checkpointing {
                all.insert(0, Change::GradientCheckpointing);
            }
            let smallest = try_changes(all.clone());
            if fitting(&smallest) {
                found.push(smallest);
            } else if let Some(s) = halvings(self.shape.longest, 16)
                .map(|n| {
                    let mut changes = all.clone();
                    changes.push(Change::MaxSeqLen(n));
                    try_changes(changes)
                })
                .find(fitting)
            {
                found.push(s);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> Arch {
        let config = serde_json::json!({
            "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "tie_word_embeddings": true
        });
        Arch::from_config(&config, std::path::Path::new("config.json")).unwrap()
    }

    const GB: u64 = 1_000_000_000;

    #[test]
    fn the_batch_is_the_data_s_longest_not_the_settings_ceiling() {
        let config = TrainConfig::default();
        let data = DataLengths {
            rows: 105,
            longest: 216,
        };
        let shape = BatchShape::of(&config, Some(data));
        assert_eq!((shape.rows, shape.longest, shape.from_data), (4, 216, true));
        let few = BatchShape::of(
            &config,
            Some(DataLengths {
                rows: 2,
                longest: 5000,
            }),
        );
        assert_eq!((few.rows, few.longest), (2, 1024));
        let assumed = BatchShape::of(&config, None);
        assert_eq!((assumed.tokens(), assumed.from_data), (4 * 1024, false));
    }

    #[test]
    fn qlora_holds_the_layers_in_about_a_seventh_of_the_memory() {
        let arch = smollm2();
        let config = TrainConfig::default();
        let shape = BatchShape::of(&config, None);
        let lora = estimate(&arch, &config, Method::Lora, shape);
        let qlora = estimate(&arch, &config, Method::Qlora, shape);
        let layers = |e: &Estimate| e.parts[0].bytes as f64;
        let ratio = layers(&lora) / layers(&qlora);
        assert!((7.0..8.0).contains(&ratio), "{ratio}");
        assert_eq!(lora.parts[1..], qlora.parts[1..]);
        assert!(qlora.total() < lora.total());
    }

    #[test]
    fn lora_is_recommended_when_it_fits_comfortably_and_qlora_when_only_it_fits() {
        let arch = smollm2();
        let config = TrainConfig::default();
        let data = Some(DataLengths {
            rows: 100,
            longest: 256,
        });
        let c = Comparison::new(&arch, &config, data, Some(64 * GB));
        assert_eq!(c.recommendation(), Some(Recommendation::Lora));
        let between = (c.lora.total() + c.qlora.total()) / 2;
        let c = Comparison::new(&arch, &config, data, Some(between));
        assert_eq!(c.verdict(Method::Lora), Some(Verdict::TooBig));
        assert!(c.verdict(Method::Qlora).is_some_and(Verdict::fits));
        assert_eq!(c.recommendation(), Some(Recommendation::Qlora));
        let unknown = Comparison::new(&arch, &config, data, None);
        assert_eq!(unknown.recommendation(), None);
    }

    #[test]
    fn when_neither_fits_the_advice_says_what_would_with_its_estimate() {
        let arch = smollm2();
        let config = TrainConfig {
            micro_batch_size: 16,
            max_seq_len: 2048,
            ..TrainConfig::default()
        };
        let c = Comparison::new(&arch, &config, None, Some(GB));
        let Some(Recommendation::Neither(suggestions)) = c.recommendation() else {
            panic!("{:?}", c.recommendation());
        };
        assert!(!suggestions.is_empty());
        for s in &suggestions {
            assert!(s.verdict.fits() && s.total <= GB, "{s:?}");
            let mut changed = config.clone();
            for change in &s.changes {
                change.apply(&mut changed);
            }
            let again = estimate(
                &arch,
                &changed,
                Method::Qlora,
                BatchShape::of(&changed, None),
            );
            assert_eq!(again.total(), s.total, "{s:?}");
        }
        let words = suggestions[0].words();
        assert!(words.starts_with(char::is_uppercase), "{words}");
        // Nothing short of a smaller model fits in 100 MB.
        let c = Comparison::new(&arch, &config, None, Some(GB / 10));
        assert_eq!(
            c.recommendation(),
            Some(Recommendation::Neither(Vec::new()))
        );
    }
}
