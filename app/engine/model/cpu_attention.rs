//! Causal self-attention for training on the CPU, one head at a time.
//!
//! Composed from tensor ops, attention materialises `batch × heads × t × t` scores and probabilities for
//! the whole batch, keeps them for the backward pass, and walks them a dozen times. Here each (sequence,
//! head) pair works in its own `t × t` scratch, small enough to stay in cache, and the backward pass
//! recomputes the probabilities from q and k instead of keeping them. The heads run in parallel on
//! rayon's threads; the query heads that share a key/value head run together, so that their key and
//! value gradients add up without locks. Nothing is transposed: the products read q, k and v in their
//! `(batch, t, heads, head_dim)` layout through strides.
//!
//! With s the scale, q̃ = s·rope(q), k̃ = rope(k): S = q̃k̃ᵀ (softcapped: c·tanh(S/c)), P = softmax(S +
//! mask), O = P·V. Backward: dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dq̃ = dS·k̃,
//! dk̃ = dSᵀ·q̃; rope's gradient is the inverse rotation.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::vector::{exp, max, sum_of, vector_fn};

use super::cpu_ops::{cpu_f32, matmul_here, Mat};

/// The sizes and constants of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
}

/// Attention for `batch` sequences of `t` positions over `q` (`b·t × heads·d`, or the same values as
/// `(b, t, heads, d)`) and `k`, `v` (`kv_heads` of them), with an additive mask `(1, 1, t, t)` (or
/// none); returns `(b·t, heads · d)`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (batch, t): (usize, usize),
    heads: Heads,
    rope: &super::RopeAngles,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let mask = match mask {
        Some(m) => {
            if m.dims() != [1, 1, t, t] {
                candle_core::bail!("attention: a mask of {:?} for {t} positions", m.dims());
            }
            Some(m.flatten_all()?.to_vec1::<f32>()?)
        }
        None => None,
    };
    let plan = Plan {
        heads,
        batch,
        t,
        cos: rope.cos.flatten_all()?.to_vec1()?,
        sin: rope.sin.flatten_all()?.to_vec1()?,
        mask,
    };
    if plan.cos.len() != t * heads.head_dim / 2 {
        candle_core::bail!("attention: rope angles for {} values", plan.cos.len());
    }
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        AttentionOp(Arc::new(plan)),
    )
}

struct Plan {
    heads: Heads,
    batch: usize,
    t: usize,
    /// `(t, d/2)` row-major.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// `(t, t)` additive mask.
    mask: Option<Vec<f32>>,
}

/// The shape of one call: batch, positions, and the offsets of one head's rows.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    t: usize,
    heads: usize,
    kv: usize,
    d: usize,
}

impl Dims {
    fn of(plan: &Plan, q: &Shape, k: &Shape, v: &Shape) -> Result<Dims> {
        let h = &plan.heads;
        let (batch, t, d) = (plan.batch, plan.t, h.head_dim);
        let (q_len, kv_len) = (batch * t * h.num_heads * d, batch * t * h.num_kv_heads * d);
        if q.elem_count() != q_len
            || k.elem_count() != kv_len
            || v.elem_count() != kv_len
            || h.num_kv_heads == 0
            || !h.num_heads.is_multiple_of(h.num_kv_heads)
        {
            candle_core::bail!(
                "attention: shapes q {q:?}, k {k:?}, v {v:?} do not fit {batch} × {t} positions of {h:?}"
            );
        }
        Ok(Dims {
            batch,
            t,
            heads: h.num_heads,
            kv: h.num_kv_heads,
            d,
        })
    }

    /// One query head of one sequence: `t × d`, rows `heads · d` apart.
    fn q_head<'a>(&self, x: &'a [f32], b: usize, h: usize) -> Mat<'a> {
        let start = (b * self.t * self.heads + h) * self.d;
        Mat::strided(&x[start..], self.t, self.d, self.heads * self.d)
    }

    /// One key/value head of one sequence.
    fn kv_head<'a>(&self, x: &'a [f32], b: usize, h: usize) -> Mat<'a> {
        let start = (b * self.t * self.kv + h) * self.d;
        Mat::strided(&x[start..], self.t, self.d, self.kv * self.d)
    }

    fn groups(&self) -> usize {
        self.heads / self.kv
    }
}

impl Plan {
    /// Rotate every head of every position of `x` (`(b, t, n, d)`), scaled by `scale`; `inverse` rotates
    /// back (the gradient of the rotation).
    fn rope(&self, x: &[f32], dims: &Dims, n: usize, scale: f32, inverse: bool) -> Vec<f32> {
        let d = dims.d;
        let half = d / 2;
        let sign = if inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n * d)
            .zip(x.par_chunks(n * d))
            .enumerate()
            .for_each(|(row, (out, x))| {
                let pos = row % dims.t;
                let (cos, sin) = (
                    &self.cos[pos * half..][..half],
                    &self.sin[pos * half..][..half],
                );
                for (o, x) in out.chunks_mut(d).zip(x.chunks(d)) {
                    for j in 0..half {
                        let (a, b) = (x[j], x[j + half]);
                        let s = sign * sin[j];
                        o[j] = scale * (a * cos[j] - b * s);
                        o[j + half] = scale * (b * cos[j] + a * s);
                    }
                }
            });
        out
    }

    /// Scores of query head `h` against its key head into `s` (`t × t`), turned into probabilities in
    /// place. Returns the raw scores when softcapping needs them for the backward pass.
    fn probabilities(&self, s: &mut [f32], q: Mat, k: Mat, keep_raw: bool) -> Option<Vec<f32>> {
        let t = q.rows();
        matmul_here(&mut *s, q, k.t(), 1.0, false);
        let raw = (keep_raw && self.heads.softcap.is_some()).then(|| s.to_vec());
        softmax_rows(s, t, self.mask.as_deref(), self.heads.softcap);
        raw
    }
}

vector_fn! {
    /// Each row of the `t`-wide scores `s`, softcapped and masked where the model does, turned into
    /// probabilities in place.
    fn softmax_rows(s: &mut [f32], t: usize, mask: Option<&[f32]>, softcap: Option<f32>) {
        for (i, row) in s.chunks_mut(t).enumerate() {
            if let Some(cap) = softcap {
                row.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
            }
            if let Some(mask) = mask {
                row.iter_mut()
                    .zip(&mask[i * t..][..t])
                    .for_each(|(v, m)| *v += m);
            }
            let max = max(row);
            if max == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            row.iter_mut().for_each(|v| *v = exp(*v - max));
            let inv = 1.0 / sum_of(row.len(), |i| row[i]);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

struct AttentionOp(Arc<Plan>);

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let plan = &self.0;
        let dims = Dims::of(plan, q_layout.shape(), k_layout.shape(), v_layout.shape())?;
        let (q, k, v) = (
            cpu_f32(q, q_layout, "q")?,
            cpu_f32(k, k_layout, "k")?,
            cpu_f32(v, v_layout, "v")?,
        );
        let qr = plan.rope(q, &dims, dims.heads, plan.heads.scale, false);
        let kr = plan.rope(k, &dims, dims.kv, 1.0, false);
        let Dims {
            batch, t, heads, d, ..
        } = dims;
        let per_head: Vec<Vec<f32>> = (0..batch * heads)
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / heads, bh % heads);
                let kv = h / dims.groups();
                let mut s = vec![0f32; t * t];
                plan.probabilities(
                    &mut s,
                    dims.q_head(&qr, b, h),
                    dims.kv_head(&kr, b, kv),
                    false,
                );
                let mut o = vec![0f32; t * d];
                matmul_here(
                    &mut o,
                    Mat::new(&s, t, t),
                    dims.kv_head(v, b, kv),
                    1.0,
                    false,
                );
                o
            })
            .collect();
        let mut out = vec![0f32; batch * t * heads * d];
        for (bh, o) in per_head.iter().enumerate() {
            let (b, h) = (bh / heads, bh % heads);
            for (i, row) in o.chunks(d).enumerate() {
                let start = ((b * t + i) * heads + h) * d;
                out[start..start + d].copy_from_slice(row);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((batch * t, heads * d))))
    }

    fn bwd(
        &self,
        q_t: &Tensor,
        k_t: &Tensor,
        v_t: &Tensor,
        _y: &Tensor,
        dy_t: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let plan = &self.0;
        let dims = Dims::of(plan, q_t.shape(), k_t.shape(), v_t.shape())?;
        let dy_t = dy_t.contiguous()?;
        let (qs, ql) = q_t.storage_and_layout();
        let (ks, kl) = k_t.storage_and_layout();
        let (vs, vl) = v_t.storage_and_layout();
        let (dys, dyl) = dy_t.storage_and_layout();
        let slice = super::cpu_ops::f32_slice;
        let (q, k, v) = (
            slice(&qs, ql, "q")?,
            slice(&ks, kl, "k")?,
            slice(&vs, vl, "v")?,
        );
        let dy = slice(&dys, dyl, "output gradient")?;
        let scale = plan.heads.scale;
        let qr = plan.rope(q, &dims, dims.heads, scale, false);
        let kr = plan.rope(k, &dims, dims.kv, 1.0, false);
        let Dims {
            batch,
            t,
            heads,
            kv,
            d,
        } = dims;
        let groups = dims.groups();

        // One task per (sequence, key/value head): its query heads' dq̃, and its own dk̃ and dv.
        let per_kv: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..batch * kv)
            .into_par_iter()
            .map(|bk| {
                let (b, kvh) = (bk / kv, bk % kv);
                let (k_h, v_h) = (dims.kv_head(&kr, b, kvh), dims.kv_head(v, b, kvh));
                let mut dq = vec![0f32; groups * t * d];
                let (mut dk, mut dv) = (vec![0f32; t * d], vec![0f32; t * d]);
                let (mut p, mut ds) = (vec![0f32; t * t], vec![0f32; t * t]);
                for g in 0..groups {
                    let h = kvh * groups + g;
                    let (q_h, do_h) = (dims.q_head(&qr, b, h), dims.q_head(dy, b, h));
                    let raw = plan.probabilities(&mut p, q_h, k_h, true);
                    matmul_here(&mut dv, Mat::new(&p, t, t).t(), do_h, 1.0, true);
                    matmul_here(&mut ds, do_h, v_h.t(), 1.0, false);
                    for (i, (ds_row, p_row)) in ds.chunks_mut(t).zip(p.chunks(t)).enumerate() {
                        let dot: f32 = ds_row.iter().zip(p_row).map(|(a, b)| a * b).sum();
                        for (x, p) in ds_row.iter_mut().zip(p_row) {
                            *x = p * (*x - dot);
                        }
                        if let (Some(cap), Some(raw)) = (plan.heads.softcap, &raw) {
                            for (x, r) in ds_row.iter_mut().zip(&raw[i * t..][..t]) {
                                let th = (r / cap).tanh();
                                *x *= 1.0 - th * th;
                            }
                        }
                    }
                    let dq_h = &mut dq[g * t * d..][..t * d];
                    matmul_here(dq_h, Mat::new(&ds, t, t), k_h, 1.0, false);
                    matmul_here(&mut dk, Mat::new(&ds, t, t).t(), q_h, 1.0, true);
                }
                (dq, dk, dv)
            })
            .collect();

        // Scatter back into the inputs' layouts, undoing the rotation (and q's scale).
        let mut dq_rot = vec![0f32; q.len()];
        let (mut dk_rot, mut dv_all) = (vec![0f32; k.len()], vec![0f32; v.len()]);
        for (bk, (dq, dk, dv)) in per_kv.iter().enumerate() {
            let (b, kvh) = (bk / kv, bk % kv);
            for i in 0..t {
                for g in 0..groups {
                    let h = kvh * groups + g;
                    let at = ((b * t + i) * heads + h) * d;
                    dq_rot[at..at + d].copy_from_slice(&dq[(g * t + i) * d..][..d]);
                }
                let at = ((b * t + i) * kv + kvh) * d;
                dk_rot[at..at + d].copy_from_slice(&dk[i * d..][..d]);
                dv_all[at..at + d].copy_from_slice(&dv[i * d..][..d]);
            }
        }
        let dq = plan.rope(&dq_rot, &dims, heads, scale, true);
        let dk = plan.rope(&dk_rot, &dims, kv, 1.0, true);
        let grad = |g: Vec<f32>, like: &Tensor| -> Result<Option<Tensor>> {
            if !like.track_op() {
                return Ok(None);
            }
            Tensor::from_vec(g, like.shape(), like.device()).map(Some)
        };
        Ok((grad(dq, q_t)?, grad(dk, k_t)?, grad(dv_all, v_t)?))
    }
}
