//! `x · Wᵀ` for a few rows of `x` — decoding, one row per sequence — reading `W` once.
//!
//! A general matrix product first packs `W` into panels; with a handful of rows that packing costs as
//! much as the product, and the product itself is bound by reading `W` from memory (the gemm crate ran
//! SmolLM2's 16-row decoding products at about a third of what the machine does). Here each thread
//! walks its own block of `W`'s rows once, four at a time, and multiplies each against every row of
//! `x`, which stays in cache: sixteen AVX-512 accumulators for a 4 × 4 tile (CPUs without AVX-512 keep
//! the general product).

use rayon::prelude::*;

/// Up to this many rows go through [`few_rows_times_t`]; more are a job for a general product.
pub const MAX_ROWS: usize = 32;

/// Rows of `W` per task: enough work per task to keep rayon's overhead small, enough tasks to share.
const BLOCK: usize = 64;

/// `x · Wᵀ` as a row-major `rows × out` buffer, for `x` row-major `rows × inp` and `W` row-major
/// `out × inp`.
pub fn few_rows_times_t(x: &[f32], rows: usize, w: &[f32], out: usize, inp: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        rows * inp,
        "few-rows product: x is not {rows} × {inp}"
    );
    assert_eq!(
        w.len(),
        out * inp,
        "few-rows product: W is not {out} × {inp}"
    );
    // Each task fills its block of outputs for every row: `(out, rows)` order keeps that contiguous.
    let mut transposed = vec![0f32; out * rows];
    if rows > 0 && inp > 0 {
        transposed
            .par_chunks_mut(BLOCK * rows)
            .enumerate()
            .for_each(|(block, y)| {
                let first = block * BLOCK;
                let count = y.len() / rows;
                tile_products(
                    x,
                    rows,
                    &w[first * inp..(first + count) * inp],
                    count,
                    inp,
                    y,
                );
            });
    }
    let mut y = vec![0f32; rows * out];
    for (j, outputs) in transposed.chunks_exact(rows.max(1)).enumerate() {
        for (r, &v) in outputs.iter().enumerate() {
            y[r * out + j] = v;
        }
    }
    y
}

/// Whether this CPU runs [`few_rows_times_t`]'s kernel (AVX-512); elsewhere the general product serves.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

const TILE: usize = 4;

/// `y[j · rows + r] = W[j] · x[r]` for the `count` rows of `w`.
fn tile_products(x: &[f32], rows: usize, w: &[f32], count: usize, inp: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512F; every load below stays inside `x` and `w` (checked by the
        // slices' lengths: rows and count rows of `inp` values).
        unsafe { tile_products_avx512(x, rows, w, count, inp, y) };
        return;
    }
    for j in 0..count {
        for r in 0..rows {
            let (wr, xr) = (&w[j * inp..][..inp], &x[r * inp..][..inp]);
            y[j * rows + r] = wr.iter().zip(xr).fold(0.0, |t, (a, b)| a.mul_add(*b, t));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_products_avx512(
    x: &[f32],
    rows: usize,
    w: &[f32],
    count: usize,
    inp: usize,
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(x.len() >= rows * inp && w.len() >= count * inp && y.len() >= count * rows);
    let chunks = inp / 16;
    // The last chunk loads only the values left (a mask), so no tail loop is needed.
    let tail = inp % 16;
    let tail_mask: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
    for j in (0..count).step_by(TILE) {
        let jn = (count - j).min(TILE);
        for r in (0..rows).step_by(TILE) {
            let rn = (rows - r).min(TILE);
            // A partial tile repeats its last row; the repeats are computed and dropped.
            let wp: [*const f32; TILE] =
                std::array::from_fn(|a| w.as_ptr().add((j + a.min(jn - 1)) * inp));
            let xp: [*const f32; TILE] =
                std::array::from_fn(|b| x.as_ptr().add((r + b.min(rn - 1)) * inp));
            let mut acc = [[_mm512_setzero_ps(); TILE]; TILE];
            for c in 0..chunks {
                let k = c * 16;
                let xv: [__m512; TILE] = std::array::from_fn(|b| _mm512_loadu_ps(xp[b].add(k)));
                for a in 0..TILE {
                    let wv = _mm512_loadu_ps(wp[a].add(k));
                    for b in 0..TILE {
                        acc[a][b] = _mm512_fmadd_ps(wv, xv[b], acc[a][b]);
                    }
                }
            }
            if tail > 0 {
                let k = chunks * 16;
                let xv: [__m512; TILE] =
                    std::array::from_fn(|b| _mm512_maskz_loadu_ps(tail_mask, xp[b].add(k)));
                for a in 0..TILE {
                    let wv = _mm512_maskz_loadu_ps(tail_mask, wp[a].add(k));
                    for b in 0..TILE {
                        acc[a][b] = _mm512_fmadd_ps(wv, xv[b], acc[a][b]);
                    }
                }
            }
            for a in 0..jn {
                for b in 0..rn {
                    y[(j + a) * rows + r + b] = _mm512_reduce_add_ps(acc[a][b]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape class — rows and outputs not multiples of the tile, inputs not a multiple of the
    /// lanes, one row, more outputs than one task — against a plain sum in f64.
    #[test]
    fn products_match_a_plain_sum() {
        let mut seed = 1u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for (rows, out, inp) in [
            (1, 1, 1),
            (3, 5, 17),
            (16, 130, 64),
            (7, 64, 576),
            (32, 9, 33),
        ] {
            let x: Vec<f32> = (0..rows * inp).map(|_| next()).collect();
            let w: Vec<f32> = (0..out * inp).map(|_| next()).collect();
            let y = few_rows_times_t(&x, rows, &w, out, inp);
            for r in 0..rows {
                for j in 0..out {
                    let want: f64 = (0..inp)
                        .map(|k| x[r * inp + k] as f64 * w[j * inp + k] as f64)
                        .sum();
                    let got = y[r * out + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{rows}×{out}×{inp} at ({r}, {j}): {got} vs {want}"
                    );
                }
            }
        }
        assert!(few_rows_times_t(&[], 0, &[1.0, 2.0], 2, 1).is_empty());
    }
}
