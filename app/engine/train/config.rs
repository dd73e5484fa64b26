//! Everything a training run is configured by, with a documented default for every field. It is
//! saved as the run's `run.toml`, so a run can be repeated or resumed from that file alone.

use serde::{Deserialize, Serialize};

use crate::engine::model::LoraConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The learning rate stays at `lr` after warm-up.
    Constant,
    /// Falls linearly from `lr` to 0 over the run.
    Linear,
    /// Falls along a half cosine from `lr` to 0 (the usual choice for LoRA).
    Cosine,
}

/// How the frozen base is held while the adapter trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The base in the compute dtype (f32 on the CPU, bf16 on CUDA).
    #[default]
    Lora,
    /// The base quantized to 4 bits and dequantized layer by layer right before each product: about a
    /// seventh of f32's memory for the linear layers, a little slower, a little less exact.
    Qlora,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::Qlora => "qlora",
        }
    }
}

/// Which 4-bit weights QLoRA trains against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantSource {
    /// NF4 with double quantization, as bitsandbytes makes it (the QLoRA paper's format); a model
    /// published already in bitsandbytes 4-bit is used as it is.
    #[default]
    Nf4,
    /// A GGUF model's own quantized blocks (Q4_0, Q4_1, Q8_0, K-quants…), so the adapter learns against
    /// exactly the weights llama.cpp and Ollama run.
    Source,
}

impl QuantSource {
    pub fn name(self) -> &'static str {
        match self {
            QuantSource::Nf4 => "nf4",
            QuantSource::Source => "source",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// LoRA on a full-precision base, or QLoRA on a 4-bit one (default lora).
    pub method: Method,
    /// With QLoRA, which 4-bit weights (default nf4).
    pub quant: QuantSource,
    /// Keep AdamW's two moments in host memory instead of the GPU's, where GPU memory is short: the
    /// optimizer step gets slower, the GPU holds 8 bytes less per trainable parameter (default off;
    /// nothing changes on the CPU).
    pub optimizer_offload: bool,
    pub lora: LoraConfig,
    /// Passes over the training split (default 3). Ignored when `max_steps` is set.
    pub epochs: f64,
    /// Stop after this many optimizer steps (default: none, use `epochs`).
    pub max_steps: Option<usize>,
    /// Examples per forward pass (default 4). Lower it when memory is short.
    pub micro_batch_size: usize,
    /// Micro-batches whose gradients add up to one optimizer step (default 4): the effective batch is
    /// `micro_batch_size × grad_accum` examples.
    pub grad_accum: usize,
    /// Peak learning rate of AdamW (default 2e-4).
    pub lr: f64,
    /// AdamW's β₁ and β₂ (default 0.9, 0.999).
    pub betas: (f64, f64),
    /// AdamW's ε (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay on the LoRA matrices (default 0).
    pub weight_decay: f64,
    /// Learning-rate schedule after warm-up (default cosine).
    pub schedule: Schedule,
    /// Warm-up steps from 0 to `lr`; when absent, `warmup_ratio` of the total steps (default 3%).
    pub warmup_steps: Option<usize>,
    pub warmup_ratio: f64,
    /// Clip the gradients' global norm to this (default 1.0; 0 turns clipping off).
    pub max_grad_norm: f64,
    /// Longest sequence in tokens (default 1024); longer examples are dropped or truncated by the data step.
    pub max_seq_len: usize,
    /// Drives initialisation, dropout, shuffling and the split (default 42).
    pub seed: u64,
    /// Evaluate on the eval split every N optimizer steps (default 0: at the end of each epoch and of the run).
    pub eval_every: usize,
    /// Save a checkpoint every N optimizer steps (default 0: every tenth of the run). Checkpoints are
    /// also saved by time (`save_every_minutes`), on pause, on cancel (Ctrl+C too) and at the end.
    pub save_every: usize,
    /// Also save a checkpoint once this many minutes of training have passed since the last one
    /// (default 10; 0 turns the time-based checkpoints off).
    pub save_every_minutes: f64,
    /// How many checkpoints to keep: older ones are deleted as new ones are saved, so a long run does not
    /// fill the disk (default 3; 0 keeps them all). The newest, and so the final one, is always kept.
    pub keep_checkpoints: usize,
    /// Report training metrics every N optimizer steps (default 1).
    pub log_every: usize,
    /// Keep only each layer's input during the forward pass and recompute the rest in the backward pass:
    /// far less memory for activations, about a third more compute (default off).
    pub gradient_checkpointing: bool,
    /// Batch examples of similar length together (as transformers' `group_by_length`): less padding, so
    /// faster steps when lengths vary; the order stays seeded and random between epochs (default off).
    pub group_by_length: bool,
    /// Learning-rate changes made while the run went on, e.g. `loft train --resume RUN --lr X` after a
    /// divergence: from `step` on, the schedule peaks at `lr` instead of the `lr` above. Recorded so the
    /// run can be redone exactly from its run.toml (default: none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lr_changes: Vec<LrChange>,
}

/// From optimizer step `step` (0-based) on, the schedule's peak learning rate is `lr`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrChange {
    pub step: usize,
    pub lr: f64,
}

/// The most examples one optimizer step may take (`micro_batch_size × grad_accum`).
pub const MAX_EXAMPLES_PER_STEP: usize = 1 << 20;
/// The most optimizer steps a run may ask for.
pub const MAX_STEPS: usize = 1_000_000_000;
/// The most passes over the data a run may ask for.
pub const MAX_EPOCHS: f64 = 10_000.0;
/// The longest sequence a run may ask for.
pub const MAX_SEQ_LEN: usize = 1 << 20;

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            method: Method::Lora,
            quant: QuantSource::Nf4,
            optimizer_offload: false,
            lora: LoraConfig::default(),
            epochs: 3.0,
            max_steps: None,
            micro_batch_size: 4,
            grad_accum: 4,
            lr: 2e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            schedule: Schedule::Cosine,
            warmup_steps: None,
            warmup_ratio: 0.03,
            max_grad_norm: 1.0,
            max_seq_len: 1024,
            seed: 42,
            eval_every: 0,
            save_every: 0,
            save_every_minutes: 10.0,
            keep_checkpoints: 3,
            log_every: 1,
            gradient_checkpointing: false,
            group_by_length: false,
            lr_changes: Vec::new(),
        }
    }
}

impl TrainConfig {
    /// How the model's linear layers are held for this run's method.
    pub fn base_format(&self) -> crate::engine::model::BaseFormat {
        use crate::engine::model::BaseFormat;
        match (self.method, self.quant) {
            (Method::Lora, _) => BaseFormat::Dense,
            (Method::Qlora, QuantSource::Nf4) => BaseFormat::Nf4 { double_quant: true },
            (Method::Qlora, QuantSource::Source) => BaseFormat::Source,
        }
    }

    /// Check the values a person can get wrong, so that no setting can make a run panic, overflow or
    /// stall; the message names the field, its value and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.lora;
        let mut checks: Vec<(bool, String)> = vec![
            (
                self.method == Method::Qlora || self.quant == QuantSource::Nf4,
                format!(
                    "quant is \"{}\" but method is \"lora\": quant chooses QLoRA's 4-bit weights; set method = \"qlora\" or remove quant",
                    self.quant.name()
                ),
            ),
            (
                (1..=1024).contains(&l.r),
                format!("lora.r is {}: it must be between 1 and 1024", l.r),
            ),
            (
                l.alpha > 0.0 && l.alpha.is_finite(),
                format!("lora.alpha is {}: it must be a positive number", l.alpha),
            ),
            (
                (0.0..1.0).contains(&l.dropout),
                format!(
                    "lora.dropout is {}: it must be at least 0 and below 1",
                    l.dropout
                ),
            ),
            (
                !l.targets.is_empty(),
                "lora.targets is empty: it must name at least one module (e.g. q_proj)".into(),
            ),
        ];
        match self.max_steps {
            Some(0) => checks.push((
                false,
                "max_steps is 0: it must be at least 1 (or leave it out to train for `epochs`)"
                    .into(),
            )),
            Some(steps) => checks.push((
                steps <= MAX_STEPS,
                format!("max_steps is {steps}: it must be at most {MAX_STEPS}"),
            )),
            None => checks.push((
                self.epochs > 0.0 && self.epochs <= MAX_EPOCHS,
                format!(
                    "epochs is {}: it must be above 0 and at most {MAX_EPOCHS} (or set max_steps)",
                    self.epochs
                ),
            )),
        }
        let per_step = self.micro_batch_size.checked_mul(self.grad_accum);
        checks.extend([
            (
                self.micro_batch_size >= 1,
                "micro_batch_size is 0: it must be at least 1".into(),
            ),
            (
                self.grad_accum >= 1,
                "grad_accum is 0: it must be at least 1".into(),
            ),
            (
                per_step.is_some_and(|n| n <= MAX_EXAMPLES_PER_STEP),
                format!(
                    "micro_batch_size × grad_accum is {} × {}: one step may take at most {MAX_EXAMPLES_PER_STEP} examples; lower grad_accum",
                    self.micro_batch_size, self.grad_accum
                ),
            ),
            (
                self.lr > 0.0 && self.lr < 1.0,
                format!(
                    "lr is {}: it must be above 0 and below 1 (typical LoRA values: 1e-4 to 5e-4)",
                    self.lr
                ),
            ),
            (
                (0.0..1.0).contains(&self.betas.0) && (0.0..1.0).contains(&self.betas.1),
                format!(
                    "betas are ({}, {}): each must be at least 0 and below 1",
                    self.betas.0, self.betas.1
                ),
            ),
            (
                self.eps > 0.0 && self.eps.is_finite(),
                format!("eps is {}: it must be a positive number", self.eps),
            ),
            (
                self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
                format!(
                    "weight_decay is {}: it must be a number at least 0",
                    self.weight_decay
                ),
            ),
            (
                (0.0..1.0).contains(&self.warmup_ratio),
                format!(
                    "warmup_ratio is {}: it must be at least 0 and below 1",
                    self.warmup_ratio
                ),
            ),
            (
                self.max_grad_norm >= 0.0,
                format!(
                    "max_grad_norm is {}: it must be at least 0 (0 turns clipping off)",
                    self.max_grad_norm
                ),
            ),
            (
                (8..=MAX_SEQ_LEN).contains(&self.max_seq_len),
                format!(
                    "max_seq_len is {}: it must be between 8 and {MAX_SEQ_LEN}",
                    self.max_seq_len
                ),
            ),
            (
                self.save_every_minutes >= 0.0 && self.save_every_minutes.is_finite(),
                format!(
                    "save_every_minutes is {}: it must be a number at least 0 (0 turns time-based checkpoints off)",
                    self.save_every_minutes
                ),
            ),
        ]);
        for (i, change) in self.lr_changes.iter().enumerate() {
            checks.push((
                change.lr > 0.0 && change.lr < 1.0,
                format!(
                    "lr_changes[{i}].lr is {}: it must be above 0 and below 1",
                    change.lr
                ),
            ));
            if let Some(before) = i.checked_sub(1).map(|j| &self.lr_changes[j]) {
                checks.push((
                    before.step < change.step,
                    format!(
                        "lr_changes[{i}].step is {}: changes must be in increasing step order",
                        change.step
                    ),
                ));
            }
        }
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(message),
            None => Ok(()),
        }
    }

    /// Optimizer steps in one pass over `examples` examples.
    pub fn total_steps_per_epoch(&self, examples: usize) -> usize {
        examples
            .div_ceil(self.micro_batch_size.saturating_mul(self.grad_accum).max(1))
            .max(1)
    }

    /// Optimizer steps for a training split of `examples` examples.
    pub fn total_steps(&self, examples: usize) -> usize {
        if let Some(steps) = self.max_steps {
            return steps;
        }
        let steps_per_epoch = self.total_steps_per_epoch(examples);
        ((steps_per_epoch as f64) * self.epochs).ceil().max(1.0) as usize
    }

    pub fn warmup(&self, total_steps: usize) -> usize {
        self.warmup_steps
            .unwrap_or_else(|| (self.warmup_ratio * total_steps as f64).ceil() as usize)
    }

    /// The schedule's peak learning rate at optimizer step `step`: `lr`, or the last change made
    /// at or before `step`.
    pub fn peak_lr_at(&self, step: usize) -> f64 {
        self.lr_changes
            .iter()
            .rev()
            .find(|c| c.step <= step)
            .map_or(self.lr, |c| c.lr)
    }

    /// The learning rate at optimizer step `step` (0-based), as transformers' schedulers compute it.
    pub fn lr_at(&self, step: usize, total_steps: usize) -> f64 {
        let peak = self.peak_lr_at(step);
        let warmup = self.warmup(total_steps);
        if step < warmup {
            return peak * step as f64 / warmup.max(1) as f64;
        }
        let span = total_steps.saturating_sub(warmup).max(1) as f64;
        let progress = (step - warmup) as f64 / span;
        match self.schedule {
            Schedule::Constant => peak,
            Schedule::Linear => peak * (1.0 - progress).max(0.0),
            Schedule::Cosine => {
                peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
        }
    }

    /// Optimizer steps between the checkpoints saved by step count: `save_every`, or a tenth of the run.
    pub fn checkpoint_interval(&self, total_steps: usize) -> usize {
        match self.save_every {
            0 => total_steps.div_ceil(10).max(1),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let config = TrainConfig::default();
        let text = toml::to_string(&config).unwrap();
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(config, back);
        let partial: TrainConfig = toml::from_str("lr = 1e-4\n[lora]\nr = 8\n").unwrap();
        assert_eq!(
            (partial.lr, partial.lora.r, partial.lora.alpha),
            (1e-4, 8, 32.0)
        );
        let err = toml::from_str::<TrainConfig>("learning_rate = 1e-4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("learning_rate"), "{err}");
    }

    #[test]
    fn schedules_follow_transformers() {
        let c = TrainConfig {
            warmup_steps: Some(10),
            lr: 1.0,
            ..TrainConfig::default()
        };
        assert_eq!(c.lr_at(0, 110), 0.0);
        assert_eq!(c.lr_at(5, 110), 0.5);
        assert!((c.lr_at(10, 110) - 1.0).abs() < 1e-12);
        assert!(
            (c.lr_at(60, 110) - 0.5).abs() < 1e-12,
            "cosine is half way at the middle"
        );
        let lin = TrainConfig {
            schedule: Schedule::Linear,
            ..c.clone()
        };
        assert!((lin.lr_at(35, 110) - 0.75).abs() < 1e-12);
        assert_eq!(
            TrainConfig {
                schedule: Schedule::Constant,
                ..c
            }
            .lr_at(100, 110),
            1.0
        );
    }

    #[test]
    fn validation_names_the_field() {
        let bad = TrainConfig {
            lr: 0.0,
            ..TrainConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("lr"));
        let bad = TrainConfig {
            lora: LoraConfig {
                dropout: 1.5,
                ..LoraConfig::default()
            },
            ..TrainConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("dropout"));
        assert!(TrainConfig::default().validate().is_ok());
    }

    #[test]
    fn total_steps_from_epochs() {
        let c = TrainConfig {
            micro_batch_size: 2,
            grad_accum: 2,
            epochs: 2.0,
            ..TrainConfig::default()
        };
        assert_eq!(c.total_steps(10), 6); // ceil(10 / 4) = 3 steps per epoch
        assert_eq!(
            TrainConfig {
                max_steps: Some(7),
                ..c
            }
            .total_steps(10),
            7
        );
    }

    /// Every bound that could make a run panic (an overflowing product), stall (epochs without end) or
    /// end untrained (`max_steps = 0`) is refused, and the message names the field.
    #[test]
    fn bounds_that_could_panic_or_stall_are_refused() {
        let d = TrainConfig::default;
        let cases: Vec<(TrainConfig, &str)> = vec![
            (
                TrainConfig {
                    micro_batch_size: usize::MAX / 2,
                    grad_accum: 4,
                    ..d()
                },
                "micro_batch_size × grad_accum",
            ),
            (
                TrainConfig {
                    micro_batch_size: 2048,
                    grad_accum: 2048,
                    ..d()
                },
                "micro_batch_size × grad_accum",
            ),
            (
                TrainConfig {
                    max_steps: Some(0),
                    ..d()
                },
                "max_steps is 0",
            ),
            (
                TrainConfig {
                    max_steps: Some(usize::MAX),
                    ..d()
                },
                "max_steps",
            ),
            (
                TrainConfig {
                    epochs: f64::INFINITY,
                    ..d()
                },
                "epochs",
            ),
            (
                TrainConfig {
                    epochs: f64::NAN,
                    ..d()
                },
                "epochs",
            ),
            (
                TrainConfig {
                    epochs: 1e300,
                    ..d()
                },
                "epochs",
            ),
            (
                TrainConfig {
                    eps: f64::NAN,
                    ..d()
                },
                "eps",
            ),
            (
                TrainConfig {
                    weight_decay: f64::INFINITY,
                    ..d()
                },
                "weight_decay",
            ),
            (
                TrainConfig {
                    max_grad_norm: f64::NAN,
                    ..d()
                },
                "max_grad_norm",
            ),
            (
                TrainConfig {
                    max_seq_len: usize::MAX,
                    ..d()
                },
                "max_seq_len",
            ),
            (
                TrainConfig {
                    save_every_minutes: f64::NAN,
                    ..d()
                },
                "save_every_minutes",
            ),
            (
                TrainConfig {
                    lr_changes: vec![LrChange { step: 3, lr: 2.0 }],
                    ..d()
                },
                "lr_changes[0].lr",
            ),
            (
                TrainConfig {
                    lr_changes: vec![
                        LrChange { step: 3, lr: 1e-4 },
                        LrChange { step: 3, lr: 5e-5 },
                    ],
                    ..d()
                },
                "lr_changes[1].step",
            ),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(message) => assert!(message.contains(field), "{field}: {message}"),
                Ok(()) => panic!("{field} out of bounds was accepted"),
            }
        }
        // With max_steps set, epochs is not used and is not checked.
        let steps_only = TrainConfig {
            max_steps: Some(5),
            epochs: 0.0,
            ..d()
        };
        assert_eq!(steps_only.validate(), Ok(()));
        assert_eq!(steps_only.total_steps(10), 5);
    }

    #[test]
    fn checkpoints_by_default_every_tenth_of_the_run() {
        let c = TrainConfig::default();
        assert_eq!(c.save_every, 0);
        assert_eq!(c.save_every_minutes, 10.0);
        assert_eq!(c.keep_checkpoints, 3);
        assert_eq!(c.checkpoint_interval(100), 10);
        assert_eq!(c.checkpoint_interval(95), 10);
        assert_eq!(c.checkpoint_interval(7), 1);
        let explicit = TrainConfig {
            save_every: 25,
            ..c
        };
        assert_eq!(explicit.checkpoint_interval(100), 25);
    }

    #[test]
    fn a_learning_rate_change_rescales_the_rest_of_the_schedule() {
        let c = TrainConfig {
            lr: 1.0,
            warmup_steps: Some(0),
            schedule: Schedule::Linear,
            lr_changes: vec![LrChange { step: 50, lr: 0.5 }],
            ..TrainConfig::default()
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(
            close(c.lr_at(49, 100), 0.51),
            "before the change: the first peak"
        );
        assert!(
            close(c.lr_at(50, 100), 0.25),
            "from the change on: the new peak"
        );
        assert!(close(c.lr_at(60, 100), 0.2));
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("[[lr_changes]]"), "{text}");
        assert_eq!(toml::from_str::<TrainConfig>(&text).unwrap(), c);
        assert!(
            !toml::to_string(&TrainConfig::default())
                .unwrap()
                .contains("lr_changes"),
            "no changes, no entry"
        );
    }
}
