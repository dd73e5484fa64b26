//! Ops with a backward pass written for LoRA training.
//!
//! candle's autograd computes the gradient of *every* input of a matmul — for a frozen base weight that
//! is a wasted matmul the size of the forward one, plus a weight-sized buffer — and its fast fused
//! kernels (softmax, RMSNorm) have no backward at all. Each op here runs candle's fast forward on
//! untracked tensors and supplies only the gradient training needs.

use std::sync::Arc;

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor, D};

type Forward = dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync;
type Backward = dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync;

/// A one-input op: `forward(x)` computed with candle's kernels, `backward(x, y, dy) = dx`.
struct Fused {
    name: &'static str,
    forward: Arc<Forward>,
    backward: Arc<Backward>,
}

impl Fused {
    fn run(&self, x: Tensor) -> Result<(Storage, Shape)> {
        let y = (self.forward)(&x)?.contiguous()?;
        let shape = y.shape().clone();
        let (storage, layout) = y.storage_and_layout();
        let copy = match &*storage {
            Storage::Cpu(s) => Storage::Cpu(cpu_slice(s, layout)?),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => {
                use candle_core::backend::BackendStorage;
                Storage::Cuda(s.try_clone(layout)?)
            }
            _ => candle_core::bail!("{}: this device is not supported for training", self.name),
        };
        Ok((copy, shape))
    }
}

/// The contiguous range of a CPU storage that a layout addresses, as a new storage.
fn cpu_slice(s: &CpuStorage, layout: &Layout) -> Result<CpuStorage> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("fused op: expected a contiguous tensor");
    };
    Ok(match s {
        CpuStorage::F32(v) => CpuStorage::F32(v[start..end].to_vec()),
        CpuStorage::BF16(v) => CpuStorage::BF16(v[start..end].to_vec()),
        CpuStorage::F16(v) => CpuStorage::F16(v[start..end].to_vec()),
        CpuStorage::F64(v) => CpuStorage::F64(v[start..end].to_vec()),
        _ => candle_core::bail!("fused op: unsupported dtype"),
    })
}

/// An untracked tensor over a storage (the op's input inside a forward kernel).
fn untracked(storage: Storage, layout: &Layout) -> Tensor {
    Tensor::from_storage(storage, layout.shape().clone(), BackpropOp::none(), false)
}

impl CustomOp1 for Fused {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = untracked(Storage::Cpu(cpu_slice(storage, layout)?), layout);
        match self.run(x)? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{}: forward left the CPU", self.name),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        if layout.contiguous_offsets() != Some((0, layout.shape().elem_count())) {
            candle_core::bail!("{}: expected a contiguous tensor at offset 0", self.name);
        }
        let x = untracked(Storage::Cuda(storage.try_clone(layout)?), layout);
        match self.run(x)? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{}: forward left the GPU", self.name),
        }
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        (self.backward)(arg, res, grad_res).map(Some)
    }
}

/// Apply `forward`; when `x` takes part in training, through a custom op whose gradient is `backward`.
fn fused(
    x: &Tensor,
    name: &'static str,
    forward: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
    backward: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !x.track_op() {
        return forward(x);
    }
    let x = x.contiguous()?;
    x.apply_op1(Fused {
        name,
        forward: Arc::new(forward),
        backward: Arc::new(backward),
    })
}

/// `x · Wᵀ` for a quantized `W` on any device and dtype: the weight is dequantized for the product and
/// again for the backward pass (dx = dy · W), so the graph keeps the packed weight, never a dense copy
/// (bitsandbytes' `MatMul4Bit` does the same). The CPU's f32 path has its own op in `frozen`.
pub fn dequantizing_matmul(x: &Tensor, weight: &super::Frozen) -> Result<Tensor> {
    let (forward_weight, backward_weight) = (weight.clone(), weight.clone());
    fused(
        x,
        "dequantizing-matmul",
        move |x| x.matmul(&forward_weight.to_dense(x.device(), x.dtype())?.t()?),
        move |_x, _y, dy| dy.matmul(&backward_weight.to_dense(dy.device(), dy.dtype())?),
    )
}

/// A recomputed section of the network (gradient checkpointing): `forward(x)` runs untracked, keeping
/// nothing but `x`; the backward pass calls `backward(x, dy)`, which runs the section again with
/// tracking and returns dx. `x` must take part in the graph.
pub fn checkpoint(
    x: &Tensor,
    forward: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
    backward: impl Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !x.track_op() {
        candle_core::bail!("checkpoint: the input is not part of the graph");
    }
    fused(x, "checkpoint", forward, move |x, _y, dy| backward(x, dy))
}

/// `x · Wᵀ` for a frozen `W` (`x` is `rows × in`): the backward pass gives x its gradient `dy · W` and
/// spends nothing on W. The forward multiplies the storages directly, so neither x nor the product is
/// copied (every linear layer runs through here; the generic fused op's two copies cost ~1.4 GB of
/// memory traffic per SmolLM2 step).
pub fn frozen_matmul(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return x.matmul(&weight.t()?);
    }
    x.contiguous()?.apply_op1(FrozenMatmul {
        weight: weight.clone(),
    })
}

struct FrozenMatmul {
    weight: Tensor,
}

impl FrozenMatmul {
    /// `x · Wᵀ` on one backend's storages: the product is a new storage of shape `rows × out`.
    fn run<S: candle_core::backend::BackendStorage>(
        &self,
        x: &S,
        x_layout: &Layout,
        weight: &S,
        w_layout: &Layout,
    ) -> Result<(S, Shape)> {
        let (rows, inp) = x_layout.shape().dims2()?;
        let (out, w_in) = w_layout.shape().dims2()?;
        if inp != w_in {
            candle_core::bail!("frozen-matmul: input has {inp} features, the weight takes {w_in}");
        }
        let product = x.matmul(
            weight,
            (1, rows, out, inp),
            x_layout,
            &w_layout.transpose(0, 1)?,
        )?;
        Ok((product, Shape::from((rows, out))))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (weight, w_layout) = self.weight.storage_and_layout();
        match &*weight {
            Storage::Cpu(w) => self.run(storage, layout, w, w_layout),
            _ => candle_core::bail!("frozen-matmul: the weight is not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (weight, w_layout) = self.weight.storage_and_layout();
        match &*weight {
            Storage::Cuda(w) => self.run(storage, layout, w, w_layout),
            _ => candle_core::bail!("frozen-matmul: the weight is not on the GPU"),
        }
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        dy.matmul(&self.weight).map(Some)
    }
}

/// Softmax over the last dimension of `x + mask` with candle's fused kernel, where `mask` is a constant
/// additive mask (causal −∞ entries) or absent: dx = y ⊙ (dy − Σ dy ⊙ y), and the mask gets nothing. One
/// op rather than a mask op and a softmax op, so the attention scores are copied and kept once, not twice.
pub fn masked_softmax(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let mask = mask.map(|m| m.to_dtype(x.dtype())).transpose()?;
    let forward = move |x: &Tensor| match &mask {
        Some(m) => candle_nn::ops::softmax_last_dim(&x.broadcast_add(m)?),
        None => candle_nn::ops::softmax_last_dim(x),
    };
    fused(x, "masked-softmax", forward, |_x, y, dy| {
        let dot = (dy * y)?.sum_keepdim(D::Minus1)?;
        y * dy.broadcast_sub(&dot)?
    })
}

/// RMSNorm with a frozen scale `w`: `w ⊙ x / sqrt(mean(x²) + eps)` over the last dimension, computed in
/// f32 and returned in `x`'s dtype. With x̂ the normalised input and g = dy ⊙ w:
/// dx = (g − x̂ · mean(g ⊙ x̂)) / rms. The scale gets no gradient.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if x.track_op() && super::cpu_ops::applies(x) {
        return super::cpu_ops::rms_norm(x, weight, eps);
    }
    rms_norm_composed(x, weight, eps)
}

/// [`rms_norm`] from candle's ops, for the devices and dtypes the CPU loops do not serve.
fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let (w_fwd, w_bwd) = (weight.to_dtype(DType::F32)?, weight.to_dtype(DType::F32)?);
    let forward = move |x: &Tensor| {
        let dtype = x.dtype();
        candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?, &w_fwd, eps as f32)?.to_dtype(dtype)
    };
    fused(x, "rms-norm", forward, move |x, _y, dy| {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
        let normed = x.broadcast_div(&rms)?;
        let g = dy.to_dtype(DType::F32)?.broadcast_mul(&w_bwd)?;
        let mean = (&g * &normed)?.mean_keepdim(D::Minus1)?;
        g.broadcast_sub(&normed.broadcast_mul(&mean)?)?
            .broadcast_div(&rms)?
            .to_dtype(dtype)
    })
}

/// Rotary position embedding (rotate-half layout) with candle's kernel; `cos`/`sin` are `(t, d/2)`.
/// The rotation is orthogonal, so its gradient is the inverse rotation: rope with −sin.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos_f, sin_f) = (cos.clone(), sin.clone());
    let (cos_b, neg_sin) = (cos.clone(), sin.neg()?);
    fused(
        x,
        "rope",
        move |x| candle_nn::rotary_emb::rope(&x.contiguous()?, &cos_f, &sin_f),
        move |_x, _y, dy| candle_nn::rotary_emb::rope(&dy.contiguous()?, &cos_b, &neg_sin),
    )
}

/// Per-row negative log-likelihood of `targets (n)` under `logits (n, vocab)`, in one pass that keeps
/// no vocabulary-sized intermediate for the backward pass but the logits themselves:
/// d logits = (softmax − onehot) · dy.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.track_op() && super::cpu_ops::applies(logits) {
        return super::cpu_ops::cross_entropy_rows(logits, targets);
    }
    cross_entropy_composed(logits, targets)
}

/// [`cross_entropy_rows`] from candle's ops, for the devices and dtypes the CPU loops do not serve.
fn cross_entropy_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (t_fwd, t_bwd) = (targets.unsqueeze(1)?, targets.unsqueeze(1)?);
    fused(
        logits,
        "cross-entropy",
        move |x| {
            let x = x.to_dtype(DType::F32)?;
            let max = x.max_keepdim(D::Minus1)?;
            let lse = (x
                .broadcast_sub(&max)?
                .exp()?
                .sum_keepdim(D::Minus1)?
                .log()?
                + &max)?;
            (lse - x.gather(&t_fwd, D::Minus1)?)?.squeeze(1)
        },
        move |x, _y, dy| {
            let probs = candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?;
            let dy = dy.unsqueeze(1)?;
            let picked = Tensor::zeros_like(&probs)?.scatter_add(&t_bwd, &dy.neg()?, 1)?;
            probs.broadcast_mul(&dy)? + picked
        },
    )
}

/// The largest absolute difference between two tensors of one shape (for tests).
#[cfg(test)]
pub fn max_abs_diff(p: &Tensor, q: &Tensor) -> f32 {
    (p - q)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar())
        .expect("tensors of one shape")
}

/// The gradients of `Σ y ⊙ probe`: a scalar loss that weighs every element of `y` differently, so a
/// gradient that mixes elements up shows (for tests).
#[cfg(test)]
pub fn probed_gradients(y: &Tensor, probe: &Tensor) -> candle_core::backprop::GradStore {
    (y * probe)
        .and_then(|l| l.sum_all()?.backward())
        .expect("a differentiable y of the probe's shape")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Gradients of `op` and of `reference` (candle's composed ops) agree.
    fn same_gradients(
        x: &Tensor,
        op: impl Fn(&Tensor) -> Result<Tensor>,
        reference: impl Fn(&Tensor) -> Result<Tensor>,
    ) {
        let a = Var::from_tensor(x).unwrap();
        let b = Var::from_tensor(x).unwrap();
        let ya = op(a.as_tensor()).unwrap();
        let yb = reference(b.as_tensor()).unwrap();
        let weights = Tensor::randn(0f32, 1.0, ya.dims(), &Device::Cpu).unwrap();
        assert!(max_abs_diff(&ya, &yb) < 1e-5, "forward differs");
        let ga = probed_gradients(&ya, &weights);
        let gb = probed_gradients(&yb, &weights);
        let (ga, gb) = (
            ga.get(a.as_tensor()).unwrap(),
            gb.get(b.as_tensor()).unwrap(),
        );
        assert!(
            max_abs_diff(ga, gb) < 1e-4,
            "gradient differs by {}",
            max_abs_diff(ga, gb)
        );
    }

    #[test]
    fn rope_gradient() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &Device::Cpu).unwrap();
        let angles = Tensor::randn(0f32, 1.0, (5, 4), &Device::Cpu).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let (c2, s2) = (cos.clone(), sin.clone());
        same_gradients(
            &x,
            move |x| rope(x, &cos, &sin),
            move |x| candle_nn::rotary_emb::rope_slow(x, &c2, &s2),
        );
    }

    #[test]
    fn cross_entropy_gradient() {
        let x = Tensor::randn(0f32, 3.0, (6, 11), &Device::Cpu).unwrap();
        let t = Tensor::new(&[0u32, 3, 10, 5, 5, 1], &Device::Cpu).unwrap();
        let reference = |x: &Tensor, t: &Tensor| {
            let lp = candle_nn::ops::log_softmax(x, D::Minus1)?;
            lp.gather(&t.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
        };
        // The CPU loop (what `cross_entropy_rows` picks here) and the composed version for other devices.
        let (t1, t2, t3, t4) = (t.clone(), t.clone(), t.clone(), t);
        same_gradients(
            &x,
            move |x| cross_entropy_rows(x, &t1),
            move |x| reference(x, &t2),
        );
        same_gradients(
            &x,
            move |x| cross_entropy_composed(x, &t3),
            move |x| reference(x, &t4),
        );
    }

    #[test]
    fn softmax_gradient() {
        let x = Tensor::randn(0f32, 2.0, (3, 5, 7), &Device::Cpu).unwrap();
        same_gradients(
            &x,
            |x| masked_softmax(x, None),
            |x| candle_nn::ops::softmax(x, D::Minus1),
        );
    }

    #[test]
    fn rms_gradient() {
        let x = Tensor::randn(0f32, 2.0, (4, 6, 16), &Device::Cpu).unwrap();
        let w = Tensor::randn(1f32, 0.3, 16, &Device::Cpu).unwrap();
        let reference = |x: &Tensor, w: &Tensor| {
            let var = x.sqr()?.mean_keepdim(D::Minus1)?;
            x.broadcast_div(&(var + 1e-6)?.sqrt()?)?.broadcast_mul(w)
        };
        let (w1, w2, w3, w4) = (w.clone(), w.clone(), w.clone(), w);
        same_gradients(
            &x,
            move |x| rms_norm(x, &w1, 1e-6),
            move |x| reference(x, &w2),
        );
        same_gradients(
            &x,
            move |x| rms_norm_composed(x, &w3, 1e-6),
            move |x| reference(x, &w4),
        );
    }

    #[test]
    fn masked_softmax_gradient() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 3), &Device::Cpu).unwrap();
        let mask = Tensor::new(
            &[[0f32, -1e9, -1e9], [0., 0., -1e9], [0., 0., 0.]],
            &Device::Cpu,
        )
        .unwrap();
        let m2 = mask.clone();
        same_gradients(
            &x,
            move |x| masked_softmax(x, Some(&mask)),
            move |x| candle_nn::ops::softmax(&x.broadcast_add(&m2)?, D::Minus1),
        );
    }

    #[test]
    fn frozen_matmul_gradient_and_no_weight_gradient() {
        let w = Tensor::randn(0f32, 1.0, (6, 4), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 4), &Device::Cpu).unwrap();
        let wc = w.clone();
        same_gradients(&x, move |x| frozen_matmul(x, &wc), |x| x.matmul(&w.t()?));
    }
}
