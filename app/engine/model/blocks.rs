//! The decoder's building blocks: RMSNorm, rotary embeddings, grouped-query attention, the gated
//! MLP and the pre-norm residual layer that combines them. The CPU kernels take over where a step is
//! trained on the CPU; the composed ops here are their reference and run everywhere else.

use candle_core::{DType, Module, Tensor};

use super::{cpu_attention, cpu_ops, ops, LoraLinear};
use crate::engine::arch::Activation;

#[derive(Debug, Clone)]
pub(super) struct RmsNorm {
    /// Effective scale: `w`, or `1 + w` for Gemma (folded in at load).
    pub(super) weight: Tensor,
    pub(super) eps: f64,
}

impl RmsNorm {
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// cos and sin for the positions of one forward pass, each `(t, head_dim / 2)`.
#[derive(Clone)]
pub(super) struct RopeAngles {
    pub(super) cos: Tensor,
    pub(super) sin: Tensor,
}

impl RopeAngles {
    pub(super) fn new(
        inv_freq: &Tensor,
        start: usize,
        len: usize,
        dtype: DType,
    ) -> candle_core::Result<Self> {
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

pub(super) struct Attention {
    pub(super) q_proj: LoraLinear,
    pub(super) k_proj: LoraLinear,
    pub(super) v_proj: LoraLinear,
    pub(super) o_proj: LoraLinear,
    pub(super) q_norm: Option<RmsNorm>,
    pub(super) k_norm: Option<RmsNorm>,
    pub(super) core: AttentionCore,
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
pub(super) struct AttentionCore {
    pub(super) num_heads: usize,
    pub(super) num_kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) scale: f64,
    pub(super) softcap: Option<f64>,
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

pub(super) struct Mlp {
    pub(super) gate_proj: LoraLinear,
    pub(super) up_proj: LoraLinear,
    pub(super) down_proj: LoraLinear,
    pub(super) activation: Activation,
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

pub(super) struct Layer {
    pub(super) input_norm: RmsNorm,
    pub(super) attn: Attention,
    /// Gemma 3 only: norm of the attention output before the residual add.
    pub(super) post_attn_norm: Option<RmsNorm>,
    pub(super) pre_mlp_norm: RmsNorm,
    pub(super) mlp: Mlp,
    /// Gemma 3 only: norm of the MLP output before the residual add.
    pub(super) post_mlp_norm: Option<RmsNorm>,
    pub(super) sliding: bool,
}

impl Layer {
    pub(super) fn linears(&self) -> [&LoraLinear; 7] {
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
    pub(super) fn forward(
        &self,
        x: &Tensor,
        bt: (usize, usize),
        rope: &RopeAngles,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> candle_core::Result<Tensor> {
        let h = self
            .attn
            .forward(&self.input_norm.forward(x)?, bt, rope, mask, cache)?;
        self.finish(x, h)
    }

    /// The rest of the layer once attention has produced `h` for the rows `x`: the residual add, the
    /// MLP and its residual add (batched decoding computes attention its own way, then joins here).
    pub(super) fn finish(&self, x: &Tensor, mut h: Tensor) -> candle_core::Result<Tensor> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::ops::probed_gradients;
    use candle_core::{Device, Var};

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
        let g1 = probed_gradients(&composed, &dy);
        let g2 = probed_gradients(&kernel, &dy);
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
