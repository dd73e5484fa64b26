//! Text generation: greedy or temperature/top-p sampling with a KV cache, streaming tokens as they
//! come and stopping on the model's stop tokens, the token budget, or cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Tensor, D};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

use super::error::{ModelError, Result};
use super::model::{KvCache, Model};

#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// None (or 0): greedy decoding, the same answer every time.
    pub temperature: Option<f64>,
    pub top_p: f64,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            max_new_tokens: 256,
            temperature: None,
            top_p: 1.0,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    StopToken,
    MaxTokens,
    ContextFull,
    Cancelled,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// New tokens, the stop token included when one ended the answer.
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    pub prefill: Duration,
    pub decode: Duration,
}

impl Generation {
    /// Decoding speed in new tokens per second (prefill excluded).
    pub fn tokens_per_second(&self) -> f64 {
        let decoded = self.tokens.len().saturating_sub(1) as f64;
        decoded / self.decode.as_secs_f64().max(1e-9)
    }
}

pub fn generate(
    model: &Model,
    prompt: &[u32],
    sampling: &Sampling,
    stop_tokens: &[u32],
    cancel: &AtomicBool,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(ModelError::NotFound(
            "the prompt is empty: nothing to continue".into(),
        ));
    }
    let context = model.arch.max_position_embeddings;
    if prompt.len() >= context {
        return Err(ModelError::NotFound(format!(
            "the prompt has {} tokens but the model's context holds {context}: shorten it",
            prompt.len()
        )));
    }
    let mut rng = StdRng::seed_from_u64(sampling.seed);
    let mut cache = KvCache::new(model);
    let mut tokens = Vec::new();
    let start = Instant::now();
    let mut input = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    let mut prefill = Duration::ZERO;
    let stop = loop {
        if cancel.load(Ordering::Relaxed) {
            break StopReason::Cancelled;
        }
        if tokens.len() >= sampling.max_new_tokens {
            break StopReason::MaxTokens;
        }
        let pos = cache.len();
        if pos >= context {
            break StopReason::ContextFull;
        }
        let logits = model
            .forward_last(&input, pos, Some(&mut cache))?
            .squeeze(0)?;
        if tokens.is_empty() {
            prefill = start.elapsed();
        }
        let next = pick(&logits, sampling, &mut rng)?;
        tokens.push(next);
        on_token(next);
        if stop_tokens.contains(&next) {
            break StopReason::StopToken;
        }
        input = Tensor::new(&[next], model.device())?.unsqueeze(0)?;
    };
    Ok(Generation {
        tokens,
        stop,
        prompt_tokens: prompt.len(),
        prefill,
        decode: start.elapsed().saturating_sub(prefill),
    })
}

fn pick(logits: &Tensor, sampling: &Sampling, rng: &mut StdRng) -> Result<u32> {
    match sampling.temperature {
        Some(t) if t > 0.0 => {
            let probs = candle_nn::ops::softmax_last_dim(&(logits / t)?)?.to_vec1::<f32>()?;
            Ok(sample_top_p(&probs, sampling.top_p, rng.random::<f32>()))
        }
        // First index of the maximum, as torch.argmax breaks ties.
        _ => Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?),
    }
}

/// Nucleus sampling: the smallest set of most likely tokens whose probability reaches `top_p`,
/// renormalised, then the token where the cumulative probability passes `u` (uniform in [0, 1)).
pub fn sample_top_p(probs: &[f32], top_p: f64, u: f32) -> u32 {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut kept = 0.0f32;
    let mut cut = order.len();
    for (i, &index) in order.iter().enumerate() {
        kept += probs[index];
        if kept as f64 >= top_p {
            cut = i + 1;
            break;
        }
    }
    let target = u * kept;
    let mut acc = 0.0f32;
    for &index in &order[..cut] {
        acc += probs[index];
        if acc > target {
            return index as u32;
        }
    }
    order[cut - 1] as u32
}

/// Turns a growing list of token ids into text deltas, holding back bytes that do not yet form a
/// whole character (a multi-token emoji arrives as one piece).
pub struct TextStream<'a> {
    tokenizer: &'a tokenizers::Tokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a tokenizers::Tokenizer) -> Self {
        TextStream {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.decode()?;
        if text.ends_with('\u{fffd}') || text.len() < self.emitted {
            return Ok(String::new());
        }
        let delta = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(delta)
    }

    pub fn text(&self) -> Result<String> {
        self.decode()
    }

    fn decode(&self) -> Result<String> {
        self.tokenizer
            .decode(&self.ids, false)
            .map_err(|e| ModelError::Tokenizer {
                path: "tokenizer".into(),
                message: format!("cannot decode generated tokens: {e}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_nucleus() {
        let probs = [0.5, 0.3, 0.15, 0.05];
        // top_p 0.8 keeps tokens 0 and 1 (0.5 + 0.3); u near 1 lands on the last kept one.
        assert_eq!(sample_top_p(&probs, 0.8, 0.0), 0);
        assert_eq!(sample_top_p(&probs, 0.8, 0.99), 1);
        // top_p 1.0 keeps all; u near 1 reaches the least likely.
        assert_eq!(sample_top_p(&probs, 1.0, 0.999), 3);
    }
}
