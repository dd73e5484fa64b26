//! The element-wise loops of the CPU training ops, compiled for the vector width the CPU has.
//!
//! The binary targets baseline x86-64 so that it runs everywhere, which leaves the compiler four-wide
//! SSE2 vectors without fused multiply-add, and libm's `expf`, one call per value. The loops of the
//! step's element-wise ops (softmax, log-sum-exp, SiLU, RMSNorm, dropout) are defined with
//! [`vector_fn!`], which compiles a copy for AVX-512 and one for AVX2 + FMA and runs the one the CPU
//! has, and they take
//! their exponentials from [`exp`], a polynomial the compiler vectorizes. Before, these loops (with the
//! dropout masks, then drawn three times) took a fifth of a SmolLM2 training step's CPU time (perf).

/// Defines a function whose body is compiled three times, for AVX-512, for AVX2 + FMA and for baseline
/// x86-64 (or once elsewhere), and runs the widest copy the CPU has. The body is written out in each
/// copy rather than called, because a call into a function built for other features is not inlined,
/// and its loops would stay four-wide. Results agree across copies up to the rounding of fused
/// multiply-adds.
macro_rules! vector_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) $(-> $ret)? $body
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) $(-> $ret)? $body
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the copy is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body
        }
    };
}
pub(super) use vector_fn;

/// `eˣ` in f32 within 2 ulp of the true value, 0 below −87.3 (and for −∞), written without branches or
/// calls so that loops over it vectorize: `x = n·ln 2 + r` with |r| ≤ ln 2 / 2, `eʳ` by Cephes' `expf`
/// polynomial, and `2ⁿ` put into the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so that n·LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.0, 88.0);
    // Round to nearest by the float adder: adding 1.5·2²³ leaves the integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let n = (clamped * LOG2E + ROUND) - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = er * two_n;
    if x < -87.3 {
        0.0
    } else {
        y
    }
}

/// Σ f(i) for i in 0..n, in sixteen interleaved partial sums.
#[inline(always)]
pub fn sum_of(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let full = n - n % 16;
    for base in (0..full).step_by(16) {
        for (j, lane) in lanes.iter_mut().enumerate() {
            *lane += f(base + j);
        }
    }
    for (j, i) in (full..n).enumerate() {
        lanes[j] += f(i);
    }
    lanes.iter().sum()
}

/// The largest value (−∞ for none), ignoring NaN as `f32::max` does.
#[inline(always)]
pub fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(*v);
        }
    }
    for (lane, v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane = lane.max(*v);
    }
    lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    vector_fn! {
        fn exp_wide(x: f32) -> f32 {
            exp(x)
        }
    }

    vector_fn! {
        fn sum_wide(v: &[f32]) -> f32 {
            sum_of(v.len(), |i| v[i])
        }
    }

    /// Within 2 ulp of the correctly rounded eˣ (f64's exp, rounded) over the range softmax and SiLU
    /// use, 0 where eˣ underflows, and the same on every vector path.
    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp() as f32;
            let got = exp(x);
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
            worst = worst.max(ulp);
            assert_eq!(exp_wide(x), got, "at {x}");
            x += 0.000_731;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn sums_and_max_match_serial_ones() {
        for n in [0usize, 1, 15, 16, 17, 100, 1000] {
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let serial: f64 = v.iter().map(|x| *x as f64).sum();
            for got in [sum_of(n, |i| v[i]), sum_wide(&v)] {
                assert!(
                    (got as f64 - serial).abs() < 1e-3,
                    "n={n}: {got} vs {serial}"
                );
            }
            let want = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&v), want);
        }
    }
}
