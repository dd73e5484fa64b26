//! The output layer and the cross-entropy as one op on the CPU, a slice of rows at a time, so that the
//! positions × vocabulary logits never exist whole.
//!
//! Unfused, a step holds every trained position's logits (49,152 floats per position on SmolLM2, 200 MB
//! for 4 × 256 tokens), their gradient, and autograd's sum of it, and walks each of them from memory
//! several times. Here each slice of rows is projected onto the vocabulary, turned into its loss and
//! its softmax-minus-target while it is still in cache, and projected straight back through the
//! (frozen) output matrix. What the op keeps for the backward pass is `d loss_r / d hidden_r` for a
//! unit upstream gradient, `rows × hidden`: each row's loss depends only on its own hidden state, so
//! the backward pass only scales those rows by the upstream gradient. The work is the same two
//! products the unfused backward does, moved into the forward pass; without a gradient to compute
//! (evaluation) the second product is skipped.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_ops::{cpu_f32, f32_slice, matmul, Mat};
use super::frozen::Frozen;
use super::vector::{exp, max, sum_of, vector_fn};

/// Rows projected onto the vocabulary at a time: 256 × 49,152 f32 logits are 50 MB. Fewer rows pack
/// the output matrix for the products more often (packing took 6.8% of a SmolLM2 step's CPU time with
/// 64 rows, 4.7% with 256); more hold more memory.
const ROWS_PER_SLICE: usize = 256;

/// `−log softmax(cap(h·Wᵀ))[target]` for each row of `hidden (n, in)`, where `weight` is the output
/// layer (`vocab × in`) and `cap` the final logit softcap where the model has one. Gradients flow to
/// `hidden` only.
pub fn lm_head_nll(
    hidden: &Tensor,
    weight: &Frozen,
    targets: &[u32],
    softcap: Option<f32>,
) -> Result<Tensor> {
    let (rows, _) = hidden.dims2()?;
    let (vocab, _) = weight.dims();
    if targets.len() != rows {
        candle_core::bail!("lm-head loss: {} targets for {rows} rows", targets.len());
    }
    if let Some(t) = targets.iter().find(|t| **t as usize >= vocab) {
        candle_core::bail!("lm-head loss: target {t} is outside the vocabulary of {vocab}");
    }
    hidden.contiguous()?.apply_op1(LmHeadLoss {
        weight: weight.clone(),
        targets: targets.to_vec(),
        softcap,
        with_gradient: hidden.track_op(),
        gradient: Mutex::new(None),
    })
}

struct LmHeadLoss {
    weight: Frozen,
    targets: Vec<u32>,
    softcap: Option<f32>,
    /// Whether the forward pass computes `d loss / d hidden` for the backward pass.
    with_gradient: bool,
    /// `d loss_r / d hidden_r` for a unit upstream gradient, `rows × in`.
    gradient: Mutex<Option<Vec<f32>>>,
}

impl CustomOp1 for LmHeadLoss {
    fn name(&self) -> &'static str {
        "lm-head-loss"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, inp) = layout.shape().dims2()?;
        let (vocab, w_in) = self.weight.dims();
        if inp != w_in {
            candle_core::bail!("lm-head loss: hidden states of {inp}, an output layer of {w_in}");
        }
        let hidden = cpu_f32(storage, layout, "hidden states")?;
        let mut nll = vec![0f32; rows];
        let mut gradient = vec![0f32; if self.with_gradient { rows * inp } else { 0 }];
        let mut logits = vec![0f32; ROWS_PER_SLICE.min(rows) * vocab];
        self.weight.with_cpu_f32(|w| {
            for first in (0..rows).step_by(ROWS_PER_SLICE) {
                let n = ROWS_PER_SLICE.min(rows - first);
                let logits = &mut logits[..n * vocab];
                let h = Mat::new(&hidden[first * inp..(first + n) * inp], n, inp);
                matmul(&mut *logits, h, Mat::new(w, vocab, inp).t(), 1.0, false);
                let targets = &self.targets[first..first + n];
                logits
                    .par_chunks_mut(vocab)
                    .zip(&mut nll[first..first + n])
                    .zip(targets)
                    .for_each(|((row, nll), &target)| {
                        *nll = row_loss(row, target as usize, self.softcap, self.with_gradient)
                    });
                if self.with_gradient {
                    let dh = &mut gradient[first * inp..(first + n) * inp];
                    let probs = Mat::new(logits, n, vocab);
                    matmul(dh, probs, Mat::new(w, vocab, inp), 1.0, false);
                }
            }
            Ok(())
        })?;
        if self.with_gradient {
            *self.gradient.lock().unwrap_or_else(|e| e.into_inner()) = Some(gradient);
        }
        Ok((CpuStorage::F32(nll), Shape::from(rows)))
    }

    fn bwd(&self, hidden: &Tensor, _nll: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (rows, inp) = hidden.dims2()?;
        let Some(gradient) = self
            .gradient
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            candle_core::bail!(
                "lm-head loss: the backward pass ran twice, or without a forward pass"
            );
        };
        let dy = dy.contiguous()?;
        let (storage, layout) = dy.storage_and_layout();
        let dy = f32_slice(&storage, layout, "loss gradient")?;
        let mut dh = gradient;
        dh.par_chunks_mut(inp)
            .zip(dy)
            .for_each(|(row, d)| row.iter_mut().for_each(|v| *v *= d));
        Tensor::from_vec(dh, (rows, inp), hidden.device()).map(Some)
    }
}

vector_fn! {
    /// One row's loss from its logits; with `gradient`, the row becomes `d loss / d logits`:
    /// `softmax − onehot(target)`, times the softcap's derivative `1 − (z / cap)²` where there is one.
    fn row_loss(row: &mut [f32], target: usize, softcap: Option<f32>, gradient: bool) -> f32 {
        if let Some(cap) = softcap {
            row.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        let max = max(row);
        let lse = max + sum_of(row.len(), |i| exp(row[i] - max)).ln();
        let nll = lse - row[target];
        if gradient {
            match softcap {
                None => row.iter_mut().for_each(|v| *v = exp(*v - lse)),
                Some(cap) => row.iter_mut().for_each(|v| {
                    let z = *v / cap;
                    *v = exp(*v - lse) * (1.0 - z * z);
                }),
            }
            let slope = softcap.map_or(1.0, |cap| {
                // The target's softcap derivative, from its capped logit (its value before the pass
                // above is `lse − nll`).
                let z = (lse - nll) / cap;
                1.0 - z * z
            });
            row[target] -= slope;
        }
        nll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::ops::{cross_entropy_rows, max_abs_diff, probed_gradients};
    use candle_core::{Device, Var};

    /// The fused op gives the unfused loss (projection, optional softcap, cross-entropy) and its
    /// gradient, over more rows than one slice and with an upstream gradient that is not uniform.
    #[test]
    fn matches_the_projection_and_cross_entropy() {
        let device = Device::Cpu;
        let (rows, inp, vocab) = (ROWS_PER_SLICE + 7, 24, 50);
        let w = Tensor::randn(0f32, 1.0, (vocab, inp), &device).unwrap();
        let h = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, inp), &device).unwrap()).unwrap();
        let targets: Vec<u32> = (0..rows).map(|i| (i * 13 % vocab) as u32).collect();
        let weights = Tensor::randn(0f32, 1.0, rows, &device).unwrap();
        for softcap in [None, Some(3.0f32)] {
            let fused =
                lm_head_nll(h.as_tensor(), &Frozen::Dense(w.clone()), &targets, softcap).unwrap();
            let mut logits = h.as_tensor().matmul(&w.t().unwrap()).unwrap();
            if let Some(cap) = softcap {
                logits = ((logits / cap as f64).unwrap().tanh().unwrap() * cap as f64).unwrap();
            }
            let t = Tensor::new(targets.as_slice(), &device).unwrap();
            let unfused = cross_entropy_rows(&logits, &t).unwrap();
            let d = max_abs_diff(&fused, &unfused);
            assert!(d < 1e-4, "softcap {softcap:?}: the loss differs by {d}");
            let g1 = probed_gradients(&fused, &weights);
            let g2 = probed_gradients(&unfused, &weights);
            let d = max_abs_diff(
                g1.get(h.as_tensor()).unwrap(),
                g2.get(h.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "softcap {softcap:?}: the gradient differs by {d}");
        }
    }

    /// Without a tracked input the op computes the loss alone.
    #[test]
    fn untracked_hidden_states_give_the_loss_only() {
        let device = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (10, 4), &device).unwrap();
        let h = Tensor::randn(0f32, 1.0, (3, 4), &device).unwrap();
        let nll = lm_head_nll(&h, &Frozen::Dense(w.clone()), &[1, 2, 9], None).unwrap();
        let logits = h.matmul(&w.t().unwrap()).unwrap();
        let t = Tensor::new(&[1u32, 2, 9], &device).unwrap();
        assert!(max_abs_diff(&nll, &cross_entropy_rows(&logits, &t).unwrap()) < 1e-5);
        assert!(lm_head_nll(&h, &Frozen::Dense(w), &[10, 0, 0], None).is_err());
    }
}
