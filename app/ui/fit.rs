//! What fits: LoRA and QLoRA estimated side by side (the engine's [`MemoryEstimate`]) for the batch
//! the checked data really makes, which one to choose, and — when neither fits — what would. Plain
//! data without pixels, so the Method, Model and Train pages say the same thing and unit tests can
//! check the advice.

use crate::engine::arch::Arch;
use crate::engine::train::memory::{BatchShape, Change, DeviceKind, MemoryEstimate, Verdict};
pub use crate::engine::train::sizing::EncodedLengths;
use crate::engine::train::{Method, QuantSource, TrainConfig};

/// Settings that make a run smaller, with QLoRA's total after them and whether that fits.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub changes: Vec<Change>,
    pub text: String,
    pub total: u64,
    pub fits: bool,
}

/// Which method to train with.
#[derive(Debug, Clone, PartialEq)]
pub enum Recommendation {
    /// LoRA fits comfortably: the exact, faster one.
    Lora,
    /// LoRA does not fit comfortably but QLoRA fits.
    Qlora,
    /// Neither fits: changes that would make QLoRA fit (those that fit first); empty or unfitting
    /// when nothing short of a smaller model does.
    Neither(Vec<Suggestion>),
}

/// LoRA and QLoRA for the same settings and data, against the memory available.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub lora: MemoryEstimate,
    pub qlora: MemoryEstimate,
    /// Whether the batch comes from the checked data (else `micro_batch_size × max_seq_len`).
    pub from_data: bool,
    /// The settings compared (the method aside), for the suggestions.
    config: TrainConfig,
}

impl Comparison {
    pub fn new(
        arch: &Arch,
        config: &TrainConfig,
        device: DeviceKind,
        data: Option<&EncodedLengths>,
        available: Option<u64>,
    ) -> Comparison {
        let estimate = |method: Method| {
            let mut config = config.clone();
            config.method = method;
            if method == Method::Lora {
                config.quant = QuantSource::Nf4;
            }
            match data {
                Some(d) => MemoryEstimate::for_data(arch, &config, device, &d.shape(&config)),
                None => MemoryEstimate::new(arch, &config, device, BatchShape::assumed(&config)),
            }
            .with_available(available)
        };
        Comparison {
            lora: estimate(Method::Lora),
            qlora: estimate(Method::Qlora),
            from_data: data.is_some(),
            config: config.clone(),
        }
    }

    pub fn of(&self, method: Method) -> &MemoryEstimate {
        match method {
            Method::Lora => &self.lora,
            Method::Qlora => &self.qlora,
        }
    }

    pub fn batch(&self) -> BatchShape {
        self.lora.batch
    }

    pub fn available(&self) -> Option<u64> {
        self.lora.available
    }

    /// Prefer LoRA when it fits comfortably (exact, and faster); QLoRA when it fits and LoRA does
    /// not fit comfortably; else what would make QLoRA fit. None while the memory is unknown.
    pub fn recommendation(&self) -> Option<Recommendation> {
        Some(match (self.lora.verdict(), self.qlora.fits()?) {
            (Verdict::Fits, _) => Recommendation::Lora,
            (_, true) => Recommendation::Qlora,
            _ => Recommendation::Neither(self.suggestions()),
        })
    }

    /// The engine's advice for QLoRA, those that fit first; when no single change is enough, all of
    /// them together as well (a smaller model is the page's last word, not a suggestion here).
    fn suggestions(&self) -> Vec<Suggestion> {
        let advice: Vec<_> = self
            .qlora
            .advice()
            .into_iter()
            .filter(|a| a.change != Change::SmallerModel)
            .collect();
        let mut out: Vec<Suggestion> = advice
            .iter()
            .map(|a| Suggestion {
                changes: vec![a.change.clone()],
                text: a.text.clone(),
                total: a.total,
                fits: a.fits,
            })
            .collect();
        if !out.iter().any(|s| s.fits) && out.len() > 1 {
            let mut config = self.qlora_config();
            let mut batch = self.qlora.batch;
            for s in &out {
                for change in &s.changes {
                    apply(change, &mut config);
                    match change {
                        Change::MicroBatchSize { rows } => batch.rows = *rows,
                        Change::MaxSeqLen { tokens } => batch.longest = *tokens,
                        _ => {}
                    }
                }
            }
            let all = self.qlora.with_config(&config, batch);
            let texts: Vec<String> = out.iter().map(|s| s.text.clone()).collect();
            out.push(Suggestion {
                changes: out.iter().flat_map(|s| s.changes.clone()).collect(),
                text: format!("All of these together: {}", texts.join("; ")),
                total: all.total,
                fits: all.fits() == Some(true),
            });
            out.sort_by_key(|s| !s.fits);
        }
        out
    }

    fn qlora_config(&self) -> TrainConfig {
        TrainConfig {
            method: Method::Qlora,
            ..self.config.clone()
        }
    }
}

/// Make `config` what `change` says (a smaller model is not a setting: nothing changes).
pub fn apply(change: &Change, config: &mut TrainConfig) {
    match change {
        Change::GradientCheckpointing => config.gradient_checkpointing = true,
        Change::Qlora => {
            config.method = Method::Qlora;
            config.quant = QuantSource::Nf4;
        }
        Change::OptimizerOffload => config.optimizer_offload = true,
        Change::MicroBatchSize { rows } => config.micro_batch_size = *rows,
        Change::MaxSeqLen { tokens } => config.max_seq_len = *tokens,
        Change::SmallerModel => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::data::Example;

    fn smollm2() -> Arch {
        crate::engine::arch::smollm2_for_tests()
    }

    const GIB: u64 = 1 << 30;

    fn example(len: usize, trained: usize) -> Example {
        Example {
            row: 0,
            ids: vec![1; len],
            mask: (0..len).map(|i| i >= len - trained).collect(),
            truncated: false,
        }
    }

    /// The kept lengths give the largest micro-batch at any batch size and max_seq_len: the longest
    /// example (cut to max_seq_len) and the most trained positions that many rows can hold.
    #[test]
    fn the_kept_lengths_size_the_batch_at_any_batch_size() {
        let examples: Vec<Example> = [(216, 80), (40, 30), (150, 120), (90, 10), (216, 5)]
            .iter()
            .map(|(l, t)| example(*l, *t))
            .collect();
        let lengths = EncodedLengths::of(&examples).unwrap();
        for (batch, max_seq_len, rows, longest, trained) in [
            (1, 1024, 1, 216, 120),
            (2, 1024, 2, 216, 200),
            (4, 100, 4, 100, 240),
            (16, 1024, 5, 216, 245),
        ] {
            let config = TrainConfig {
                micro_batch_size: batch,
                max_seq_len,
                ..TrainConfig::default()
            };
            let shape = lengths.shape(&config);
            assert_eq!(
                (
                    shape.batch.rows,
                    shape.batch.longest,
                    shape.trained_tokens,
                    shape.examples
                ),
                (rows, longest, trained, 5),
                "batch {batch}, max_seq_len {max_seq_len}"
            );
        }
        assert_eq!(EncodedLengths::of(&[]), None);
    }

    #[test]
    fn lora_is_recommended_when_it_fits_comfortably_and_qlora_when_only_it_fits() {
        let arch = smollm2();
        let config = TrainConfig::default();
        let at = |available| Comparison::new(&arch, &config, DeviceKind::Cpu, None, available);
        let roomy = at(Some(64 * GIB));
        assert_eq!(roomy.recommendation(), Some(Recommendation::Lora));
        assert!(roomy.qlora.total < roomy.lora.total);
        let between = at(Some((roomy.lora.total + roomy.qlora.total) / 2));
        assert_eq!(between.lora.fits(), Some(false));
        assert_eq!(between.qlora.fits(), Some(true));
        assert_eq!(between.recommendation(), Some(Recommendation::Qlora));
        assert_eq!(at(None).recommendation(), None);
    }

    #[test]
    fn when_neither_fits_the_suggestions_are_for_qlora_and_fitting_ones_come_first() {
        let arch = smollm2();
        let config = TrainConfig {
            micro_batch_size: 16,
            max_seq_len: 2048,
            ..TrainConfig::default()
        };
        let c = Comparison::new(&arch, &config, DeviceKind::Cpu, None, Some(2 * GIB));
        let Some(Recommendation::Neither(suggestions)) = c.recommendation() else {
            panic!("{:?}", c.recommendation());
        };
        assert!(!suggestions.is_empty());
        assert!(suggestions
            .iter()
            .all(|s| !s.changes.contains(&Change::Qlora)));
        let fitting = suggestions.iter().take_while(|s| s.fits).count();
        assert!(
            suggestions[fitting..].iter().all(|s| !s.fits),
            "{suggestions:?}"
        );
        // Nothing but a smaller model fits in 100 MiB: every suggestion says it does not fit.
        let tiny = Comparison::new(&arch, &config, DeviceKind::Cpu, None, Some(100 << 20));
        let Some(Recommendation::Neither(none)) = tiny.recommendation() else {
            panic!();
        };
        assert!(none.iter().all(|s| !s.fits), "{none:?}");
    }
}
