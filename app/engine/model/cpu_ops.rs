//! Training ops written as loops over f32 rows for the CPU, where Loft trains.
//!
//! Composed from candle's tensor ops, an RMSNorm backward is ten passes over its input, each into a
//! fresh buffer, and candle's autograd adds a zeroed buffer and an addition for every one of them. A
//! loop that reads each row once and writes its result once does the same arithmetic at a fraction of
//! the memory traffic; rows are spread over rayon's threads, as the matrix multiply's are. Each op here
//! has a composed twin in [`super::ops`] that other devices and dtypes use, and a unit test that holds
//! the two to the same gradients.

use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

use super::vector::{exp, max, sum_of, vector_fn};

/// Whether the loops here serve this tensor: f32 on the CPU.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The f32 values a contiguous CPU tensor's layout addresses.
pub fn f32_slice<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(s) => cpu_f32(s, layout, what),
        _ => candle_core::bail!("the {what} is not on the CPU"),
    }
}

/// The f32 values of a contiguous CPU storage under `layout`.
pub fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let (CpuStorage::F32(values), Some((start, end))) = (storage, layout.contiguous_offsets())
    else {
        candle_core::bail!("the {what} is not a contiguous f32 tensor");
    };
    Ok(&values[start..end])
}

/// A matrix operand over a slice: `rows × cols` with arbitrary row and column strides (so a transposed
/// view, or one head's columns of a wider row-major matrix, needs no copy).
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    values: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// `values` as stored: `rows × cols`, row-major.
    pub fn new(values: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(values, rows, cols, cols)
    }

    /// `rows × cols` starting at `values[0]`, rows `row_stride` apart, columns adjacent.
    pub fn strided(values: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Mat {
            values,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The transposed view.
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element the view addresses lies inside its slice.
    fn fits(&self) -> bool {
        self.rows * self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.values.len()
    }
}

/// Where a product's result goes: `rows × cols` in `values`, rows `row_stride` apart.
pub struct Dst<'a> {
    pub values: &'a mut [f32],
    pub row_stride: usize,
}

impl<'a> From<&'a mut Vec<f32>> for Dst<'a> {
    fn from(values: &'a mut Vec<f32>) -> Self {
        values.as_mut_slice().into()
    }
}

impl<'a> From<&'a mut [f32]> for Dst<'a> {
    fn from(values: &'a mut [f32]) -> Self {
        Dst {
            values,
            row_stride: 0,
        }
    }
}

/// `dst = beta · lhs · rhs`, or `dst += beta · lhs · rhs` when `accumulate`, on all of rayon's threads.
/// A plain `&mut [f32]` destination is dense `lhs.rows × rhs.cols`. Panics where the shapes do not fit
/// the buffers (a bug, never input).
pub fn matmul<'a>(dst: impl Into<Dst<'a>>, lhs: Mat, rhs: Mat, beta: f32, accumulate: bool) {
    let threads = candle_core::utils::get_num_threads();
    gemm_with(dst.into(), lhs, rhs, beta, accumulate, threads);
}

/// [`matmul`] on the calling thread only: for the many small products of per-head attention, which
/// run in parallel with each other.
pub fn matmul_here<'a>(dst: impl Into<Dst<'a>>, lhs: Mat, rhs: Mat, beta: f32, accumulate: bool) {
    gemm_with(dst.into(), lhs, rhs, beta, accumulate, 1);
}

/// `beta · lhs · rhs` as a new row-major `lhs.rows × rhs.cols` buffer, on all of rayon's threads. The
/// kernel writes each element once: a zeroed buffer would be written twice, and zeroing it is serial
/// work on the calling thread while the pool waits (the largest item of the main thread's profile).
pub fn product(lhs: Mat, rhs: Mat, beta: f32) -> Vec<f32> {
    check_operands(lhs, rhs);
    let (m, n) = (lhs.rows, rhs.cols);
    if m * n == 0 || lhs.cols == 0 {
        return vec![0f32; m * n];
    }
    let mut values = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the buffer holds m·n values in rows of n; without accumulation the kernel writes every
    // one of them and reads none, and the length covers them only once they are written.
    unsafe {
        gemm_raw(
            values.as_mut_ptr(),
            n,
            lhs,
            rhs,
            beta,
            false,
            candle_core::utils::get_num_threads(),
        );
        values.set_len(m * n);
    }
    values
}

fn gemm_with(dst: Dst, lhs: Mat, rhs: Mat, beta: f32, accumulate: bool, threads: usize) {
    check_operands(lhs, rhs);
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let row_stride = if dst.row_stride == 0 {
        n
    } else {
        dst.row_stride
    };
    assert!(
        m * n == 0 || (m - 1) * row_stride + n <= dst.values.len(),
        "matmul: destination too small"
    );
    if m * n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst.values[r * row_stride..r * row_stride + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: the assert above keeps the destination's rows inside its slice, and `dst` is borrowed
    // mutably, so it aliases neither operand.
    unsafe {
        gemm_raw(
            dst.values.as_mut_ptr(),
            row_stride,
            lhs,
            rhs,
            beta,
            accumulate,
            threads,
        )
    }
}

/// Panics where the operands do not fit each other or their slices (a bug, never input).
fn check_operands(lhs: Mat, rhs: Mat) {
    assert_eq!(rhs.rows, lhs.cols, "matmul: inner dimensions differ");
    assert!(lhs.fits() && rhs.fits(), "matmul: operand too small");
}

/// The product into `m × n` values at `dst`, rows `row_stride` apart (`k > 0`, `m · n > 0`).
///
/// # Safety
/// `dst` must address `(m − 1) · row_stride + n` writable values that alias neither operand, and
/// hold initialised values where `accumulate` reads them.
unsafe fn gemm_raw(
    dst: *mut f32,
    row_stride: usize,
    lhs: Mat,
    rhs: Mat,
    beta: f32,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    check_operands(lhs, rhs);
    assert!(row_stride >= n, "matmul: destination rows overlap");
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts keep every index gemm computes from the operands' strides inside their
    // slices; the caller vouches for the destination.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            row_stride as isize,
            accumulate,
            lhs.values.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.values.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Run `f` on the f32 values of each tensor (made contiguous first).
fn with_values<R>(tensors: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
    let tensors = tensors
        .iter()
        .map(|t| t.contiguous())
        .collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let slices = guards
        .iter()
        .map(|(s, l)| f32_slice(s, l, "tensor"))
        .collect::<Result<Vec<_>>>()?;
    f(&slices)
}

type Forward1 = dyn Fn(&[f32], &Shape) -> Result<(Vec<f32>, Shape)> + Send + Sync;
type Backward1 = dyn Fn(&[f32], &[f32], &[f32]) -> Result<Vec<f32>> + Send + Sync;
type Forward2 = dyn Fn(&[f32], &[f32]) -> Result<Vec<f32>> + Send + Sync;
type Backward2 = dyn Fn(&[f32], &[f32], &[f32]) -> Result<(Vec<f32>, Vec<f32>)> + Send + Sync;

/// A one-input op whose forward and backward passes are functions of row-major f32 values.
struct Rows1 {
    name: &'static str,
    /// `x` (with its shape) → `y` and its shape.
    forward: Box<Forward1>,
    /// `(x, y, dy)` → `dx`.
    backward: Box<Backward1>,
}

impl CustomOp1 for Rows1 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(storage, layout, "input")?;
        let (y, shape) = (self.forward)(x, layout.shape())?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_values(&[x, y, dy], |v| (self.backward)(v[0], v[1], v[2]))?;
        Tensor::from_vec(dx, x.shape(), x.device()).map(Some)
    }
}

/// A two-input op of the same kind: `(a, b)` → `y`, and `(a, b, dy)` → `(da, db)`.
struct Rows2 {
    name: &'static str,
    forward: Box<Forward2>,
    backward: Box<Backward2>,
}

impl CustomOp2 for Rows2 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if a_layout.shape() != b_layout.shape() {
            candle_core::bail!("{}: the inputs' shapes differ", self.name);
        }
        let y = (self.forward)(
            cpu_f32(a, a_layout, "input")?,
            cpu_f32(b, b_layout, "input")?,
        )?;
        Ok((CpuStorage::F32(y), a_layout.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (da, db) = with_values(&[a, b, dy], |v| (self.backward)(v[0], v[1], v[2]))?;
        let grad = |g: Vec<f32>, t: &Tensor| -> Result<Option<Tensor>> {
            if !t.track_op() {
                return Ok(None);
            }
            Tensor::from_vec(g, t.shape(), t.device()).map(Some)
        };
        Ok((grad(da, a)?, grad(db, b)?))
    }
}

/// The output's rows of `width` values, filled in parallel by `f(row_index, row)`.
fn map_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    out.par_chunks_mut(width.max(1))
        .enumerate()
        .for_each(|(r, row)| f(r, row));
}

vector_fn! {
    /// One row of RMSNorm: `out = w ⊙ x / rms(x)`.
    fn rms_norm_row(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        let s = inv_rms(x, eps);
        for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
            *o = v * s * w;
        }
    }
}

vector_fn! {
    /// One row of RMSNorm's input gradient, `dx = (g − x̂ · mean(g ⊙ x̂)) / rms` with g = dy ⊙ w.
    fn rms_norm_grad_row(dx: &mut [f32], x: &[f32], dy: &[f32], w: &[f32], eps: f32) {
        let s = inv_rms(x, eps);
        let width = x.len();
        let mean = sum_of(width, |i| dy[i] * w[i] * x[i]) * s / width as f32;
        for (((o, v), d), w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
            *o = (d * w - v * s * mean) * s;
        }
    }
}

#[inline(always)]
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let mean = sum_of(row.len(), |i| row[i] * row[i]) / row.len() as f32;
    1.0 / (mean + eps).sqrt()
}

/// RMSNorm with a frozen scale: `y = w ⊙ x / rms(x)`, `rms = sqrt(mean(x²) + eps)`; with x̂ = x / rms
/// and g = dy ⊙ w, `dx = (g − x̂ · mean(g ⊙ x̂)) / rms`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let width = x.dim(candle_core::D::Minus1)?;
    let w: Arc<Vec<f32>> = Arc::new(weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?);
    if w.len() != width {
        candle_core::bail!("rms-norm: {} weights for rows of {width}", w.len());
    }
    let eps = eps as f32;
    let w_f = w.clone();
    let forward = move |x: &[f32], shape: &Shape| {
        let mut y = vec![0f32; x.len()];
        map_rows(&mut y, width, |r, out| {
            rms_norm_row(out, &x[r * width..(r + 1) * width], &w_f, eps)
        });
        Ok((y, shape.clone()))
    };
    let backward = move |x: &[f32], _y: &[f32], dy: &[f32]| {
        let mut dx = vec![0f32; x.len()];
        map_rows(&mut dx, width, |r, out| {
            let rows = r * width..(r + 1) * width;
            rms_norm_grad_row(out, &x[rows.clone()], &dy[rows], &w, eps)
        });
        Ok(dx)
    };
    x.contiguous()?.apply_op1(Rows1 {
        name: "rms-norm",
        forward: Box::new(forward),
        backward: Box::new(backward),
    })
}

/// The gated MLP's activation: `act(gate) ⊙ up`, with SiLU or tanh-approximated GELU.
pub fn gated(gate: &Tensor, up: &Tensor, gelu: bool) -> Result<Tensor> {
    let forward = move |g: &[f32], u: &[f32]| {
        let mut y = vec![0f32; g.len()];
        let n = ELEMENTS_PER_TASK;
        y.par_chunks_mut(n)
            .zip(g.par_chunks(n).zip(u.par_chunks(n)))
            .for_each(|(y, (g, u))| gated_chunk(y, g, u, gelu));
        Ok(y)
    };
    let backward = move |g: &[f32], u: &[f32], dy: &[f32]| {
        let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
        let n = ELEMENTS_PER_TASK;
        dg.par_chunks_mut(n)
            .zip(du.par_chunks_mut(n))
            .zip(g.par_chunks(n).zip(u.par_chunks(n)).zip(dy.par_chunks(n)))
            .for_each(|((dg, du), ((g, u), dy))| gated_grad_chunk(dg, du, g, u, dy, gelu));
        Ok((dg, du))
    };
    gate.contiguous()?.apply_op2(
        &up.contiguous()?,
        Rows2 {
            name: "gated-activation",
            forward: Box::new(forward),
            backward: Box::new(backward),
        },
    )
}

/// Elements per parallel task of the element-wise ops.
const ELEMENTS_PER_TASK: usize = 1 << 14;

vector_fn! {
    /// `y = act(g) ⊙ u`.
    fn gated_chunk(y: &mut [f32], g: &[f32], u: &[f32], gelu: bool) {
        for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
            *y = if gelu { gelu_tanh(*g) } else { silu(*g) } * u;
        }
    }
}

vector_fn! {
    /// The gradients of `act(g) ⊙ u` for the output gradient `dy`.
    fn gated_grad_chunk(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], dy: &[f32], gelu: bool) {
        // One bound for every slice, so the loop indexes without bounds checks and vectorizes.
        for i in 0..g.len().min(dg.len()).min(du.len()).min(u.len()).min(dy.len()) {
            let (a, da) = if gelu {
                gelu_tanh_grad(g[i])
            } else {
                silu_grad(g[i])
            };
            dg[i] = dy[i] * u[i] * da;
            du[i] = dy[i] * a;
        }
    }
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// SiLU and its derivative σ(x)·(1 + x·(1 − σ(x))).
#[inline(always)]
fn silu_grad(x: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + exp(-x));
    (x * s, s * (1.0 + x * (1.0 - s)))
}

const GELU_C: f32 = 0.797_884_6; // √(2/π)

#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (GELU_C * (x + 0.044715 * x * x * x)).tanh())
}

/// GELU (tanh approximation) and its derivative.
#[inline(always)]
fn gelu_tanh_grad(x: f32) -> (f32, f32) {
    let t = (GELU_C * (x + 0.044715 * x * x * x)).tanh();
    let value = 0.5 * x * (1.0 + t);
    let grad = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
    (value, grad)
}

/// Per-row negative log-likelihood of `targets (n)` under `logits (n, vocab)`: `lse(row) − row[target]`,
/// and `d logits = (softmax − onehot) · dy`. Each row's log-sum-exp is kept from the forward pass, so
/// each pass reads the logits once and the backward pass writes the gradient once.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (rows, vocab) = logits.dims2()?;
    let targets: Arc<Vec<u32>> = Arc::new(targets.flatten_all()?.to_vec1()?);
    if targets.len() != rows {
        candle_core::bail!("cross-entropy: {} targets for {rows} rows", targets.len());
    }
    if let Some(t) = targets.iter().find(|t| **t as usize >= vocab) {
        candle_core::bail!("cross-entropy: target {t} is outside the vocabulary of {vocab}");
    }
    let lse_kept: Arc<Mutex<Vec<f32>>> = Arc::default();
    let (t_f, lse_f) = (targets.clone(), lse_kept.clone());
    let forward = move |x: &[f32], _shape: &Shape| {
        let lse: Vec<f32> = x.par_chunks(vocab).map(log_sum_exp).collect();
        let nll = lse
            .iter()
            .enumerate()
            .map(|(r, l)| l - x[r * vocab + t_f[r] as usize])
            .collect();
        *lse_f.lock().unwrap_or_else(|e| e.into_inner()) = lse;
        Ok((nll, Shape::from(rows)))
    };
    let backward = move |x: &[f32], _y: &[f32], dy: &[f32]| {
        let mut lse = lse_kept.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if lse.len() != rows {
            lse = x.par_chunks(vocab).map(log_sum_exp).collect();
        }
        let mut dx = vec![0f32; x.len()];
        map_rows(&mut dx, vocab, |r, out| {
            softmax_times(out, &x[r * vocab..(r + 1) * vocab], lse[r], dy[r]);
            out[targets[r] as usize] -= dy[r];
        });
        Ok(dx)
    };
    logits.contiguous()?.apply_op1(Rows1 {
        name: "cross-entropy",
        forward: Box::new(forward),
        backward: Box::new(backward),
    })
}

vector_fn! {
    fn log_sum_exp(row: &[f32]) -> f32 {
        let max = max(row);
        if max == f32::NEG_INFINITY {
            return max;
        }
        max + sum_of(row.len(), |i| exp(row[i] - max)).ln()
    }
}

vector_fn! {
    /// `out = softmax(row) · dy`, with the row's log-sum-exp given.
    fn softmax_times(out: &mut [f32], row: &[f32], lse: f32, dy: f32) {
        for (o, v) in out.iter_mut().zip(row) {
            *o = exp(v - lse) * dy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::ops::{max_abs_diff as max_diff, probed_gradients};
    use candle_core::{Device, Var};

    /// The gated activation's output and both gradients equal autograd's through candle's own silu and
    /// gelu (tanh) ops. (RMSNorm and cross-entropy are held to their composed twins in `ops`' tests,
    /// which reach these loops for tracked f32 CPU tensors.)
    #[test]
    fn gated_activation_matches_autograd() {
        let device = Device::Cpu;
        for gelu in [false, true] {
            let g = Var::from_tensor(&Tensor::randn(0f32, 2.0, (4, 9), &device).unwrap()).unwrap();
            let u = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 9), &device).unwrap()).unwrap();
            let weights = Tensor::randn(0f32, 1.0, (4, 9), &device).unwrap();
            let mine = gated(g.as_tensor(), u.as_tensor(), gelu).unwrap();
            let act = if gelu {
                g.as_tensor().gelu().unwrap()
            } else {
                candle_nn::ops::silu(g.as_tensor()).unwrap()
            };
            let reference = (act * u.as_tensor()).unwrap();
            assert!(max_diff(&mine, &reference) < 1e-5, "forward (gelu: {gelu})");
            let g1 = probed_gradients(&mine, &weights);
            let g2 = probed_gradients(&reference, &weights);
            for (name, v) in [("gate", &g), ("up", &u)] {
                let d = max_diff(
                    g1.get(v.as_tensor()).unwrap(),
                    g2.get(v.as_tensor()).unwrap(),
                );
                assert!(d < 1e-4, "d{name} differs by {d} (gelu: {gelu})");
            }
        }
    }

    /// A target outside the vocabulary is an error, not a panic or a read out of bounds.
    #[test]
    fn cross_entropy_refuses_targets_outside_the_vocabulary() {
        let device = Device::Cpu;
        let logits =
            Var::from_tensor(&Tensor::zeros((2, 5), DType::F32, &device).unwrap()).unwrap();
        let targets = Tensor::new(&[1u32, 5], &device).unwrap();
        let err = cross_entropy_rows(logits.as_tensor(), &targets).unwrap_err();
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    }
}
