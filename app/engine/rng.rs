//! The one random number generator of the engine: SplitMix64, tiny, fast and fully specified, so a seed
//! gives the same initialisation, dropout masks, shuffles and splits on every machine and in every
//! version (candle's device RNG cannot be seeded on the CPU).

pub struct SplitMix64(u64);

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective mix of the 64-bit state.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit draw as a uniform number in [0, 1).
fn to_unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        to_unit(self.next_u64())
    }

    /// The `i`-th (0-based) number in [0, 1) that `SplitMix64::new(seed)` draws, without drawing the ones
    /// before it: the generator's state is a counter, so any element of a stream can be computed on its
    /// own, on any thread (what dropout masks need).
    pub fn unit_at(seed: u64, i: u64) -> f64 {
        to_unit(Self::u64_at(seed, i))
    }

    /// The `i`-th (0-based) 64-bit number `SplitMix64::new(seed)` draws; [`Self::unit_at`] is its top 53
    /// bits as a fraction.
    #[inline(always)]
    pub fn u64_at(seed: u64, i: u64) -> u64 {
        mix(seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA)))
    }

    /// Uniform in 0..n (Lemire's multiply-shift; the bias is below 2⁻³² for any realistic n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_element_of_a_stream_can_be_drawn_alone() {
        let mut rng = SplitMix64::new(0xDEAD_BEEF);
        for i in 0..1000 {
            assert_eq!(rng.unit(), SplitMix64::unit_at(0xDEAD_BEEF, i));
        }
    }
}
