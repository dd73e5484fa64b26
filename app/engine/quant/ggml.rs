//! A GGUF matrix kept in its own quantized blocks (Q4_0, Q4_1, Q8_0, the k-quants…): the frozen base
//! of a QLoRA run that trains against exactly the weights llama.cpp and Ollama run.
//!
//! The blocks stay as candle read them from the file; each product dequantizes them with ggml's own
//! rules (candle's `GgmlType::to_float`) into a buffer the caller reuses. llama.cpp stores a Llama's
//! q/k projections with their rows permuted for its interleaved rope; every row is a whole number of
//! blocks, so the rows are written straight into Hugging Face's order as they are dequantized, and
//! the values equal those of the dense load (dequantize, then un-permute) exactly.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use rayon::prelude::*;

/// Rows dequantized per parallel task: enough work per task for matrices of a few hundred columns.
const ROWS_PER_TASK: usize = 16;

#[derive(Debug)]
pub struct GgmlMatrix {
    /// `(out, in)` in Hugging Face's layout.
    pub shape: (usize, usize),
    blocks: QTensor,
    /// For a Llama q/k projection stored by llama.cpp, the head count its rows were permuted with.
    permuted_heads: Option<usize>,
}

impl GgmlMatrix {
    /// `blocks`: a 2-D `out × in` tensor on the CPU in a block type (not f32/f16/bf16, which stay
    /// dense). `permuted_heads`: the head count when its rows are in llama.cpp's rope order.
    pub fn new(blocks: QTensor, permuted_heads: Option<usize>) -> candle_core::Result<GgmlMatrix> {
        let (out, inp) = blocks.shape().dims2()?;
        if !blocks.device().is_cpu() {
            candle_core::bail!("GGUF blocks must be read onto the CPU");
        }
        if !is_block_type(blocks.dtype()) {
            candle_core::bail!("{:?} is not a block-quantized type", blocks.dtype());
        }
        if let Some(heads) = permuted_heads {
            if heads == 0 || out % (2 * heads) != 0 {
                candle_core::bail!("{out} rows cannot be split into {heads} rope-permuted heads");
            }
        }
        Ok(GgmlMatrix {
            shape: (out, inp),
            blocks,
            permuted_heads,
        })
    }

    pub fn dtype(&self) -> GgmlDType {
        self.blocks.dtype()
    }

    pub fn len(&self) -> usize {
        self.shape.0 * self.shape.1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of blocks held (scales included).
    pub fn bytes(&self) -> u64 {
        self.blocks.storage_size_in_bytes() as u64
    }

    /// Every value in f32, row-major in Hugging Face's layout, into `out` (`len()` values).
    pub fn dequantize_into(&self, out: &mut [f32]) -> candle_core::Result<()> {
        if out.len() != self.len() {
            candle_core::bail!(
                "dequantize: the output holds {} values, not {}",
                out.len(),
                self.len()
            );
        }
        match self.dtype() {
            GgmlDType::Q4_0 => self.rows_into::<BlockQ4_0>(out),
            GgmlDType::Q4_1 => self.rows_into::<BlockQ4_1>(out),
            GgmlDType::Q5_0 => self.rows_into::<BlockQ5_0>(out),
            GgmlDType::Q5_1 => self.rows_into::<BlockQ5_1>(out),
            GgmlDType::Q8_0 => self.rows_into::<BlockQ8_0>(out),
            GgmlDType::Q8_1 => self.rows_into::<BlockQ8_1>(out),
            GgmlDType::Q2K => self.rows_into::<BlockQ2K>(out),
            GgmlDType::Q3K => self.rows_into::<BlockQ3K>(out),
            GgmlDType::Q4K => self.rows_into::<BlockQ4K>(out),
            GgmlDType::Q5K => self.rows_into::<BlockQ5K>(out),
            GgmlDType::Q6K => self.rows_into::<BlockQ6K>(out),
            GgmlDType::Q8K => self.rows_into::<BlockQ8K>(out),
            other => candle_core::bail!("{other:?} is not a block-quantized type"),
        }
    }

    pub fn dequantize(&self) -> candle_core::Result<Vec<f32>> {
        let mut out = vec![0f32; self.len()];
        self.dequantize_into(&mut out)?;
        Ok(out)
    }

    fn rows_into<T: GgmlType>(&self, out: &mut [f32]) -> candle_core::Result<()> {
        let data = self.blocks.data()?;
        let blocks = blocks_of::<T>(&data)?;
        let (rows, inp) = self.shape;
        let per_row = inp / T::BLCK_SIZE;
        if inp % T::BLCK_SIZE != 0 || blocks.len() != rows * per_row {
            candle_core::bail!(
                "{rows}×{inp} does not fit {} blocks of {}",
                blocks.len(),
                T::BLCK_SIZE
            );
        }
        out.par_chunks_mut(inp)
            .with_min_len(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(row, values)| {
                let stored = self.stored_row(row);
                T::to_float(&blocks[stored * per_row..(stored + 1) * per_row], values);
            });
        Ok(())
    }

    /// The stored row that holds Hugging Face row `row`. llama.cpp's permutation views each head's
    /// rows as `(2, half)` and stores them as `(half, 2)`.
    fn stored_row(&self, row: usize) -> usize {
        let Some(heads) = self.permuted_heads else {
            return row;
        };
        let per_head = self.shape.0 / heads;
        let half = per_head / 2;
        let (head, within) = (row / per_head, row % per_head);
        let (pair, index) = (within / half, within % half);
        head * per_head + index * 2 + pair
    }
}

/// Whether a GGUF tensor of this type is kept in blocks (the float types load dense).
pub fn is_block_type(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// The blocks of a CPU `QTensor` of type `T`, borrowed from its storage.
fn blocks_of<T: GgmlType>(data: &[u8]) -> candle_core::Result<&[T]> {
    let size = std::mem::size_of::<T>();
    if !data.len().is_multiple_of(size)
        || data.as_ptr().align_offset(std::mem::align_of::<T>()) != 0
    {
        candle_core::bail!("{:?} blocks are not laid out as expected", T::DTYPE);
    }
    // SAFETY: a CPU QTensor of dtype `T::DTYPE` stores a `Vec<T>` (candle's `GgmlDType::from_data` /
    // `ggml_file::from_raw_data`), and `QTensor::data` lends exactly that vector's bytes; length and
    // alignment are checked above.
    Ok(unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<T>(), data.len() / size) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn matrix(out: usize, inp: usize, dtype: GgmlDType) -> (Tensor, QTensor) {
        let w = Tensor::randn(0f32, 1.0, (out, inp), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        (w, q)
    }

    /// Every block type candle dequantizes gives the same values through reused rows as through
    /// candle's own whole-tensor dequantization.
    #[test]
    fn blocks_dequantize_as_candle_does() {
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let (_, q) = matrix(6, 512, dtype);
            let expected = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let m = GgmlMatrix::new(q, None).unwrap();
            assert_eq!(m.dequantize().unwrap(), expected, "{dtype:?}");
            assert_eq!(
                m.bytes() as usize,
                6 * 512 / dtype.block_size() * dtype.type_size()
            );
        }
    }

    /// Rows come out in Hugging Face's order: llama.cpp's permutation of a matrix whose rows hold
    /// their own index is undone, with the values of dequantizing first and un-permuting after.
    #[test]
    fn permuted_rows_come_back_in_hugging_face_order() {
        // Three rows per half-head, so the permutation is not its own inverse.
        let (heads, out, inp) = (2, 12, 32);
        let half = out / heads / 2;
        let hf = Tensor::arange(0f32, out as f32, &Device::Cpu)
            .unwrap()
            .reshape((out, 1))
            .unwrap()
            .broadcast_as((out, inp))
            .unwrap()
            .contiguous()
            .unwrap();
        // llama.cpp: w.reshape(heads, 2, out/heads/2, in).swapaxes(1, 2).reshape(out, in)
        let stored = hf
            .reshape((heads, 2, half, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((out, inp))
            .unwrap();
        let q = QTensor::quantize(&stored, GgmlDType::Q8_0).unwrap();
        let unpermuted = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .reshape((heads, half, 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let values = GgmlMatrix::new(q, Some(heads))
            .unwrap()
            .dequantize()
            .unwrap();
        assert_eq!(values, unpermuted);
        for (row, chunk) in values.chunks(inp).enumerate() {
            assert!(
                (chunk[0] - row as f32).abs() < 0.1,
                "row {row} holds {}",
                chunk[0]
            );
        }
    }

    #[test]
    fn float_types_and_bad_shapes_are_refused() {
        let w = Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let f16 = QTensor::quantize(&w, GgmlDType::F16).unwrap();
        assert!(GgmlMatrix::new(f16, None).is_err());
        let (_, q) = matrix(6, 32, GgmlDType::Q4_0);
        assert!(GgmlMatrix::new(q, Some(4)).is_err());
        let (_, q) = matrix(6, 32, GgmlDType::Q4_0);
        let mut short = vec![0f32; 6 * 32 - 1];
        assert!(GgmlMatrix::new(q, None)
            .unwrap()
            .dequantize_into(&mut short)
            .is_err());
    }
}
