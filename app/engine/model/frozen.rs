//! The frozen base weight of a linear layer: a dense tensor (LoRA), 4-bit NF4 blocks (QLoRA), or a GGUF
//! model's own quantized blocks (QLoRA against what llama.cpp runs).
//!
//! A quantized base is never held dense as a whole: each product dequantizes its own matrix into a
//! scratch buffer that is reused from layer to layer, in the forward pass and again for the input's
//! gradient in the backward pass, as bitsandbytes' `MatMul4Bit` does. So the model costs its packed
//! size plus one layer's f32 matrix, whatever its depth.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Tensor};

use super::cpu_ops::f32_slice;
use crate::engine::quant::{GgmlMatrix, Nf4Matrix};

#[derive(Debug, Clone)]
pub enum Frozen {
    /// `out × in` in the compute dtype; never a `Var`, so it gets no gradient.
    Dense(Tensor),
    /// NF4 blocks with their (double-quantized) absmax, dequantized right before each product.
    Nf4(Arc<Nf4Matrix>),
    /// A GGUF tensor's own blocks (Q4_0, Q4_1, Q8_0, k-quants…), dequantized right before each
    /// product.
    Ggml(Arc<GgmlMatrix>),
}

impl Frozen {
    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Frozen::Dense(w) => {
                let d = w.dims();
                (d[0], d[1])
            }
            Frozen::Nf4(q) => q.shape,
            Frozen::Ggml(q) => q.shape,
        }
    }

    pub fn is_quantized(&self) -> bool {
        !matches!(self, Frozen::Dense(_))
    }

    /// Bytes this weight holds in memory.
    pub fn bytes(&self) -> u64 {
        match self {
            Frozen::Dense(w) => (w.elem_count() * w.dtype().size_in_bytes()) as u64,
            Frozen::Nf4(q) => q.bytes(),
            Frozen::Ggml(q) => q.bytes(),
        }
    }

    /// The weight as a dense `out × in` tensor in `dtype` on `device` (a new tensor when quantized): for the
    /// paths that are not the CPU's f32 training ops, and for exporting a merged model.
    pub fn to_dense(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        match self {
            Frozen::Dense(w) => w.to_device(device)?.to_dtype(dtype),
            Frozen::Nf4(q) => Tensor::from_vec(q.dequantize(), q.shape, &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device),
            Frozen::Ggml(q) => Tensor::from_vec(q.dequantize()?, q.shape, &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device),
        }
    }

    /// Whether [`Self::with_cpu_f32`] can serve this weight: f32 on the CPU, or quantized.
    pub fn has_cpu_f32(&self) -> bool {
        match self {
            Frozen::Dense(w) => w.device().is_cpu() && w.dtype() == DType::F32,
            Frozen::Nf4(_) | Frozen::Ggml(_) => true,
        }
    }

    /// Run `f` on the weight's f32 values, row-major `out × in`: a dense f32 CPU weight is lent as it
    /// is; a quantized one is dequantized into a pooled scratch buffer first, which returns to the pool
    /// after.
    pub fn with_cpu_f32<R>(&self, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
        match self {
            Frozen::Dense(w) => {
                let (storage, layout) = w.storage_and_layout();
                f(f32_slice(&storage, layout, "base weight")?)
            }
            Frozen::Nf4(q) => {
                let mut buffer = Scratch::take(q.len());
                q.dequantize_into(&mut buffer.0);
                f(&buffer.0)
            }
            Frozen::Ggml(q) => {
                let mut buffer = Scratch::take(q.len());
                q.dequantize_into(&mut buffer.0)?;
                f(&buffer.0)
            }
        }
    }
}

/// Buffers for dequantized weights, kept for the next product. Each in-flight product takes its own,
/// so nested or concurrent products never share one; in a training step that is one at a time, and
/// the pool holds as many buffers as products ever ran at once (one, sized for the largest layer).
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

struct Scratch(Vec<f32>);

impl Scratch {
    fn take(len: usize) -> Scratch {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        // The largest buffer serves every layer without growing again.
        let mut v = match pool.iter().enumerate().max_by_key(|(_, v)| v.capacity()) {
            Some((i, _)) => pool.swap_remove(i),
            None => Vec::new(),
        };
        drop(pool);
        v.resize(len, 0.0);
        Scratch(v)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        POOL.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    }
}

/// `x · Wᵀ` for `x` of shape `(rows, in)`, with a gradient for `x` only.
pub fn frozen_product(x: &Tensor, weight: &Frozen) -> Result<Tensor> {
    if let Some(y) = few_rows_product(x, weight)? {
        return Ok(y);
    }
    match weight {
        Frozen::Dense(w) => super::ops::frozen_matmul(x, w),
        Frozen::Nf4(_) | Frozen::Ggml(_) if super::cpu_ops::applies(x) => {
            x.contiguous()?.apply_op1(QuantizedMatmul {
                weight: weight.clone(),
            })
        }
        // Other devices and dtypes dequantize for each product too, through candle's kernels.
        Frozen::Nf4(_) | Frozen::Ggml(_) => super::ops::dequantizing_matmul(x, weight),
    }
}

/// Decoding's products — a few rows, no gradient, a dense f32 weight on the CPU — by
/// [`super::cpu_few_rows`]; None for everything else.
fn few_rows_product(x: &Tensor, weight: &Frozen) -> Result<Option<Tensor>> {
    let Frozen::Dense(w) = weight else {
        return Ok(None);
    };
    let (rows, inp) = match x.dims() {
        [rows, inp] => (*rows, *inp),
        _ => return Ok(None),
    };
    if rows > super::cpu_few_rows::MAX_ROWS
        || !super::cpu_few_rows::available()
        || x.track_op()
        || !super::cpu_ops::applies(x)
        || !weight.has_cpu_f32()
        || !w.is_contiguous()
    {
        return Ok(None);
    }
    let (out, w_in) = weight.dims();
    if w_in != inp {
        candle_core::bail!("linear layer: input has {inp} features, the weight takes {w_in}");
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let values = f32_slice(&storage, layout, "input")?;
    let y = weight.with_cpu_f32(|w| {
        Ok(super::cpu_few_rows::few_rows_times_t(
            values, rows, w, out, inp,
        ))
    })?;
    Tensor::from_vec(y, (rows, out), x.device()).map(Some)
}

/// `x · Wᵀ` on the CPU for a quantized `W`, dequantized for the product and again for the backward.
struct QuantizedMatmul {
    weight: Frozen,
}

impl candle_core::CustomOp1 for QuantizedMatmul {
    fn name(&self) -> &'static str {
        "quantized-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use super::cpu_ops::{cpu_f32, product, Mat};
        let (rows, inp) = layout.shape().dims2()?;
        let (out, w_in) = self.weight.dims();
        if inp != w_in {
            candle_core::bail!(
                "quantized-matmul: input has {inp} features, the weight takes {w_in}"
            );
        }
        let x = cpu_f32(storage, layout, "input")?;
        let y = self.weight.with_cpu_f32(|w| {
            Ok(product(
                Mat::new(x, rows, inp),
                Mat::new(w, out, inp).t(),
                1.0,
            ))
        })?;
        Ok((
            candle_core::CpuStorage::F32(y),
            candle_core::Shape::from((rows, out)),
        ))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        use super::cpu_ops::{product, Mat};
        let dy = dy.contiguous()?;
        let (rows, out) = dy.dims2()?;
        let (_, inp) = self.weight.dims();
        let (storage, layout) = dy.storage_and_layout();
        let dy_values = f32_slice(&storage, layout, "output gradient")?;
        let dx = self.weight.with_cpu_f32(|w| {
            Ok(product(
                Mat::new(dy_values, rows, out),
                Mat::new(w, out, inp),
                1.0,
            ))
        })?;
        Tensor::from_vec(dx, (rows, inp), dy.device()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::ops::{max_abs_diff, probed_gradients};
    use candle_core::Var;

    /// The quantized product gives the same output and input gradient as a dense product with the
    /// dequantized weight, through the CPU's op and through the device-generic one.
    fn assert_matches_dense_product(q: &Frozen, rows: usize) {
        let products: [fn(&Tensor, &Frozen) -> Result<Tensor>; 2] = [
            frozen_product,
            crate::engine::model::ops::dequantizing_matmul,
        ];
        for product in products {
            assert_product_matches_dense(product, q, rows);
        }
    }

    fn assert_product_matches_dense(
        product: fn(&Tensor, &Frozen) -> Result<Tensor>,
        q: &Frozen,
        rows: usize,
    ) {
        let device = Device::Cpu;
        let (out, inp) = q.dims();
        let dense = q.to_dense(&device, DType::F32).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, inp), &device).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (rows, out), &device).unwrap();
        let y1 = product(x.as_tensor(), q).unwrap();
        let y2 = x.as_tensor().matmul(&dense.t().unwrap()).unwrap();
        assert!(max_abs_diff(&y1, &y2) < 1e-5);
        let g1 = probed_gradients(&y1, &probe);
        let g2 = probed_gradients(&y2, &probe);
        let d = max_abs_diff(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert!(d < 1e-5, "input gradient differs by {d}");
    }

    /// NF4, including a shape that is not a multiple of the block.
    #[test]
    fn nf4_product_matches_the_dense_one() {
        let (inp, out) = (70, 9);
        let w = Tensor::randn(0f32, 1.0, (out, inp), &Device::Cpu).unwrap();
        let values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let q = Frozen::Nf4(Arc::new(Nf4Matrix::quantize(
            &values,
            (out, inp),
            "float32",
            true,
        )));
        assert_matches_dense_product(&q, 5);
    }

    /// A GGUF model's own blocks, a legacy and a k-quant type, with rows in llama.cpp's rope order.
    #[test]
    fn ggml_product_matches_the_dense_one() {
        use candle_core::quantized::{GgmlDType, QTensor};
        for (dtype, heads) in [(GgmlDType::Q4_1, None), (GgmlDType::Q4K, Some(2))] {
            let w = Tensor::randn(0f32, 1.0, (12, 256), &Device::Cpu).unwrap();
            let blocks = QTensor::quantize(&w, dtype).unwrap();
            let q = Frozen::Ggml(Arc::new(GgmlMatrix::new(blocks, heads).unwrap()));
            assert_matches_dense_product(&q, 5);
        }
    }
}
