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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
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
    /// Save a checkpoint every N optimizer steps (default 0: only at the end, on cancel and on pause).
    pub save_every: usize,
    /// Report training metrics every N optimizer steps (default 1).
    pub log_every: usize,
    /// Keep only each layer's input during the forward pass and recompute the rest in the backward pass:
    /// far less memory for activations, about a third more compute (default off).
    pub gradient_checkpointing: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
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
            log_every: 1,
            gradient_checkpointing: false,
        }
    }
}

impl TrainConfig {
    /// Check the values a person can get wrong; the message says which field and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.lora;
        let checks: [(bool, &str); 12] = [
            (l.r >= 1 && l.r <= 1024, "lora.r must be between 1 and 1024"),
            (
                l.alpha > 0.0 && l.alpha.is_finite(),
                "lora.alpha must be a positive number",
            ),
            (
                (0.0..1.0).contains(&l.dropout),
                "lora.dropout must be at least 0 and below 1",
            ),
            (
                !l.targets.is_empty(),
                "lora.targets must name at least one module (e.g. q_proj)",
            ),
            (
                self.epochs > 0.0 || self.max_steps.is_some_and(|s| s > 0),
                "epochs or max_steps must be above 0",
            ),
            (
                self.micro_batch_size >= 1,
                "micro_batch_size must be at least 1",
            ),
            (self.grad_accum >= 1, "grad_accum must be at least 1"),
            (
                self.lr > 0.0 && self.lr < 1.0,
                "lr must be above 0 and below 1 (typical LoRA values: 1e-4 to 5e-4)",
            ),
            (
                (0.0..1.0).contains(&self.betas.0) && (0.0..1.0).contains(&self.betas.1),
                "betas must each be in [0, 1)",
            ),
            (
                self.eps > 0.0 && self.weight_decay >= 0.0,
                "eps must be above 0 and weight_decay at least 0",
            ),
            (
                (0.0..1.0).contains(&self.warmup_ratio),
                "warmup_ratio must be in [0, 1)",
            ),
            (
                self.max_seq_len >= 8 && self.max_grad_norm >= 0.0,
                "max_seq_len must be at least 8 and max_grad_norm at least 0",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(message.to_string()),
            None => Ok(()),
        }
    }

    /// Optimizer steps in one pass over `examples` examples.
    pub fn total_steps_per_epoch(&self, examples: usize) -> usize {
        examples
            .div_ceil(self.micro_batch_size * self.grad_accum)
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

    /// The learning rate at optimizer step `step` (0-based), as transformers' schedulers compute it.
    pub fn lr_at(&self, step: usize, total_steps: usize) -> f64 {
        let warmup = self.warmup(total_steps);
        if step < warmup {
            return self.lr * step as f64 / warmup.max(1) as f64;
        }
        let span = total_steps.saturating_sub(warmup).max(1) as f64;
        let progress = (step - warmup) as f64 / span;
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Linear => self.lr * (1.0 - progress).max(0.0),
            Schedule::Cosine => {
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
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
}
