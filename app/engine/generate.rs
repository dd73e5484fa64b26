//! Text generation: greedy or temperature/top-p sampling with a KV cache, streaming tokens as they
//! come and stopping on the model's stop tokens, the token budget, or cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Tensor, D};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};
use super::model::{KvCache, Model, SeqCache};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    check_prompt(model, prompt)?;
    let context = model.arch.max_position_embeddings;
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

/// A prompt generation can continue: not empty, and shorter than the model's context.
fn check_prompt(model: &Model, prompt: &[u32]) -> Result<()> {
    if prompt.is_empty() {
        return Err(ModelError::invalid_input(
            "prompt",
            "the prompt is empty: nothing to continue",
        ));
    }
    let context = model.arch.max_position_embeddings;
    if prompt.len() >= context {
        return Err(ModelError::invalid_input(
            "prompt",
            format!(
                "the prompt has {} tokens but the model's context holds {context}: shorten it",
                prompt.len()
            ),
        ));
    }
    Ok(())
}

/// Answer many prompts, up to `batch` of them at a time: each step decodes one token for every
/// sequence in flight, and a sequence that ends makes room for the next prompt at once (continuous
/// batching), so a long answer never holds the others back. `on_answer(i, generation)` reports each
/// prompt's answer as it completes, in completion order.
///
/// Answers are the ones [`generate`] gives each prompt alone: every sequence keeps its own cache and
/// position, and sampling draws from a generator seeded by `sampling.seed` and the prompt's index, so
/// neither depends on which prompts share a batch. `prefill` times a sequence from when its prompt
/// started to its first token; `decode` is the rest, with the steps it shared.
///
/// Models that [`Model::decodes_in_batches`] cannot serve answer one prompt at a time. Cancelling
/// reports nothing more and returns.
pub fn generate_many(
    model: &Model,
    prompts: &[Vec<u32>],
    sampling: &Sampling,
    stop_tokens: &[u32],
    batch: usize,
    cancel: &AtomicBool,
    on_answer: &mut dyn FnMut(usize, Generation),
) -> Result<()> {
    for (i, prompt) in prompts.iter().enumerate() {
        check_prompt(model, prompt)
            .map_err(|e| ModelError::invalid_input("prompt", format!("prompt {}: {e}", i + 1)))?;
    }
    if !model.decodes_in_batches() || batch <= 1 || sampling.max_new_tokens == 0 {
        for (i, prompt) in prompts.iter().enumerate() {
            let mut seeded = sampling.clone();
            seeded.seed = prompt_seed(sampling.seed, i);
            let generation = generate(model, prompt, &seeded, stop_tokens, cancel, &mut |_| {})?;
            if generation.stop == StopReason::Cancelled {
                return Ok(());
            }
            on_answer(i, generation);
        }
        return Ok(());
    }
    let context = model.arch.max_position_embeddings;
    // Shortest prompts first, so the prompts prefilled together are of similar length (little
    // padding); popped from the end.
    let mut waiting = (0..prompts.len()).collect::<Vec<_>>();
    waiting.sort_by_key(|&i| std::cmp::Reverse((prompts[i].len(), i)));
    let mut flight: Vec<InFlight> = Vec::new();
    let mut caches: Vec<SeqCache> = Vec::new();
    loop {
        let free = batch.saturating_sub(flight.len()).min(waiting.len());
        if free > 0 {
            if cancel.load(Ordering::Relaxed) {
                return Ok(());
            }
            let entering: Vec<usize> = (0..free).filter_map(|_| waiting.pop()).collect();
            let started = Instant::now();
            let texts: Vec<&[u32]> = entering.iter().map(|&i| prompts[i].as_slice()).collect();
            let prefilled = model.prefill_many(&texts)?;
            for (index, (logits, cache)) in entering.into_iter().zip(prefilled) {
                let mut sequence = InFlight {
                    index,
                    started,
                    prefill: Duration::ZERO,
                    tokens: Vec::new(),
                    rng: StdRng::seed_from_u64(prompt_seed(sampling.seed, index)),
                };
                let next = pick(&logits.squeeze(0)?, sampling, &mut sequence.rng)?;
                sequence.prefill = started.elapsed();
                sequence.tokens.push(next);
                match ending(
                    &sequence.tokens,
                    cache.len(),
                    sampling,
                    stop_tokens,
                    context,
                ) {
                    Some(stop) => on_answer(index, sequence.finish(stop, prompts[index].len())),
                    None => {
                        flight.push(sequence);
                        caches.push(cache);
                    }
                }
            }
        }
        if flight.is_empty() {
            return Ok(());
        }
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        let last: Vec<u32> = flight
            .iter()
            .map(|s| s.tokens[s.tokens.len() - 1])
            .collect();
        let logits = model.decode_step(&last, &mut caches)?;
        let mut done = Vec::new();
        for (row, sequence) in flight.iter_mut().enumerate() {
            let next = pick(&logits.get(row)?, sampling, &mut sequence.rng)?;
            sequence.tokens.push(next);
            if let Some(stop) = ending(
                &sequence.tokens,
                caches[row].len(),
                sampling,
                stop_tokens,
                context,
            ) {
                done.push((row, stop));
            }
        }
        // Highest rows first, so that each swap_remove moves a row that stays.
        for (row, stop) in done.into_iter().rev() {
            let sequence = flight.swap_remove(row);
            caches.swap_remove(row);
            let prompt_tokens = prompts[sequence.index].len();
            on_answer(sequence.index, sequence.finish(stop, prompt_tokens));
        }
    }
}

/// A sequence being answered by [`generate_many`].
struct InFlight {
    index: usize,
    started: Instant,
    prefill: Duration,
    tokens: Vec<u32>,
    rng: StdRng,
}

impl InFlight {
    fn finish(self, stop: StopReason, prompt_tokens: usize) -> Generation {
        Generation {
            stop,
            prompt_tokens,
            prefill: self.prefill,
            decode: self.started.elapsed().saturating_sub(self.prefill),
            tokens: self.tokens,
        }
    }
}

/// Why a sequence whose last token was just chosen stops there, if it does; `cached` positions are
/// in its cache (the new token not yet among them).
fn ending(
    tokens: &[u32],
    cached: usize,
    sampling: &Sampling,
    stop_tokens: &[u32],
    context: usize,
) -> Option<StopReason> {
    let last = tokens.last()?;
    if stop_tokens.contains(last) {
        Some(StopReason::StopToken)
    } else if tokens.len() >= sampling.max_new_tokens {
        Some(StopReason::MaxTokens)
    } else if cached >= context {
        Some(StopReason::ContextFull)
    } else {
        None
    }
}

/// The sampling seed of prompt `index` in a batch: the same whatever else shares the batch.
fn prompt_seed(seed: u64, index: usize) -> u64 {
    crate::engine::rng::SplitMix64::u64_at(seed, index as u64)
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
///
/// Each step decodes only a short window — the tokens of the last piece given out, then the new ones —
/// as transformers' and text-generation-inference's streamers do: decoders that treat the first token
/// apart (SentencePiece drops its leading space) then see the same start both times, and a step costs
/// the same at the end of a long answer as at its start. Some decoders still rewrite text already given
/// out once more tokens come (WordPiece's clean-up turns "a '" into "a'"); the delta is then everything
/// after the part both decodings share, cut at a character boundary, so no text is lost and nothing is
/// ever sliced inside a character.
pub struct TextStream<'a> {
    tokenizer: &'a tokenizers::Tokenizer,
    ids: Vec<u32>,
    /// Where the window starts: the first token of the last piece given out.
    window: usize,
    /// Tokens before this are given out as text.
    read: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a tokenizers::Tokenizer) -> Self {
        TextStream {
            tokenizer,
            ids: Vec::new(),
            window: 0,
            read: 0,
        }
    }

    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = self.decode(&self.ids[self.window..self.read])?;
        let now = self.decode(&self.ids[self.window..])?;
        let Some(delta) = new_text(&before, &now) else {
            return Ok(String::new());
        };
        let delta = delta.to_string();
        self.window = self.read;
        self.read = self.ids.len();
        Ok(delta)
    }

    /// The whole text so far, decoded at once.
    pub fn text(&self) -> Result<String> {
        self.decode(&self.ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer {
                path: "tokenizer".into(),
                message: format!("cannot decode generated tokens: {e}"),
            })
    }
}

/// What decoding the window with the new tokens (`now`) adds to decoding it without them (`before`):
/// `None` while the new tokens end inside a character (U+FFFD) or add nothing yet. When the decoder
/// rewrote part of `before`, the delta starts where the two stop agreeing.
fn new_text<'t>(before: &str, now: &'t str) -> Option<&'t str> {
    if now.len() <= before.len() || now.ends_with('\u{fffd}') {
        return None;
    }
    if let Some(added) = now.strip_prefix(before) {
        return Some(added);
    }
    let shared: usize = before
        .chars()
        .zip(now.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    Some(&now[shared..])
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

    #[test]
    fn new_text_is_cut_at_characters_even_when_the_start_was_rewritten() {
        assert_eq!(new_text("ab", "abc"), Some("c"));
        assert_eq!(new_text("ab", "ab\u{fffd}"), None);
        assert_eq!(new_text("abc", "ab"), None);
        // "a '" became "a'": byte 3 of "a'éé" is inside an "é"; the delta starts where they differ.
        assert_eq!(new_text("a '", "a'éé"), Some("'éé"));
        assert_eq!(new_text("é", "eée"), Some("eée"));
    }

    fn stream_all(tokenizer: &tokenizers::Tokenizer, ids: &[u32]) -> (Vec<String>, String) {
        let mut stream = TextStream::new(tokenizer);
        let deltas = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
        (deltas, stream.text().unwrap())
    }

    #[test]
    fn a_decoder_that_rewrites_earlier_text_does_not_split_a_character() {
        // A real tokenizers decoder chain whose output for "a" changes once "b" follows: "ab" becomes
        // "é". Slicing the new text at the old length (1 byte) cut the "é" in half and panicked.
        let json = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [{"type": "Fuse"},
                {"type": "Replace", "pattern": {"String": "ab"}, "content": "é"}]},
            "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "c": 2, "[UNK]": 3}, "unk_token": "[UNK]"}}"#;
        let tokenizer: tokenizers::Tokenizer = json.parse().unwrap();
        let (deltas, text) = stream_all(&tokenizer, &[0, 1, 2]);
        assert_eq!(text, "éc");
        // What was shown stays shown; the rewritten part follows, and nothing is lost.
        assert_eq!(deltas, ["a", "é", "c"]);
    }

    #[test]
    fn streamed_pieces_add_up_to_the_decoded_text() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/smollm2/tokenizer.json");
        let tokenizer = crate::engine::tokenizer::load_tokenizer_json(&path).unwrap();
        let text = "Déjà vu: 🙂🎉 — naïve café, 東京\n<|im_end|>";
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        let (deltas, decoded) = stream_all(&tokenizer, &ids);
        assert_eq!(decoded, text);
        assert_eq!(deltas.concat(), text);
        // Bytes of an emoji split over tokens are held back until the character is whole.
        assert!(deltas.iter().all(|d| !d.contains('\u{fffd}')), "{deltas:?}");
        assert!(deltas.iter().any(String::is_empty), "{deltas:?}");
    }
}
