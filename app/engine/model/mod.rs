//! One decoder for the Llama family (llama, mistral, qwen2, qwen3, gemma3), switched by `Arch`,
//! written to be trained: every op is differentiable and every projection is a named `LoraLinear`.
//!
//! Faithful to transformers' modeling files: pre-norm residual blocks, rotate-half rope, grouped-query
//! attention, SwiGLU/GeGLU MLP; Gemma 3 adds q/k norms, sandwich norms, scaled embeddings and
//! sliding-window layers with their own rope base.
//!
//! The weight loader, LoRA attachment and gradient checkpointing live in their own modules.

mod attach;
mod blocks;
mod checkpoint;
mod cpu_attention;
mod cpu_few_rows;
mod cpu_lm_loss;
mod cpu_ops;
mod decode;
pub mod frozen;
pub mod linear;
mod loader;
pub mod lora;
mod lora_op;
pub mod ops;
mod vector;

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};

pub use attach::MergedBase;
pub use decode::SeqCache;
pub use frozen::Frozen;
pub use linear::LoraLinear;
pub use loader::{BaseFormat, LoadOptions};
pub use lora::{DropoutKey, LoraAdapter, LoraConfig};

use super::arch::Arch;
use blocks::{Layer, RmsNorm, RopeAngles};
use checkpoint::Checkpointing;

/// Keys and values of the tokens seen so far, per layer, for incremental generation.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(model: &Model) -> Self {
        KvCache {
            layers: vec![None; model.layers.len()],
        }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dims()[2],
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Model {
    pub arch: Arch,
    embed: Tensor,
    /// Shared so that a checkpointed layer can run again in the backward pass.
    layers: Vec<Arc<Layer>>,
    norm: RmsNorm,
    lm_head: LoraLinear,
    inv_freq: Tensor,
    local_inv_freq: Option<Tensor>,
    options: LoadOptions,
    dropout_key: DropoutKey,
    checkpoint: Option<Checkpointing>,
}

impl Model {
    /// Every projection of the decoder blocks, in layer order (q, k, v, o, gate, up, down).
    pub fn linears(&self) -> impl Iterator<Item = &LoraLinear> {
        self.layers.iter().flat_map(|l| l.linears())
    }

    /// The output projection (the embedding matrix when they are tied); always dense.
    pub fn lm_head(&self) -> &LoraLinear {
        &self.lm_head
    }

    /// Set by the trainer before each micro-batch (`Some`), cleared for evaluation (`None`).
    pub fn dropout_key(&self) -> &DropoutKey {
        &self.dropout_key
    }

    pub fn device(&self) -> &Device {
        &self.options.device
    }

    pub fn dtype(&self) -> DType {
        self.options.dtype
    }

    /// Hidden states after the final norm, `(b, t, hidden)`, for token ids `(b, t)` at positions
    /// `pos..pos+t`. With a cache, keys/values are appended to it.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        pos: usize,
        mut cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        // `(b·t, hidden)` through the layers; see Attention::forward.
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?;
        if let Some(scale) = self.arch.embedding_scale {
            x = (x * scale)?;
        }
        let dtype = self.options.dtype;
        let global = RopeAngles::new(&self.inv_freq, pos, t, dtype)?;
        let local = match &self.local_inv_freq {
            Some(f) => Some(RopeAngles::new(f, pos, t, dtype)?),
            None => None,
        };
        let full_mask = self.mask(t, pos, None)?;
        let sliding_mask = match self.arch.sliding_window {
            Some(w) => self.mask(t, pos, Some(w))?,
            None => None,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let (rope, mask) = if layer.sliding {
                (local.as_ref().unwrap_or(&global), sliding_mask.as_ref())
            } else {
                (&global, full_mask.as_ref())
            };
            x = match &self.checkpoint {
                Some(cp) if cache.is_none() => cp.forward(i, layer, x, (b, t), rope, mask)?,
                _ => {
                    let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
                    layer.forward(&x, (b, t), rope, mask, layer_cache)?
                }
            };
        }
        self.norm
            .forward(&x)?
            .reshape((b, t, self.arch.hidden_size))
    }

    /// Logits `(b, t, vocab)` in f32.
    pub fn forward(
        &self,
        ids: &Tensor,
        pos: usize,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.forward_hidden(ids, pos, cache)?;
        self.logits(&hidden)
    }

    /// Logits of the last position only, `(b, vocab)`: what generation needs, without projecting
    /// every prompt position onto the vocabulary.
    pub fn forward_last(
        &self,
        ids: &Tensor,
        pos: usize,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.forward_hidden(ids, pos, cache)?;
        let t = hidden.dim(1)?;
        self.logits(&hidden.narrow(1, t - 1, 1)?)?.squeeze(1)
    }

    /// `−log p(target)` for each row of `hidden (n, hidden_size)` (final-norm outputs), in f32. On the
    /// CPU the output layer and the loss run as one op that never holds every row's logits
    /// ([`cpu_lm_loss`]); elsewhere the logits are computed and fed to the cross-entropy.
    pub fn next_token_nll(&self, hidden: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
        let head = &self.lm_head;
        if cpu_ops::applies(hidden)
            && head.adapter.is_none()
            && head.bias.is_none()
            && head.weight.has_cpu_f32()
        {
            let targets: Vec<u32> = targets.flatten_all()?.to_vec1()?;
            let softcap = self.arch.final_logit_softcap.map(|c| c as f32);
            return cpu_lm_loss::lm_head_nll(hidden, &head.weight, &targets, softcap);
        }
        ops::cross_entropy_rows(&self.logits(hidden)?, targets)
    }

    /// Project hidden states (any leading dimensions) onto the vocabulary, in f32.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let mut logits = self.lm_head.forward(hidden)?.to_dtype(DType::F32)?;
        if let Some(cap) = self.arch.final_logit_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(logits)
    }

    /// Additive mask `(1, 1, t, pos + t)`: -inf where a query may not see a key (future positions,
    /// or keys `window` or more positions back). None when nothing is masked.
    fn mask(
        &self,
        t: usize,
        pos: usize,
        window: Option<usize>,
    ) -> candle_core::Result<Option<Tensor>> {
        let total = pos + t;
        let blocked = |q: usize, k: usize| k > q || window.is_some_and(|w| q - k >= w);
        let any = (0..t).any(|i| (0..total).any(|k| blocked(pos + i, k)));
        if !any {
            return Ok(None);
        }
        let values: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..total).map(move |k| {
                    if blocked(pos + i, k) {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        Tensor::from_vec(values, (1, 1, t, total), &self.options.device)?
            .to_dtype(self.options.dtype)
            .map(Some)
    }
}
