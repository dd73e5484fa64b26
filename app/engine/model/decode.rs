//! Batched incremental decoding on the CPU: one new token for each of several sequences, each at its
//! own position, with its own key/value cache.
//!
//! Decoding one token costs a pass of every weight through the processor; for a single sequence that
//! is a matrix-vector product per projection, bound by memory bandwidth. Stacking the sequences' new
//! tokens as rows makes it one matrix product per projection that all of them share. Only attention is
//! per sequence, since each attends to its own past; it runs here as a few loops over that sequence's
//! cache (already rotated, stored as rows), not as a dozen tensor ops per sequence and layer, and the
//! cache grows in place instead of being concatenated anew every step.

use candle_core::{DType, Device, Module, Result, Tensor};
use rayon::prelude::*;

use super::blocks::{Layer, RmsNorm};
use super::vector::{exp, max};
use super::{KvCache, Model};

/// Keys (rope applied) and values of one sequence, per layer, as `(len, kv_heads · head_dim)` rows.
pub struct SeqCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
}

impl SeqCache {
    /// Positions cached: the position the next token will take.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Model {
    /// Whether [`Model::decode_step`] serves this model (f32 on the CPU); other devices generate one
    /// sequence at a time.
    pub fn decodes_in_batches(&self) -> bool {
        matches!(self.device(), Device::Cpu) && self.dtype() == DType::F32
    }

    /// Run a whole prompt; returns the logits of its last position, `(vocab)`, and the cache that
    /// decoding continues from.
    pub fn prefill(&self, prompt: &[u32]) -> Result<(Tensor, SeqCache)> {
        let mut both = self.prefill_many(&[prompt])?;
        let (logits, cache) = both.pop().expect("one prompt in, one out");
        Ok((logits.squeeze(0)?, cache))
    }

    /// [`Model::prefill`] for several prompts in one forward pass: the prompts are padded at the end
    /// to the longest, which the causal mask keeps every real token from seeing, so each gets the
    /// logits and cache it gets alone. Returns `(1, vocab)` logits and a cache per prompt.
    pub fn prefill_many(&self, prompts: &[&[u32]]) -> Result<Vec<(Tensor, SeqCache)>> {
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        if longest == 0 || prompts.iter().any(|p| p.is_empty()) {
            candle_core::bail!("prefill: an empty prompt");
        }
        let mut ids = Vec::with_capacity(prompts.len() * longest);
        for p in prompts {
            ids.extend_from_slice(p);
            ids.resize(ids.len() + longest - p.len(), 0);
        }
        let ids = Tensor::from_vec(ids, (prompts.len(), longest), self.device())?;
        let mut cache = KvCache::new(self);
        let hidden = self.forward_hidden(&ids, 0, Some(&mut cache))?;
        let mut out = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let last = hidden.get(i)?.narrow(0, p.len() - 1, 1)?;
            let logits = self.logits(&last)?;
            let mut keys = Vec::with_capacity(cache.layers.len());
            let mut values = Vec::with_capacity(cache.layers.len());
            for layer in &cache.layers {
                let Some((k, v)) = layer else {
                    candle_core::bail!("prefill: a layer cached nothing");
                };
                // (b, kv, t, d) → this prompt's (len, kv · d) rows.
                let rows = |x: &Tensor| -> Result<Vec<f32>> {
                    x.get(i)?
                        .narrow(1, 0, p.len())?
                        .transpose(0, 1)?
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1()
                };
                keys.push(rows(k)?);
                values.push(rows(v)?);
            }
            let seq = SeqCache {
                keys,
                values,
                len: p.len(),
            };
            out.push((logits, seq));
        }
        Ok(out)
    }

    /// Logits `(n, vocab)` for one new token per sequence, `tokens[i]` continuing `caches[i]`, which
    /// grow by one position each. Sequences may be at different positions.
    pub fn decode_step(&self, tokens: &[u32], caches: &mut [SeqCache]) -> Result<Tensor> {
        if tokens.len() != caches.len() || tokens.is_empty() {
            candle_core::bail!(
                "decode step: {} tokens for {} sequences",
                tokens.len(),
                caches.len()
            );
        }
        if !self.decodes_in_batches() {
            candle_core::bail!("decode step: batched decoding runs on the CPU in f32");
        }
        let mut x = self
            .embed
            .index_select(&Tensor::new(tokens, self.device())?, 0)?;
        if let Some(scale) = self.arch.embedding_scale {
            x = (x * scale)?;
        }
        let global: Vec<f32> = self.inv_freq.to_vec1()?;
        let local: Option<Vec<f32>> = self
            .local_inv_freq
            .as_ref()
            .map(|f| f.to_vec1())
            .transpose()?;
        for (index, layer) in self.layers.iter().enumerate() {
            let (inv_freq, window) = if layer.sliding {
                (local.as_ref().unwrap_or(&global), self.arch.sliding_window)
            } else {
                (&global, None)
            };
            let step = LayerStep {
                layer,
                index,
                inv_freq,
                window,
            };
            x = step.run(&x, caches)?;
        }
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        self.logits(&self.norm.forward(&x)?)
    }
}

/// One layer of a decode step.
struct LayerStep<'a> {
    layer: &'a Layer,
    index: usize,
    inv_freq: &'a [f32],
    /// Sliding-window layers see only this many positions, their own included.
    window: Option<usize>,
}

impl LayerStep<'_> {
    /// `x` is `(n, hidden)`, one row per sequence.
    fn run(&self, x: &Tensor, caches: &mut [SeqCache]) -> Result<Tensor> {
        let attn = &self.layer.attn;
        let core = attn.core;
        let n = x.dim(0)?;
        let h = self.layer.input_norm.forward(x)?;
        let heads = |y: Tensor, count: usize, norm: &Option<RmsNorm>| -> Result<Vec<f32>> {
            let y = match norm {
                Some(norm) => norm.forward(&y.reshape((n, count, core.head_dim))?)?,
                None => y,
            };
            y.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
        };
        let q = heads(attn.q_proj.forward(&h)?, core.num_heads, &attn.q_norm)?;
        let k = heads(attn.k_proj.forward(&h)?, core.num_kv_heads, &attn.k_norm)?;
        let v = heads(attn.v_proj.forward(&h)?, core.num_kv_heads, &None)?;
        let angles: Vec<Angles> = caches
            .iter()
            .map(|c| Angles::at(self.inv_freq, c.len))
            .collect();
        let kv_width = core.num_kv_heads * core.head_dim;
        for (i, cache) in caches.iter_mut().enumerate() {
            let mut key = k[i * kv_width..(i + 1) * kv_width].to_vec();
            for head in key.chunks_exact_mut(core.head_dim) {
                angles[i].rotate(head);
            }
            cache.keys[self.index].extend_from_slice(&key);
            cache.values[self.index].extend_from_slice(&v[i * kv_width..(i + 1) * kv_width]);
        }
        let d = core.head_dim;
        let groups = core.num_heads / core.num_kv_heads;
        let mut y = vec![0f32; n * core.num_heads * d];
        let caches = &*caches;
        y.par_chunks_mut(d).enumerate().for_each(|(slot, out)| {
            let (i, head) = (slot / core.num_heads, slot % core.num_heads);
            let mut query = q[slot * d..(slot + 1) * d].to_vec();
            angles[i].rotate(&mut query);
            // Scaling the query is what the composed attention does too, before its product.
            let scale = core.scale as f32;
            query.iter_mut().for_each(|x| *x *= scale);
            let seen = Seen {
                keys: &caches[i].keys[self.index],
                values: &caches[i].values[self.index],
                kv_width,
                offset: (head / groups) * d,
                d,
            };
            let pos = caches[i].len;
            let first = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            seen.attend(&query, first..pos + 1, core.softcap.map(|c| c as f32), out);
        });
        let y = Tensor::from_vec(y, (n, core.num_heads * d), x.device())?.to_dtype(x.dtype())?;
        self.layer.finish(x, attn.o_proj.forward(&y)?)
    }
}

/// cos and sin of one position, `head_dim / 2` each, computed as [`super::blocks::RopeAngles`] does.
struct Angles {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Angles {
    fn at(inv_freq: &[f32], pos: usize) -> Angles {
        let freqs: Vec<f32> = inv_freq.iter().map(|f| pos as f32 * f).collect();
        Angles {
            cos: freqs.iter().map(|f| f.cos()).collect(),
            sin: freqs.iter().map(|f| f.sin()).collect(),
        }
    }

    /// Rotate-half rope on one head: `x·cos + rotate_half(x)·sin`.
    fn rotate(&self, x: &mut [f32]) {
        let half = x.len() / 2;
        let (lo, hi) = x.split_at_mut(half);
        for j in 0..half {
            let (a, b) = (lo[j], hi[j]);
            lo[j] = a * self.cos[j] - b * self.sin[j];
            hi[j] = b * self.cos[j] + a * self.sin[j];
        }
    }
}

/// One key/value head of one sequence's cache.
struct Seen<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    kv_width: usize,
    offset: usize,
    d: usize,
}

impl Seen<'_> {
    fn row<'b>(&self, x: &'b [f32], j: usize) -> &'b [f32] {
        let start = j * self.kv_width + self.offset;
        &x[start..start + self.d]
    }

    /// `out = softmax(q·Kᵀ) · V` over the positions in `range`.
    fn attend(
        &self,
        query: &[f32],
        range: std::ops::Range<usize>,
        softcap: Option<f32>,
        out: &mut [f32],
    ) {
        let mut scores: Vec<f32> = range
            .clone()
            .map(|j| {
                let s: f32 = query
                    .iter()
                    .zip(self.row(self.keys, j))
                    .map(|(a, b)| a * b)
                    .sum();
                match softcap {
                    Some(c) => c * (s / c).tanh(),
                    None => s,
                }
            })
            .collect();
        let top = max(&scores);
        let mut total = 0.0;
        for s in scores.iter_mut() {
            *s = exp(*s - top);
            total += *s;
        }
        out.fill(0.0);
        for (p, j) in scores.iter().zip(range) {
            let weight = p / total;
            for (o, v) in out.iter_mut().zip(self.row(self.values, j)) {
                *o += weight * v;
            }
        }
    }
}
