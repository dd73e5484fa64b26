//! The LoRA linear layer as one op on the CPU: `y = x·W₀ᵀ + s·(dropout(x)·Aᵀ)·Bᵀ`, forward and backward
//! written with the matrix multiply kernel directly.
//!
//! Composed from candle's ops, the same layer keeps five tensors of the output's size or the input's size
//! alive until the backward pass (the base product, the update, its scaled copy, the sum, the dropped
//! input), and candle's backward allocates a zeroed gradient and adds into it for every one of those
//! nodes. Here the layer keeps nothing but its output and the small `rows × r` intermediate, and the
//! backward pass accumulates both halves of dx into one buffer. On SmolLM2 at 4 × 256 tokens that is
//! over a gigabyte less at the peak of a step.
//!
//! Used on the CPU for f32 weights, where Loft trains; other devices and dtypes take the composed path
//! in [`super::linear`], which computes the same function.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu_ops::{cpu_f32, f32_slice, matmul, matmul_here, product, Mat};
use super::frozen::Frozen;
use super::lora::{DropoutMask, KeptBits, LoraAdapter};

/// Whether [`lora_linear`] handles this input and weight.
pub fn applies(x: &Tensor, weight: &Frozen) -> bool {
    super::cpu_ops::applies(x) && weight.has_cpu_f32()
}

/// `x · Wᵀ + LoRA(x)` for `x` of shape `(rows, in)` and a frozen `weight` of shape `(out, in)`
/// (dense, or 4-bit and dequantized for each product). Gradients flow to `x` (when it is tracked)
/// and to the adapter's A and B; W gets none.
pub fn lora_linear(x: &Tensor, weight: &Frozen, adapter: &LoraAdapter) -> Result<Tensor> {
    let op = LoraMatmul {
        weight: weight.clone(),
        scale: adapter.scale as f32,
        // The key is read now: the trainer moves it on before the next micro-batch's forward pass,
        // and the backward pass must see the mask this forward pass drew.
        dropout: adapter.dropout_key().map(|key| adapter.mask(key)),
        down: Mutex::new(None),
        kept: Mutex::new(None),
    };
    x.contiguous()?
        .apply_op3(adapter.a.as_tensor(), adapter.b.as_tensor(), op)
}

struct LoraMatmul {
    weight: Frozen,
    scale: f32,
    /// The dropout mask this pass draws; `None` without dropout.
    dropout: Option<DropoutMask>,
    /// The elements the forward pass kept, for the backward pass.
    kept: Mutex<Option<KeptBits>>,
    /// `s · dropout(x) · Aᵀ` (`rows × r`) from the forward pass, for B's gradient.
    down: Mutex<Option<Vec<f32>>>,
}

/// A copy of the row-major `rows × cols` matrix `m`, transposed.
fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for (r, row) in m.chunks(cols).enumerate() {
        for (c, v) in row.iter().enumerate() {
            t[c * rows + r] = *v;
        }
    }
    t
}

impl LoraMatmul {
    /// `s · dropout(x) · Aᵀ`, `rows × r`, from the dropped input `xd`.
    fn down(&self, xd: &[f32], a: &[f32], rows: usize, rank: usize) -> Vec<f32> {
        let inp = xd.len() / rows.max(1);
        product(
            Mat::new(xd, rows, inp),
            Mat::new(a, rank, inp).t(),
            self.scale,
        )
    }

    /// The kept elements of `x` (the forward pass's, or drawn again) when this layer drops out.
    fn kept(&self, x: &[f32]) -> Option<KeptBits> {
        let drawn = self.kept.lock().unwrap_or_else(|e| e.into_inner()).take();
        drawn.or_else(|| Some(self.dropout.as_ref()?.draw(x.len())))
    }
}

impl CustomOp3 for LoraMatmul {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, inp) = x_layout.shape().dims2()?;
        let (rank, a_in) = a_layout.shape().dims2()?;
        let (out, b_rank) = b_layout.shape().dims2()?;
        let (x, a, b) = (
            cpu_f32(x, x_layout, "input")?,
            cpu_f32(a, a_layout, "lora_A")?,
            cpu_f32(b, b_layout, "lora_B")?,
        );
        if a_in != inp || b_rank != rank || self.weight.dims() != (out, inp) {
            candle_core::bail!(
                "lora-linear: shapes do not fit (x {rows}×{inp}, A {rank}×{a_in}, B {out}×{b_rank}, W {:?})",
                self.weight.dims()
            );
        }
        let kept = self.dropout.as_ref().map(|mask| mask.draw(x.len()));
        let dropped = kept.as_ref().map(|kept| kept.apply(x));
        let xd = dropped.as_deref().unwrap_or(x);
        let down = self.down(xd, a, rows, rank);
        let mut y = self.weight.with_cpu_f32(|w| {
            Ok(product(
                Mat::new(x, rows, inp),
                Mat::new(w, out, inp).t(),
                1.0,
            ))
        })?;
        matmul(
            &mut y,
            Mat::new(&down, rows, rank),
            Mat::new(b, out, rank).t(),
            1.0,
            true,
        );
        *self.down.lock().unwrap_or_else(|e| e.into_inner()) = Some(down);
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = kept;
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x_t: &Tensor,
        a_t: &Tensor,
        b_t: &Tensor,
        _y: &Tensor,
        dy_t: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy_t = dy_t.contiguous()?;
        let (rows, inp) = x_t.dims2()?;
        let (rank, _) = a_t.dims2()?;
        let (out, _) = b_t.dims2()?;
        let (xs, xl) = x_t.storage_and_layout();
        let (as_, al) = a_t.storage_and_layout();
        let (bs, bl) = b_t.storage_and_layout();
        let (dys, dyl) = dy_t.storage_and_layout();
        let x = f32_slice(&xs, xl, "input")?;
        let a = f32_slice(&as_, al, "lora_A")?;
        let b = f32_slice(&bs, bl, "lora_B")?;
        let dy = f32_slice(&dys, dyl, "output gradient")?;
        let kept = self.kept(x);
        let dropped = kept.as_ref().map(|kept| kept.apply(x));
        let xd = dropped.as_deref().unwrap_or(x);

        let down = match self.down.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(down) => down,
            None => self.down(xd, a, rows, rank),
        };
        // The adapter's gradients are thin products (r = 16 columns or rows) that keep two threads busy
        // poorly each, so the two independent chains run side by side on one thread each:
        // dB = dyᵀ · down, and d(down) = s · dy · B followed by dA = d(down)ᵀ · dropout(x).
        let (db, (d_down, da)) = rayon::join(
            || {
                // dBᵀ = downᵀ · dy, with downᵀ copied out (it is small) so the product reads rows.
                let mut db_t = vec![0f32; rank * out];
                let down_t = transposed(&down, rows, rank);
                let (down_t, dy) = (Mat::new(&down_t, rank, rows), Mat::new(dy, rows, out));
                matmul_here(&mut db_t, down_t, dy, 1.0, false);
                transposed(&db_t, rank, out)
            },
            || {
                let mut d_down = vec![0f32; rows * rank];
                let (dy_m, b_m) = (Mat::new(dy, rows, out), Mat::new(b, out, rank));
                matmul_here(&mut d_down, dy_m, b_m, self.scale, false);
                let mut da = vec![0f32; rank * inp];
                let d_down_t = transposed(&d_down, rows, rank);
                let (dd, xd_m) = (Mat::new(&d_down_t, rank, rows), Mat::new(xd, rows, inp));
                matmul_here(&mut da, dd, xd_m, 1.0, false);
                (d_down, da)
            },
        );

        let dx = if x_t.track_op() {
            let mut dx = self.weight.with_cpu_f32(|w| {
                Ok(product(Mat::new(dy, rows, out), Mat::new(w, out, inp), 1.0))
            })?;
            match &kept {
                None => matmul(
                    &mut dx,
                    Mat::new(&d_down, rows, rank),
                    Mat::new(a, rank, inp),
                    1.0,
                    true,
                ),
                Some(kept) => {
                    let through =
                        product(Mat::new(&d_down, rows, rank), Mat::new(a, rank, inp), 1.0);
                    kept.add_applied(&mut dx, &through);
                }
            }
            Some(Tensor::from_vec(dx, (rows, inp), x_t.device())?)
        } else {
            None
        };
        let device = a_t.device();
        Ok((
            dx,
            Some(Tensor::from_vec(da, (rank, inp), device)?),
            Some(Tensor::from_vec(db, (out, rank), device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::lora::{DropoutKey, LoraConfig};
    use crate::engine::model::ops::{max_abs_diff as max_diff, probed_gradients};
    use candle_core::{Device, Var};

    /// Where the fused op and the composed ops disagree for a `rows × inp` input, an `out × inp`
    /// weight and rank `r`, if anywhere: the output, or the gradient of x, A or B.
    fn lora_mismatch(
        rows: usize,
        inp: usize,
        out: usize,
        r: usize,
        dropout: f64,
    ) -> Option<String> {
        let device = Device::Cpu;
        let config = LoraConfig {
            r,
            alpha: 2.0 * r as f64,
            dropout,
            ..LoraConfig::default()
        };
        let key = DropoutKey::default();
        let mut adapter =
            LoraAdapter::init(&config, inp, out, 2, 11, key.clone(), &device).unwrap();
        // A non-zero B, so every gradient path carries signal.
        adapter.b =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (out, r), &device).unwrap()).unwrap();
        key.set(Some(42));
        let w = Tensor::randn(0f32, 1.0, (out, inp), &device).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, inp), &device).unwrap()).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (rows, out), &device).unwrap();

        let fused = lora_linear(x.as_tensor(), &Frozen::Dense(w.clone()), &adapter).unwrap();
        let composed = (x.as_tensor().matmul(&w.t().unwrap()).unwrap()
            + adapter.forward(x.as_tensor()).unwrap())
        .unwrap();
        let forward = max_diff(&fused, &composed);
        if forward >= 1e-5 {
            return Some(format!("the output differs by {forward}"));
        }
        let g1 = probed_gradients(&fused, &weights);
        let g2 = probed_gradients(&composed, &weights);
        for (name, t) in [
            ("x", x.as_tensor()),
            ("A", adapter.a.as_tensor()),
            ("B", adapter.b.as_tensor()),
        ] {
            let d = max_diff(g1.get(t).unwrap(), g2.get(t).unwrap());
            if d >= 1e-4 {
                return Some(format!("the gradient of {name} differs by {d}"));
            }
        }
        None
    }

    /// The fused op and the composed ops agree on the output and on the gradients of x, A and B,
    /// with and without dropout.
    #[test]
    fn matches_the_composed_layer() {
        for dropout in [0.0, 0.3] {
            assert_eq!(lora_mismatch(6, 7, 5, 3, dropout), None, "p={dropout}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

        /// The same over shapes, ranks and dropout rates.
        #[test]
        fn matches_over_shapes(
            rows in 1usize..10,
            inp in 1usize..13,
            out in 1usize..13,
            r in 1usize..6,
            dropout in proptest::sample::select(vec![0.0, 0.1, 0.5]),
        ) {
            proptest::prop_assert_eq!(lora_mismatch(rows, inp, out, r, dropout), None);
        }
    }

    /// With an NF4 base the op computes exactly what it computes with the dequantized base as a dense
    /// weight: output and the gradients of x, A and B.
    #[test]
    fn an_nf4_base_is_the_dequantized_dense_base() {
        use crate::engine::quant::Nf4Matrix;
        let device = Device::Cpu;
        let (rows, inp, out) = (4, 96, 10);
        let mut adapter = LoraAdapter::init(
            &LoraConfig::default(),
            inp,
            out,
            0,
            5,
            DropoutKey::default(),
            &device,
        )
        .unwrap();
        adapter.b = Var::from_tensor(
            &Tensor::randn(0f32, 1.0, (out, adapter.a.dims()[0]), &device).unwrap(),
        )
        .unwrap();
        let values: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let nf4 = Frozen::Nf4(std::sync::Arc::new(Nf4Matrix::quantize(
            &values,
            (out, inp),
            "float32",
            true,
        )));
        let dense = Frozen::Dense(nf4.to_dense(&device, candle_core::DType::F32).unwrap());
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, inp), &device).unwrap()).unwrap();
        let run = |w: &Frozen| {
            let y = lora_linear(x.as_tensor(), w, &adapter).unwrap();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let get = |t: &Tensor| {
                grads
                    .get(t)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            [
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                get(x.as_tensor()),
                get(adapter.a.as_tensor()),
                get(adapter.b.as_tensor()),
            ]
        };
        assert_eq!(run(&nf4), run(&dense));
    }

    /// An input outside the graph (the first layer's) gets no gradient, and A and B still do.
    #[test]
    fn untracked_input_gets_no_gradient() {
        let device = Device::Cpu;
        let adapter = LoraAdapter::init(
            &LoraConfig::default(),
            8,
            4,
            0,
            1,
            DropoutKey::default(),
            &device,
        )
        .unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 8), &device).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 8), &device).unwrap();
        let grads = lora_linear(&x, &Frozen::Dense(w), &adapter)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(adapter.a.as_tensor()).is_some());
        assert!(grads.get(adapter.b.as_tensor()).is_some());
    }
}
