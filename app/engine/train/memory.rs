//! What a training step needs in memory beyond the loaded model, checked before the first step: on the
//! CPU, running out of memory is not an error Loft could report but the kernel ending the process, so a
//! step that cannot fit is refused up front with what to change.
//!
//! The figures follow what the CPU training ops keep for the backward pass (see `engine::model`): per
//! token and layer the two norms' outputs, q/k/v, the attention output, its projection, the residual
//! stream, and the MLP's gate, up and product; the logits and their gradient; and four f32 copies of
//! every adapter weight (value, gradient, AdamW's two moments). On SmolLM2-135M at 4 × 256 tokens this
//! says 2.1 GB with the f32 weights; `loft bench-train` measured 2.45 GB peak without dropout and 2.66 GB
//! with the trainer's defaults (dropout 0.05, clipping, 4 micro-batches accumulated), runtime included.

use crate::engine::arch::Arch;

/// Bytes a step holds at its peak, by part (the frozen weights are already loaded and not counted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepMemory {
    pub activations: u64,
    pub logits: u64,
    pub adapters: u64,
}

impl StepMemory {
    /// `tokens` is a micro-batch's rows times its longest row; `trainable` counts the adapters' weights.
    pub fn estimate(arch: &Arch, tokens: usize, trainable: u64, checkpointing: bool) -> StepMemory {
        let per_token_layer = 7 * arch.hidden_size
            + (arch.num_heads + 2 * arch.num_kv_heads) * arch.head_dim
            + 3 * arch.intermediate_size;
        // With checkpointing each layer keeps its input, and one layer at a time is rebuilt in full.
        let kept_layers = match checkpointing {
            true => {
                let inputs = (arch.num_layers * arch.hidden_size).div_ceil(per_token_layer);
                (inputs + 1).min(arch.num_layers)
            }
            false => arch.num_layers,
        };
        let f32_bytes = 4u64;
        StepMemory {
            activations: (tokens * per_token_layer * kept_layers) as u64 * f32_bytes,
            logits: 2 * (tokens * arch.vocab_size) as u64 * f32_bytes,
            adapters: 4 * trainable * f32_bytes,
        }
    }

    pub fn total(&self) -> u64 {
        self.activations + self.logits + self.adapters
    }
}

/// Why a step will not fit in `available` bytes, and what to change; `None` when it fits with a
/// margin (a tenth of what is free, for the runtime and the backward pass's temporaries).
pub fn does_not_fit(
    need: &StepMemory,
    available: u64,
    micro_batch: usize,
    longest: usize,
    checkpointing: bool,
) -> Option<(String, String)> {
    if need.total() <= available - available / 10 {
        return None;
    }
    let gb = |b: u64| b as f64 / 1e9;
    let reason = format!(
        "a training step needs about {:.1} GB beyond the loaded model ({:.1} GB activations for {micro_batch} × {longest} tokens, {:.1} GB logits, {:.2} GB adapters and optimizer), and {:.1} GB of memory is free",
        gb(need.total()),
        gb(need.activations),
        gb(need.logits),
        gb(need.adapters),
        gb(available),
    );
    let mut advice = String::from("Lower the micro-batch size or max_seq_len (raise gradient accumulation to keep the effective batch)");
    if !checkpointing {
        advice.push_str(", or turn on gradient checkpointing, which keeps far fewer activations");
    }
    advice.push_str("; closing other programs frees memory too.");
    Some((reason, advice))
}

/// Memory the system can give this process now without swapping, in bytes (Linux, macOS, Windows);
/// None where the system does not say, and then the check is skipped.
pub fn available_memory() -> Option<u64> {
    crate::engine::sysmem::available()
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

    /// The estimate for SmolLM2 at 4 × 256 plus its f32 weights lands near the 2.45–2.66 GB peak that
    /// `loft bench-train` measures (runtime not included), and checkpointing cuts the activations.
    #[test]
    fn smollm2_estimate_is_close_to_the_measured_peak() {
        let arch = smollm2();
        let trainable = arch.lora_parameter_count(
            &crate::engine::model::lora::ALL_LINEAR_TARGETS.map(String::from),
            16,
        );
        let need = StepMemory::estimate(&arch, 4 * 256, trainable, false);
        let with_weights = need.total() + arch.parameter_count() * 4;
        assert!(
            (1_900_000_000..2_500_000_000).contains(&with_weights),
            "{with_weights} bytes: {need:?}"
        );
        let ckpt = StepMemory::estimate(&arch, 4 * 256, trainable, true);
        assert!(
            ckpt.activations * 5 < need.activations,
            "{ckpt:?} vs {need:?}"
        );
    }

    #[test]
    fn a_step_too_big_for_free_memory_is_refused_with_advice() {
        let arch = smollm2();
        let need = StepMemory::estimate(&arch, 16 * 2048, 5_000_000, false);
        let (reason, advice) = does_not_fit(&need, 4_000_000_000, 16, 2048, false).unwrap();
        assert!(reason.contains("16 × 2048 tokens"), "{reason}");
        assert!(reason.contains("4.0 GB of memory is free"), "{reason}");
        assert!(advice.contains("gradient checkpointing"), "{advice}");
        assert!(does_not_fit(&need, 64_000_000_000, 16, 2048, false).is_none());
    }
}
