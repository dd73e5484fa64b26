//! 4-bit NormalFloat (NF4) weights with double quantization, bit for bit as bitsandbytes 0.50 makes
//! and reads them (`../shared/reference/qlora-bnb.md` §1a has every rule and where it was read).
//!
//! A matrix is flattened row-major and cut into blocks of 64 values (blocks run across row ends).
//! Each block keeps its absolute maximum; each value becomes the index of the nearest of 16 NormalFloat
//! levels after dividing by it, two indices per byte with the first in the high nibble. With double
//! quantization the absmax values lose their mean and are quantized again, 8 bits each in blocks of
//! 256 against bitsandbytes' signed dynamic map, keeping one f32 scale per 256 blocks: 4.127 bits per
//! weight in all, against 32 for f32.
//!
//! Every operation that bitsandbytes performs in f32 is performed here in f32 in the same order, so the
//! packed bytes, the quantized absmax and the dequantized values are identical to theirs (the tests
//! compare with fixtures that bitsandbytes wrote).

use rayon::prelude::*;

/// The 16 NormalFloat levels (`get_4bit_type("nf4")`): quantiles of N(0, 1) scaled to [-1, 1].
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Values per absmax block (bitsandbytes' and transformers' default for 4-bit weights).
pub const BLOCK: usize = 64;
/// Absmax values per block of the second quantization.
pub const NESTED_BLOCK: usize = 256;

/// How each block's absmax is kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 per block (`bnb_4bit_use_double_quant=False`).
    Plain(Vec<f32>),
    /// Double quantization: `absmax[b] = map[codes[b]] · scales[b / block] + offset`.
    Double(DoubleQuant),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DoubleQuant {
    /// One 8-bit code per 64-value block (bitsandbytes' `absmax`, u8).
    pub codes: Vec<u8>,
    /// One f32 per `block` codes (`nested_absmax`).
    pub scales: Vec<f32>,
    /// The 256 levels the codes index (`nested_quant_map`).
    pub map: Vec<f32>,
    /// The mean that was subtracted before quantizing (`nested_offset`).
    pub offset: f32,
    /// Codes per scale (`nested_blocksize`, 256).
    pub block: usize,
}

/// A frozen matrix in NF4: what a QLoRA base keeps instead of its dense weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Matrix {
    /// `(out, in)`, as the dense weight was.
    pub shape: (usize, usize),
    /// Values per absmax block (64).
    pub block: usize,
    /// Two 4-bit codes per byte, the first in the high nibble; `ceil(out·in / 2)` bytes.
    pub packed: Vec<u8>,
    pub absmax: Absmax,
    /// The name of the dtype it was quantized from ("float32", "bfloat16", "float16"): bitsandbytes
    /// records it, and dequantizes to it.
    pub source_dtype: String,
}

impl Nf4Matrix {
    /// Quantize `values` (row-major `rows × cols`, already widened to f32 from `source_dtype`) as
    /// bitsandbytes does on the CPU: NF4 in blocks of 64, and, with `double`, the absmax values again
    /// in 8 bits, blocks of 256.
    pub fn quantize(
        values: &[f32],
        shape: (usize, usize),
        source_dtype: &str,
        double: bool,
    ) -> Nf4Matrix {
        debug_assert_eq!(values.len(), shape.0 * shape.1);
        let (packed, absmax) = quantize_nf4(values, BLOCK);
        let absmax = match double {
            true => Absmax::Double(DoubleQuant::quantize(&absmax, torch_mean(&absmax))),
            false => Absmax::Plain(absmax),
        };
        Nf4Matrix {
            shape,
            block: BLOCK,
            packed,
            absmax,
            source_dtype: source_dtype.to_string(),
        }
    }

    pub fn len(&self) -> usize {
        self.shape.0 * self.shape.1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn blocks(&self) -> usize {
        self.len().div_ceil(self.block)
    }

    /// Each block's absmax in f32, as bitsandbytes' dequantization computes it.
    pub fn block_absmax(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::Plain(a) => a.clone(),
            Absmax::Double(dq) => dq.dequantize(),
        }
    }

    /// Every value in f32, row-major, into `out` (`len()` values): `level[code] · absmax[block]`, one
    /// f32 multiply each, as bitsandbytes' kernels compute them.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        let absmax = self.block_absmax();
        self.dequantize_with(&absmax, out);
    }

    /// [`Self::dequantize_into`] with the absmax already dequantized (training dequantizes the same
    /// matrix twice per step, and the absmax is the small part).
    pub fn dequantize_with(&self, absmax: &[f32], out: &mut [f32]) {
        let n = self.len();
        assert_eq!(
            out.len(),
            n,
            "dequantize: the output holds {} values, not {n}",
            out.len()
        );
        // Blocks hold an even number of values, so each starts on a byte boundary and a byte's two
        // codes share a scale. Tasks of many blocks keep rayon's overhead small.
        let block = self.block;
        debug_assert!(block.is_multiple_of(2));
        const BLOCKS_PER_TASK: usize = 256;
        out.par_chunks_mut(block * BLOCKS_PER_TASK)
            .enumerate()
            .for_each(|(task, values)| {
                let first = task * BLOCKS_PER_TASK;
                for (k, chunk) in values.chunks_mut(block).enumerate() {
                    let b = first + k;
                    let scale = absmax[b];
                    let bytes = &self.packed[b * block / 2..];
                    let odd_at = chunk.len() / 2;
                    let mut pairs = chunk.chunks_exact_mut(2);
                    for (pair, &byte) in (&mut pairs).zip(bytes) {
                        pair[0] = NF4_LEVELS[(byte >> 4) as usize] * scale;
                        pair[1] = NF4_LEVELS[(byte & 0x0f) as usize] * scale;
                    }
                    if let [last] = pairs.into_remainder() {
                        let byte = bytes[odd_at];
                        *last = NF4_LEVELS[(byte >> 4) as usize] * scale;
                    }
                }
            });
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.len()];
        self.dequantize_into(&mut out);
        out
    }

    /// Bytes held: packed codes, absmax (codes and scales, or f32), the maps.
    pub fn bytes(&self) -> u64 {
        let absmax = match &self.absmax {
            Absmax::Plain(a) => 4 * a.len(),
            Absmax::Double(dq) => dq.codes.len() + 4 * (dq.scales.len() + dq.map.len()) + 4,
        };
        (self.packed.len() + absmax + 4 * NF4_LEVELS.len()) as u64
    }
}

/// bitsandbytes' `quantize_4bit` (nf4) on the CPU: the packed codes and each block's absmax.
fn quantize_nf4(values: &[f32], block: usize) -> (Vec<u8>, Vec<f32>) {
    let n = values.len();
    let full = n - n % block;
    // Midpoints between neighbouring levels, in f32 as torch computes `(code[:-1] + code[1:]) / 2`.
    let bounds: [f32; 15] = std::array::from_fn(|k| (NF4_LEVELS[k] + NF4_LEVELS[k + 1]) / 2.0);
    // `torch.bucketize(right=False)`: the number of bounds strictly below the value, so a value
    // exactly on a midpoint takes the lower level.
    let code = |s: f32| bounds.iter().filter(|&&m| m < s).count() as u8;
    let mut codes = vec![0u8; n + n % 2];
    let mut absmax: Vec<f32> = Vec::with_capacity(n.div_ceil(block));
    codes[..full]
        .par_chunks_mut(block)
        .zip(values[..full].par_chunks(block))
        .map(|(out, x)| {
            let a = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            // Full blocks multiply by the f32 reciprocal of the (clamped) absmax.
            let inv = 1.0 / a.max(MIN_ABSMAX);
            for (o, v) in out.iter_mut().zip(x) {
                *o = code((v * inv).clamp(-1.0, 1.0));
            }
            a
        })
        .collect_into_vec(&mut absmax);
    if full < n {
        // The final partial block divides instead, and stores its clamped absmax.
        let tail = &values[full..];
        let a = tail
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(MIN_ABSMAX);
        for (o, v) in codes[full..n].iter_mut().zip(tail) {
            *o = code((v / a).clamp(-1.0, 1.0));
        }
        absmax.push(a);
    }
    if n % 2 == 1 {
        // An odd count is padded with a 0.0 value before packing.
        codes[n] = code(0.0);
    }
    let packed = codes.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
    (packed, absmax)
}

/// `absmax.clamp(min=1e-38)` in bitsandbytes: what an all-zero block divides by.
const MIN_ABSMAX: f32 = 1e-38;

impl DoubleQuant {
    /// bitsandbytes' `quantize_blockwise(absmax - offset, blocksize=256)` on the CPU, with its signed
    /// dynamic map and its 65 536-entry lookup table (not always the exact nearest code; see §1a).
    pub fn quantize(absmax: &[f32], offset: f32) -> DoubleQuant {
        let map = dynamic_map();
        let lut = lookup_table(&map);
        let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
        let mut codes = vec![0u8; centred.len()];
        let scales = codes
            .chunks_mut(NESTED_BLOCK)
            .zip(centred.chunks(NESTED_BLOCK))
            .map(|(out, x)| {
                let m = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                if m == 0.0 {
                    out.fill(0);
                    return m;
                }
                let inv = 1.0 / m;
                for (o, v) in out.iter_mut().zip(x) {
                    *o = lut[lut_index(v * inv)];
                }
                m
            })
            .collect();
        DoubleQuant {
            codes,
            scales,
            map,
            offset,
            block: NESTED_BLOCK,
        }
    }

    /// Each block's absmax: `RN(RN(map[code] · scale) + offset)`, two f32 roundings (no fused
    /// multiply-add), as bitsandbytes' kernels compute it.
    pub fn dequantize(&self) -> Vec<f32> {
        self.codes
            .iter()
            .enumerate()
            .map(|(b, &c)| {
                let scaled =
                    std::hint::black_box(self.map[c as usize] * self.scales[b / self.block]);
                scaled + self.offset
            })
            .collect()
    }
}

/// `csrc/cpu_ops.cpp` `norm_to_lut_index`.
fn lut_index(v: f32) -> usize {
    let v = v.clamp(-1.0, 1.0);
    ((v + 1.0) * 0.5 * 65535.0 + 0.5) as u16 as usize
}

/// `csrc/cpu_ops.cpp` `build_quantize_lut`: for each of 65 536 evenly spaced values in [-1, 1], the
/// first code whose midpoint with the next is not below it.
fn lookup_table(map: &[f32]) -> Vec<u8> {
    let mids: Vec<f32> = map.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let mut code = 0usize;
    (0..65536u32)
        .map(|i| {
            let v = -1.0f32 + (2.0 * i as f32) / 65535.0;
            while code < mids.len() && mids[code] < v {
                code += 1;
            }
            code as u8
        })
        .collect()
}

/// bitsandbytes' `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`: for each
/// decade 10⁻⁶ … 10⁰, `2^i` evenly spaced fractions in (0.1, 1) and their negatives, plus 0 and 1.
pub fn dynamic_map() -> Vec<f32> {
    const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut data = Vec::with_capacity(256);
    for (i, decade) in DECADES.iter().enumerate() {
        let bounds = torch_linspace(0.1, 1.0, (1 << i) + 1);
        let scale = *decade as f32;
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-scale * mean);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    data
}

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU: the first half counts up from
/// `start`, the second half down from `end`, with an f32 step and one rounding per value (torch's
/// compiled kernel fuses the multiply and the add: a separately rounded product gives 12 of the 65
/// values of the finest decade one ulp off, and with them 42 of the 256 map entries).
fn torch_linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| match i < half {
            true => step.mul_add(i as f32, start),
            false => (-step).mul_add((steps - i - 1) as f32, end),
        })
        .collect()
}

/// The mean bitsandbytes subtracts before the second quantization: `absmax.mean()`, which torch on the
/// CPU computes as its f32 sum divided by the count. The sum follows torch's own order (below), so the
/// offset, and every code quantized against it, is bitsandbytes' to the bit.
pub fn torch_mean(values: &[f32]) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    torch_sum(values) / values.len() as f32
}

/// torch's f32 sum of a contiguous vector on the CPU (`aten/src/ATen/native/cpu/SumKernel.cpp`,
/// `cascade_sum`): 8-lane vectors summed by `row_sum` (four interleaved accumulators, each a cascade of
/// partial sums), then the scalar tail, then the lanes in order. Below 8 values it is the same
/// `row_sum` over single values. Checked bit for bit against torch 2.15 on random vectors of up to
/// 40 000 values. torch splits a sum over 32 768 values or more across its threads, so for such
/// inputs (matrices over 2M weights) bitsandbytes' own offset depends on its thread count; this is
/// the one-thread order.
fn torch_sum(values: &[f32]) -> f32 {
    const LANES: usize = 8;
    if values.len() < LANES {
        return 0.0 + row_sum::<1>(values)[0];
    }
    let vectors = values.len() / LANES;
    let lanes = row_sum::<LANES>(&values[..vectors * LANES]);
    let tail = values[vectors * LANES..].iter().fold(0f32, |s, &v| s + v);
    lanes.iter().fold(tail, |s, &v| s + v)
}

/// aten `row_sum`: the values as items of `W` lanes, summed by four interleaved accumulators
/// (`multi_row_sum`), leftover items into the first, then the four added in order.
fn row_sum<const W: usize>(values: &[f32]) -> [f32; W] {
    const ILP: usize = 4;
    let item = |i: usize| -> [f32; W] { std::array::from_fn(|l| values[i * W + l]) };
    let add = |acc: &mut [f32; W], x: &[f32; W]| acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
    let items = values.len() / W;
    let rows = items / ILP;
    let mut sums = multi_row_sum::<W, ILP>(rows, |i, k| item(i * ILP + k));
    for i in rows * ILP..items {
        add(&mut sums[0], &item(i));
    }
    let (first, rest) = sums.split_at_mut(1);
    for s in rest.iter() {
        add(&mut first[0], s);
    }
    sums[0]
}

/// aten `multi_row_sum`: `R` running sums over `rows` rows, each kept as a cascade of four levels
/// that carry into the next every `2^level_power` rows, which keeps the rounding error small.
fn multi_row_sum<const W: usize, const R: usize>(
    rows: usize,
    load: impl Fn(usize, usize) -> [f32; W],
) -> [[f32; W]; R] {
    const LEVELS: usize = 4;
    let ceil_log2 = |x: usize| {
        if x <= 1 {
            0
        } else {
            (usize::BITS - (x - 1).leading_zeros()) as usize
        }
    };
    let level_power = (ceil_log2(rows) / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; W]; R]; LEVELS];
    let add = |acc: &mut [f32; W], x: &[f32; W]| acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
    let add_row = |level: &mut [[f32; W]; R], i: usize| {
        for (k, a) in level.iter_mut().enumerate() {
            add(a, &load(i, k));
        }
    };
    let mut i = 0;
    while i + level_step <= rows {
        for _ in 0..level_step {
            add_row(&mut acc[0], i);
            i += 1;
        }
        for j in 1..LEVELS {
            let lower = std::mem::replace(&mut acc[j - 1], [[0.0; W]; R]);
            for (a, l) in acc[j].iter_mut().zip(&lower) {
                add(a, l);
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < rows {
        add_row(&mut acc[0], i);
        i += 1;
    }
    for j in 1..LEVELS {
        let level = acc[j];
        for (a, l) in acc[0].iter_mut().zip(&level) {
            add(a, l);
        }
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch 2.15's `x.mean()` (one thread) for vectors where an f64 mean rounded once is an ulp or
    /// two away (values and results from Python; the fixtures' absmax vectors happen not to show it).
    #[test]
    fn torch_mean_follows_torch_summation_order() {
        let values = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919) % 1000) as f64 / 997.0 * 0.05 + 0.001) as f32)
                .collect()
        };
        for (n, torch_bits) in [
            (13, 0x3cbb_c1e6u32),
            (1728, 0x3cd5_4874),
            (5184, 0x3cd5_5a75),
            (40000, 0x3cd5_6721),
        ] {
            let v = values(n);
            let f64_mean = (v.iter().map(|&x| x as f64).sum::<f64>() / n as f64) as f32;
            assert_ne!(
                f64_mean.to_bits(),
                torch_bits,
                "{n}: the case must tell them apart"
            );
            assert_eq!(torch_mean(&v).to_bits(), torch_bits, "{n} values");
        }
    }

    #[test]
    fn the_dynamic_map_is_sorted_signed_and_ends_at_one() {
        let map = dynamic_map();
        assert_eq!(map.len(), 256);
        assert!(map.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(map[255], 1.0);
        assert_eq!(map[127], 0.0);
        assert!((map[0] + 0.992_968_75).abs() < 1e-7, "{}", map[0]);
    }

    #[test]
    fn values_on_the_levels_survive_a_round_trip() {
        // Two blocks of levels scaled by 2 and by 0.5, plus a partial block and an odd count.
        let mut values: Vec<f32> = NF4_LEVELS
            .iter()
            .cycle()
            .take(64)
            .map(|v| v * 2.0)
            .collect();
        values.extend(NF4_LEVELS.iter().cycle().take(64).map(|v| v * 0.5));
        values.extend([NF4_LEVELS[10] * 0.5, -0.5, 0.0]);
        let q = Nf4Matrix::quantize(&values, (1, values.len()), "float32", false);
        assert_eq!(q.packed.len(), values.len().div_ceil(2));
        assert_eq!(q.dequantize(), values);
        // The pad value is 0.0, code 7, in the low nibble of the last byte.
        assert_eq!(q.packed.last().unwrap() & 0x0f, 7);
    }

    #[test]
    fn a_tie_between_two_levels_takes_the_lower() {
        let mid = (NF4_LEVELS[9] + NF4_LEVELS[10]) / 2.0;
        let q = Nf4Matrix::quantize(&[1.0, mid], (1, 2), "float32", false);
        assert_eq!(q.packed, vec![(15 << 4) | 9]);
    }

    #[test]
    fn an_all_zero_block_dequantizes_to_zero() {
        let values = vec![0f32; 130];
        for double in [false, true] {
            let q = Nf4Matrix::quantize(&values, (2, 65), "float32", double);
            assert!(q.packed.iter().all(|&b| b == 0x77));
            assert!(q.dequantize().iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn double_quantization_stays_close_to_the_plain_absmax() {
        let values: Vec<f32> = (0..64 * 600)
            .map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5)
            .collect();
        let plain = Nf4Matrix::quantize(&values, (600, 64), "float32", false);
        let double = Nf4Matrix::quantize(&values, (600, 64), "float32", true);
        assert_eq!(plain.packed, double.packed);
        let (a, b) = (plain.block_absmax(), double.block_absmax());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / x)
            .fold(0f32, f32::max);
        assert!(worst < 0.02, "relative absmax error {worst}");
        assert!(
            double.bytes() * 7 < plain.bytes() * 8,
            "{} vs {}",
            double.bytes(),
            plain.bytes()
        );
    }
}
