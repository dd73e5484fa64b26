//! One decoder for the Llama family (llama, mistral, qwen2, qwen3, gemma3), switched by `Arch`,
//! written to be trained: every op is differentiable and every projection is a named `LoraLinear`.
//!
//! Faithful to transformers' modeling files: pre-norm residual blocks, rotate-half rope, grouped-query
//! attention, SwiGLU/GeGLU MLP; Gemma 3 adds q/k norms, sandwich norms, scaled embeddings and
//! sliding-window layers with their own rope base.

mod cpu_attention;
mod cpu_ops;
pub mod linear;
pub mod lora;
mod lora_op;
pub mod ops;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Tensor, TensorId, Var};

pub use linear::LoraLinear;
pub use lora::{DropoutKey, LoraAdapter, LoraConfig};

use super::arch::{Activation, Arch, Family, Rope};
use super::error::Result;
use super::weights::Weights;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// The dtype the frozen weights are held and computed in (f32 on CPU; bf16 on CUDA).
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

#[derive(Debug, Clone)]
struct RmsNorm {
    /// Effective scale: `w`, or `1 + w` for Gemma (folded in at load).
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// cos and sin for the positions of one forward pass, each `(t, head_dim / 2)`.
#[derive(Clone)]
struct RopeAngles {
    cos: Tensor,
    sin: Tensor,
}

impl RopeAngles {
    fn new(inv_freq: &Tensor, start: usize, len: usize, dtype: DType) -> candle_core::Result<Self> {
        let device = inv_freq.device();
        let positions = Tensor::arange(start as u32, (start + len) as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((len, 1))?;
        let freqs = positions.broadcast_mul(&inv_freq.unsqueeze(0)?)?;
        Ok(RopeAngles {
            cos: freqs.cos()?.to_dtype(dtype)?.contiguous()?,
            sin: freqs.sin()?.to_dtype(dtype)?.contiguous()?,
        })
    }

    /// `x·cos + rotate_half(x)·sin` on `(b, heads, t, head_dim)`.
    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::rope(x, &self.cos, &self.sin)
    }
}

struct Attention {
    q_proj: LoraLinear,
    k_proj: LoraLinear,
    v_proj: LoraLinear,
    o_proj: LoraLinear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    core: AttentionCore,
}

impl Attention {
    /// `x` is `(b·t, hidden)`: the decoder keeps its hidden states flat, so that no reshape (a node
    /// of the graph, with a gradient buffer of its own in the backward pass) sits around every
    /// projection. Returns `(b·t, hidden)`.
    fn forward(
        &self,
        x: &Tensor,
        (b, t): (usize, usize),
        rope: &RopeAngles,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> candle_core::Result<Tensor> {
        let core = &self.core;
        let (q, k, v) = (
            self.q_proj.forward(x)?,
            self.k_proj.forward(x)?,
            self.v_proj.forward(x)?,
        );
        let tracked = q.track_op() || k.track_op() || v.track_op();
        if cache.is_none() && tracked && cpu_ops::applies(&q) && self.q_norm.is_none() {
            let y = cpu_attention::attention(&q, &k, &v, (b, t), core.heads(), rope, mask)?;
            return self.o_proj.forward(&y);
        }
        let heads = |y: Tensor, n: usize, norm: &Option<RmsNorm>| {
            let y = y.reshape((b, t, n, core.head_dim))?;
            match norm {
                Some(norm) => norm.forward(&y),
                None => Ok(y),
            }
        };
        let q = heads(q, core.num_heads, &self.q_norm)?;
        let k = heads(k, core.num_kv_heads, &self.k_norm)?;
        let v = heads(v, core.num_kv_heads, &None)?;
        let y = match cache {
            None if tracked && cpu_ops::applies(&q) => {
                cpu_attention::attention(&q, &k, &v, (b, t), core.heads(), rope, mask)?
            }
            cache => core
                .forward(&q, &k, &v, rope, mask, cache)?
                .reshape((b * t, core.num_heads * core.head_dim))?,
        };
        self.o_proj.forward(&y)
    }
}

/// Scaled dot-product attention over projected heads (no parameters), as composed tensor ops; training
/// on the CPU uses [`cpu_attention`], which computes the same function.
#[derive(Clone, Copy)]
struct AttentionCore {
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
}

impl AttentionCore {
    /// `q (b, t, heads, d)`, `k`/`v (b, t, kv_heads, d)` → `(b, t, heads · d)`.
    fn forward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rope: &RopeAngles,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _, _) = q.dims4()?;
        let q = rope.apply(&q.transpose(1, 2)?.contiguous()?)?;
        let mut k = rope.apply(&k.transpose(1, 2)?.contiguous()?)?;
        let mut v = v.transpose(1, 2)?.contiguous()?;
        if let Some(cache) = cache {
            if let Some((k_prev, v_prev)) = cache.as_ref() {
                k = Tensor::cat(&[k_prev, &k], 2)?;
                v = Tensor::cat(&[v_prev, &v], 2)?;
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let groups = self.num_heads / self.num_kv_heads;
        let k = repeat_kv(&k, groups)?;
        let v = repeat_kv(&v, groups)?;
        // Scaling q (t × head_dim) is cheaper than scaling the scores (t × t).
        let mut scores = (q * self.scale)?.matmul(&k.t()?)?;
        if let Some(cap) = self.softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let probs =
            ops::masked_softmax(&scores.to_dtype(DType::F32)?, mask)?.to_dtype(v.dtype())?;
        let y = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?;
        y.reshape((b, t, self.num_heads * self.head_dim))
    }

    fn heads(&self) -> cpu_attention::Heads {
        cpu_attention::Heads {
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            scale: self.scale as f32,
            softcap: self.softcap.map(|c| c as f32),
        }
    }
}

/// Grouped-query attention: each key/value head serves `groups` query heads.
fn repeat_kv(x: &Tensor, groups: usize) -> candle_core::Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, kv, groups, t, d))?
        .reshape((b, kv * groups, t, d))
}

struct Mlp {
    gate_proj: LoraLinear,
    up_proj: LoraLinear,
    down_proj: LoraLinear,
    activation: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = self.gate_proj.forward(x)?;
        if gate.track_op() && cpu_ops::applies(&gate) {
            let gelu = self.activation == Activation::GeluTanh;
            let up = self.up_proj.forward(x)?;
            return self.down_proj.forward(&cpu_ops::gated(&gate, &up, gelu)?);
        }
        let gate = match self.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            // candle's `gelu` is the tanh approximation, as gelu_pytorch_tanh.
            Activation::GeluTanh => gate.gelu()?,
        };
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    /// Gemma 3 only: norm of the attention output before the residual add.
    post_attn_norm: Option<RmsNorm>,
    pre_mlp_norm: RmsNorm,
    mlp: Mlp,
    /// Gemma 3 only: norm of the MLP output before the residual add.
    post_mlp_norm: Option<RmsNorm>,
    sliding: bool,
}

impl Layer {
    fn linears(&self) -> [&LoraLinear; 7] {
        [
            &self.attn.q_proj,
            &self.attn.k_proj,
            &self.attn.v_proj,
            &self.attn.o_proj,
            &self.mlp.gate_proj,
            &self.mlp.up_proj,
            &self.mlp.down_proj,
        ]
    }

    /// `x` is `(b·t, hidden)`, as in [`Attention::forward`].
    fn forward(
        &self,
        x: &Tensor,
        bt: (usize, usize),
        rope: &RopeAngles,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> candle_core::Result<Tensor> {
        let mut h = self
            .attn
            .forward(&self.input_norm.forward(x)?, bt, rope, mask, cache)?;
        if let Some(norm) = &self.post_attn_norm {
            h = norm.forward(&h)?;
        }
        let x = (x + h)?;
        let mut h = self.mlp.forward(&self.pre_mlp_norm.forward(&x)?)?;
        if let Some(norm) = &self.post_mlp_norm {
            h = norm.forward(&h)?;
        }
        x + h
    }
}

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

/// Gradient checkpointing: each decoder layer keeps only its input during the forward pass and runs
/// again in the backward pass to get its activations, trading one more forward for most of the memory.
struct Checkpointing {
    /// A zero that the first layer's input is added to, so that it is part of the graph and its
    /// checkpoint's backward runs.
    anchor: Var,
    /// Gradients of the adapters, produced inside the checkpoints' backward passes (which only hand
    /// the input gradient back to autograd), by variable.
    grads: Arc<Mutex<HashMap<TensorId, Tensor>>>,
}

impl Model {
    pub fn load(arch: &Arch, weights: &Weights, options: &LoadOptions) -> Result<Model> {
        let loader = Loader {
            weights,
            options,
            arch,
            prefix: module_prefix(weights),
        };
        let layers = (0..arch.num_layers)
            .map(|i| loader.layer(i).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let (h, vocab) = (arch.hidden_size, arch.vocab_size);
        let embed = loader.tensor(
            &format!("{}embed_tokens.weight", loader.prefix),
            &[vocab, h],
        )?;
        let lm_head = if arch.tie_word_embeddings {
            LoraLinear::new("lm_head".into(), embed.clone(), None)
        } else {
            loader.linear(&loader.lm_head_path(), h, vocab, false)?
        };
        let inv = |rope: &Rope| Tensor::new(rope.inv_freq(arch.head_dim), &options.device);
        Ok(Model {
            arch: arch.clone(),
            norm: loader.norm(&format!("{}norm", loader.prefix), h)?,
            embed,
            layers,
            lm_head,
            inv_freq: inv(&arch.rope)?,
            local_inv_freq: arch.local_rope.as_ref().map(inv).transpose()?,
            options: options.clone(),
            dropout_key: DropoutKey::default(),
            checkpoint: None,
        })
    }

    /// Turn gradient checkpointing on or off (off by default).
    pub fn set_gradient_checkpointing(&mut self, on: bool) -> candle_core::Result<()> {
        self.checkpoint = match on {
            true => Some(Checkpointing {
                anchor: Var::zeros((), self.options.dtype, &self.options.device)?,
                grads: Arc::default(),
            }),
            false => None,
        };
        Ok(())
    }

    /// The gradient of `var` that checkpointed layers produced since the last call, if any.
    pub fn take_checkpoint_grad(&self, var: &Var) -> Option<Tensor> {
        let cp = self.checkpoint.as_ref()?;
        let mut grads = cp.grads.lock().unwrap_or_else(|e| e.into_inner());
        grads.remove(&var.as_tensor().id())
    }

    /// Every projection of the decoder blocks, in layer order (q, k, v, o, gate, up, down).
    pub fn linears(&self) -> impl Iterator<Item = &LoraLinear> {
        self.layers.iter().flat_map(|l| l.linears())
    }

    /// Mutable access to the projections; fails while a layer is still shared with a computation
    /// graph of a checkpointed forward pass (drop the loss and its gradients first).
    fn linears_mut(&mut self) -> candle_core::Result<Vec<&mut LoraLinear>> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in self.layers.iter_mut() {
            match Arc::get_mut(layer) {
                Some(l) => layers.push(l),
                None => candle_core::bail!("the model is still in use by a computation graph"),
            }
        }
        Ok(layers
            .into_iter()
            .flat_map(|l| {
                [
                    &mut l.attn.q_proj,
                    &mut l.attn.k_proj,
                    &mut l.attn.v_proj,
                    &mut l.attn.o_proj,
                    &mut l.mlp.gate_proj,
                    &mut l.mlp.up_proj,
                    &mut l.mlp.down_proj,
                ]
            })
            .collect())
    }

    /// Attach fresh adapters (A random, B zero) to every targeted module; returns how many.
    pub fn attach_lora(&mut self, config: &LoraConfig, seed: u64) -> candle_core::Result<usize> {
        let key = self.dropout_key.clone();
        let device = self.options.device.clone();
        let mut count = 0;
        for (index, linear) in self.linears_mut()?.into_iter().enumerate() {
            linear.adapter = None;
            if config.targets_path(&linear.path) {
                let (inp, out) = (linear.in_features(), linear.out_features());
                linear.adapter = Some(LoraAdapter::init(
                    config,
                    inp,
                    out,
                    index as u64,
                    seed,
                    key.clone(),
                    &device,
                )?);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Attach adapters with given weights: `weights(path)` returns (A, B) for a module path, or None
    /// when that module has no adapter. A must be `r × in` and B `out × r`.
    pub fn attach_lora_weights(
        &mut self,
        config: &LoraConfig,
        mut weights: impl FnMut(&str) -> Option<(Tensor, Tensor)>,
    ) -> candle_core::Result<usize> {
        let key = self.dropout_key.clone();
        let device = self.options.device.clone();
        let mut count = 0;
        for (index, linear) in self.linears_mut()?.into_iter().enumerate() {
            linear.adapter = match weights(&linear.path) {
                Some((a, b)) => {
                    let (inp, out, r) = (linear.in_features(), linear.out_features(), config.r);
                    if a.dims() != [r, inp] || b.dims() != [out, r] {
                        candle_core::bail!(
                            "{}: lora_A is {:?} and lora_B is {:?}, but this layer needs {:?} and {:?}",
                            linear.path, a.dims(), b.dims(), [r, inp], [out, r]
                        );
                    }
                    count += 1;
                    let (a, b) = (a.to_device(&device)?, b.to_device(&device)?);
                    Some(LoraAdapter::from_weights(
                        config,
                        &a,
                        &b,
                        index as u64,
                        key.clone(),
                    )?)
                }
                None => None,
            };
        }
        Ok(count)
    }

    /// The modules that carry adapters, with their module paths.
    pub fn adapters(&self) -> impl Iterator<Item = (&str, &LoraAdapter)> {
        self.linears()
            .filter_map(|l| l.adapter.as_ref().map(|a| (l.path.as_str(), a)))
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
                Some(cp) if cache.is_none() => {
                    if i == 0 {
                        x = x.broadcast_add(cp.anchor.as_tensor())?;
                    }
                    checkpointed(layer, &x, (b, t), rope, mask, &cp.grads)?
                }
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

/// Run `layer` keeping only its input; the backward pass runs it again on that input to get the input
/// gradient (handed to autograd) and the adapters' gradients (added to `grads`).
fn checkpointed(
    layer: &Arc<Layer>,
    x: &Tensor,
    bt: (usize, usize),
    rope: &RopeAngles,
    mask: Option<&Tensor>,
    grads: &Arc<Mutex<HashMap<TensorId, Tensor>>>,
) -> candle_core::Result<Tensor> {
    let (fwd_layer, fwd_rope, fwd_mask) = (layer.clone(), rope.clone(), mask.cloned());
    let (bwd_layer, bwd_rope, bwd_mask, grads) =
        (layer.clone(), rope.clone(), mask.cloned(), grads.clone());
    ops::checkpoint(
        x,
        move |x| fwd_layer.forward(x, bt, &fwd_rope, fwd_mask.as_ref(), None),
        move |x, dy| {
            let input = Var::from_tensor(x)?;
            let y = bwd_layer.forward(input.as_tensor(), bt, &bwd_rope, bwd_mask.as_ref(), None)?;
            let store = (y * dy)?.sum_all()?.backward()?;
            let mut grads = grads.lock().unwrap_or_else(|e| e.into_inner());
            for linear in bwd_layer.linears() {
                let Some(adapter) = &linear.adapter else {
                    continue;
                };
                for var in [&adapter.a, &adapter.b] {
                    if let Some(g) = store.get(var.as_tensor()) {
                        let id = var.as_tensor().id();
                        let sum = match grads.remove(&id) {
                            Some(acc) => (acc + g)?,
                            None => g.clone(),
                        };
                        grads.insert(id, sum);
                    }
                }
            }
            store
                .get(input.as_tensor())
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("checkpoint: no input gradient".into()))
        },
    )
}

/// Where the decoder's modules live: `model.` normally; multimodal Gemma 3 checkpoints nest the
/// language model (`model.language_model.` in transformers 5, `language_model.model.` before).
fn module_prefix(weights: &Weights) -> String {
    ["model.", "model.language_model.", "language_model.model."]
        .into_iter()
        .find(|p| weights.contains(&format!("{p}embed_tokens.weight")))
        .unwrap_or("model.")
        .to_string()
}

struct Loader<'a> {
    weights: &'a Weights,
    options: &'a LoadOptions,
    arch: &'a Arch,
    prefix: String,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.weights
            .get(name, shape, &self.options.device, self.options.dtype)
    }

    fn lm_head_path(&self) -> String {
        match self.prefix.as_str() {
            "language_model.model." => "language_model.lm_head".into(),
            _ => "lm_head".into(),
        }
    }

    fn linear(&self, path: &str, inp: usize, out: usize, bias: bool) -> Result<LoraLinear> {
        let weight = self.tensor(&format!("{path}.weight"), &[out, inp])?;
        let bias = match bias {
            true => Some(self.tensor(&format!("{path}.bias"), &[out])?),
            false => None,
        };
        Ok(LoraLinear::new(path.to_string(), weight, bias))
    }

    fn norm(&self, path: &str, size: usize) -> Result<RmsNorm> {
        let mut weight = self.tensor(&format!("{path}.weight"), &[size])?;
        if self.arch.norm_plus_one {
            weight = (weight + 1.0)?;
        }
        Ok(RmsNorm {
            weight,
            eps: self.arch.rms_norm_eps,
        })
    }

    fn layer(&self, i: usize) -> Result<Layer> {
        let a = self.arch;
        let p = format!("{}layers.{i}", self.prefix);
        let (h, hd) = (a.hidden_size, a.head_dim);
        let (q_out, kv_out) = (a.num_heads * hd, a.num_kv_heads * hd);
        let attn = Attention {
            q_proj: self.linear(&format!("{p}.self_attn.q_proj"), h, q_out, a.qkv_bias)?,
            k_proj: self.linear(&format!("{p}.self_attn.k_proj"), h, kv_out, a.qkv_bias)?,
            v_proj: self.linear(&format!("{p}.self_attn.v_proj"), h, kv_out, a.qkv_bias)?,
            o_proj: self.linear(&format!("{p}.self_attn.o_proj"), q_out, h, a.o_bias)?,
            q_norm: self.optional_norm(a.qk_norm, &format!("{p}.self_attn.q_norm"), hd)?,
            k_norm: self.optional_norm(a.qk_norm, &format!("{p}.self_attn.k_norm"), hd)?,
            core: AttentionCore {
                num_heads: a.num_heads,
                num_kv_heads: a.num_kv_heads,
                head_dim: hd,
                scale: a.attention_scale,
                softcap: a.attn_logit_softcap,
            },
        };
        let inter = a.intermediate_size;
        let mlp = Mlp {
            gate_proj: self.linear(&format!("{p}.mlp.gate_proj"), h, inter, a.mlp_bias)?,
            up_proj: self.linear(&format!("{p}.mlp.up_proj"), h, inter, a.mlp_bias)?,
            down_proj: self.linear(&format!("{p}.mlp.down_proj"), inter, h, a.mlp_bias)?,
            activation: a.activation,
        };
        let gemma = a.family == Family::Gemma3;
        let pre_mlp = if gemma {
            "pre_feedforward_layernorm"
        } else {
            "post_attention_layernorm"
        };
        Ok(Layer {
            input_norm: self.norm(&format!("{p}.input_layernorm"), h)?,
            attn,
            post_attn_norm: self.optional_norm(
                gemma,
                &format!("{p}.post_attention_layernorm"),
                h,
            )?,
            pre_mlp_norm: self.norm(&format!("{p}.{pre_mlp}"), h)?,
            mlp,
            post_mlp_norm: self.optional_norm(
                gemma,
                &format!("{p}.post_feedforward_layernorm"),
                h,
            )?,
            sliding: a.layer_is_sliding.get(i).copied().unwrap_or(false),
        })
    }

    fn optional_norm(&self, present: bool, path: &str, size: usize) -> Result<Option<RmsNorm>> {
        present.then(|| self.norm(path, size)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One comparison of the CPU attention kernel with autograd through the composed ops: `b`
    /// sequences of `t` positions, `kv` key/value heads each shared by `groups` query heads, head size
    /// `d`, an optional softcap, and a causal mask that also blocks keys `window` or more back. Inputs
    /// come from a seeded generator. Returns what differs, if anything.
    #[allow(clippy::too_many_arguments)]
    fn attention_mismatch(
        b: usize,
        t: usize,
        kv: usize,
        groups: usize,
        d: usize,
        softcap: Option<f64>,
        window: Option<usize>,
        seed: u64,
    ) -> Option<String> {
        use ops::max_abs_diff;
        let device = Device::Cpu;
        let heads = kv * groups;
        let inv_freq: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / 100f32.powf(2.0 * i as f32 / d as f32))
            .collect();
        let rope =
            RopeAngles::new(&Tensor::new(inv_freq, &device).unwrap(), 0, t, DType::F32).unwrap();
        let blocked = |i: usize, j: usize| j > i || window.is_some_and(|w| i - j >= w);
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..t).map(move |j| {
                    if blocked(i, j) {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, t, t), &device).unwrap();
        let core = AttentionCore {
            num_heads: heads,
            num_kv_heads: kv,
            head_dim: d,
            scale: 0.3,
            softcap,
        };
        let mut rng = crate::engine::rng::SplitMix64::new(seed);
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.unit() * 4.0 - 2.0) as f32).collect() };
        let (q0, k0, v0) = (
            values(b * t * heads * d),
            values(b * t * kv * d),
            values(b * t * kv * d),
        );
        let dy = Tensor::from_vec(values(b * t * heads * d), (b, t, heads * d), &device).unwrap();
        let var = |v: &Vec<f32>, n: usize| {
            Var::from_tensor(&Tensor::from_vec(v.clone(), (b, t, n, d), &device).unwrap()).unwrap()
        };
        let (q1, k1, v1) = (var(&q0, heads), var(&k0, kv), var(&v0, kv));
        let (q2, k2, v2) = (var(&q0, heads), var(&k0, kv), var(&v0, kv));
        let composed = core
            .forward(
                q1.as_tensor(),
                k1.as_tensor(),
                v1.as_tensor(),
                &rope,
                Some(&mask),
                None,
            )
            .unwrap();
        let kernel = cpu_attention::attention(
            q2.as_tensor(),
            k2.as_tensor(),
            v2.as_tensor(),
            (b, t),
            core.heads(),
            &rope,
            Some(&mask),
        )
        .unwrap()
        .reshape(composed.dims())
        .unwrap();
        let forward = max_abs_diff(&composed, &kernel);
        if forward >= 1e-5 {
            return Some(format!("the output differs by {forward}"));
        }
        let g1 = (composed * &dy)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (kernel * &dy)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, x1, x2) in [("q", &q1, &q2), ("k", &k1, &k2), ("v", &v1, &v2)] {
            let diff = max_abs_diff(
                g1.get(x1.as_tensor()).unwrap(),
                g2.get(x2.as_tensor()).unwrap(),
            );
            if diff >= 1e-4 {
                return Some(format!("d{name} differs by {diff}"));
            }
        }
        None
    }

    /// The CPU attention kernel gives the output and the q, k, v gradients that autograd gives through
    /// the composed ops: grouped heads and a causal mask, with and without a softcap.
    #[test]
    fn cpu_attention_matches_the_composed_ops() {
        for softcap in [None, Some(2.0)] {
            let mismatch = attention_mismatch(2, 5, 2, 2, 8, softcap, None, 1);
            assert_eq!(mismatch, None, "softcap {softcap:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

        /// The same over shapes: one to three sequences, one to twelve positions, grouped or not,
        /// sliding windows, softcaps.
        #[test]
        fn cpu_attention_matches_over_shapes(
            b in 1usize..4,
            t in 1usize..13,
            kv in 1usize..4,
            groups in 1usize..4,
            half_d in 1usize..5,
            softcap in proptest::option::of(1.0f64..5.0),
            window in proptest::option::of(1usize..6),
            seed in 0u64..1000,
        ) {
            let mismatch = attention_mismatch(b, t, kv, groups, 2 * half_d, softcap, window, seed);
            proptest::prop_assert_eq!(mismatch, None);
        }
    }
}
