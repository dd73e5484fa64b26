//! Intervals for small evaluation sets: percentile bootstrap, seeded so a report repeats exactly.

use serde::{Deserialize, Serialize};

use crate::engine::rng::SplitMix64;

/// A mean with its 95% interval over `n` examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

/// Resamples per interval: enough for stable 2.5/97.5 percentiles (their rank moves by well under one
/// resample between seeds), and cheap at evaluation-set sizes (a thousand passes over a few hundred
/// scores).
pub const RESAMPLES: usize = 1000;

/// The mean of `values` with a 95% percentile-bootstrap interval: `resamples` times, draw `n` values
/// with replacement (n = `values.len()`), take their mean; the interval runs from the 2.5th to the
/// 97.5th percentile of those means (see [`percentile`] for the exact rule). `mean` is the plain mean of
/// `values`, not of the resamples.
///
/// The bootstrap is used rather than a normal approximation because evaluation sets are small and
/// scores are often 0/1 or bounded, where `mean ± 1.96·se` runs past 0 and 1. The draws come from
/// `SplitMix64::new(seed)`, so the same scores and seed give the same interval on every machine.
///
/// `None` for no values. With `resamples == 0` there is nothing to take percentiles of and the interval
/// is the mean alone.
pub fn bootstrap_mean(values: &[f64], resamples: usize, seed: u64) -> Option<Interval> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = plain_mean(values.iter().copied(), n);
    if resamples == 0 {
        return Some(Interval {
            mean,
            low: mean,
            high: mean,
            n,
        });
    }
    let mut rng = SplitMix64::new(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| plain_mean((0..n).map(|_| values[rng.below(n)]), n))
        .collect();
    means.sort_by(f64::total_cmp);
    Some(Interval {
        mean,
        low: percentile(&means, 0.025),
        high: percentile(&means, 0.975),
        n,
    })
}

/// The change from `base` to `tuned` on the same examples (`tuned[i]` and `base[i]` score example i):
/// the mean of `tuned − base` with a 95% bootstrap interval. Resampling whole examples keeps each pair
/// together, so the interval reflects how consistently the fine-tune moved each example rather than
/// the spread between examples, which is what makes a small evaluation set conclusive.
///
/// Only examples where the metric applies to both answers belong in the lists. `None` when they are
/// empty or of different lengths.
pub fn bootstrap_paired_change(
    base: &[f64],
    tuned: &[f64],
    resamples: usize,
    seed: u64,
) -> Option<Interval> {
    if base.len() != tuned.len() {
        return None;
    }
    // Resampling example indices and averaging tuned − base over them is the bootstrap of the
    // differences.
    let change: Vec<f64> = tuned.iter().zip(base).map(|(t, b)| t - b).collect();
    bootstrap_mean(&change, resamples, seed)
}

/// Sum in order, then divide: every resample of a constant list then gives exactly the plain mean, so a
/// constant score has a zero-width interval rather than one a rounding error wide.
fn plain_mean(values: impl Iterator<Item = f64>, n: usize) -> f64 {
    values.sum::<f64>() / n as f64
}

/// The `p`-quantile of ascending `sorted` (not empty) by linear interpolation between order statistics
/// (Hyndman & Fan type 7, NumPy's and R's default): at position h = p·(len − 1), the value
/// `sorted[⌊h⌋] + (h − ⌊h⌋)·(sorted[⌊h⌋ + 1] − sorted[⌊h⌋])`. With 1000 resamples the 2.5% point lies
/// between the 25th and 26th smallest means (h = 24.975) and the 97.5% point between the 975th and
/// 976th (h = 974.025).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let h = p * (sorted.len() - 1) as f64;
    let below = h.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let fraction = h - below as f64;
    sorted[below] + fraction * (sorted[above] - sorted[below])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCORES: [f64; 12] = [1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 0.25, 1.0, 0.0, 0.75, 1.0];

    #[test]
    fn percentile_rule() {
        let sorted = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&sorted, 0.0), 0.0);
        assert_eq!(percentile(&sorted, 0.5), 2.0);
        assert_eq!(percentile(&sorted, 1.0), 4.0);
        assert!((percentile(&sorted, 0.025) - 0.1).abs() < 1e-12);
        assert!((percentile(&sorted, 0.975) - 3.9).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 0.975), 7.0);
    }

    #[test]
    fn same_seed_same_interval_other_seed_other_interval() {
        let a = bootstrap_mean(&SCORES, RESAMPLES, 7).unwrap();
        let b = bootstrap_mean(&SCORES, RESAMPLES, 7).unwrap();
        assert_eq!(a, b);
        let c = bootstrap_mean(&SCORES, RESAMPLES, 8).unwrap();
        assert_eq!(a.mean, c.mean);
        assert_ne!((a.low, a.high), (c.low, c.high));
    }

    #[test]
    fn interval_holds_the_plain_mean() {
        let interval = bootstrap_mean(&SCORES, RESAMPLES, 1).unwrap();
        let mean = SCORES.iter().sum::<f64>() / SCORES.len() as f64;
        assert_eq!(interval.mean, mean);
        assert_eq!(interval.n, SCORES.len());
        assert!(interval.low < mean && mean < interval.high, "{interval:?}");
        assert!(interval.low >= 0.0 && interval.high <= 1.0, "{interval:?}");
    }

    #[test]
    fn constant_scores_have_a_zero_width_interval() {
        let interval = bootstrap_mean(&[0.1; 9], RESAMPLES, 3).unwrap();
        assert_eq!(
            (interval.low, interval.high),
            (interval.mean, interval.mean)
        );
        assert_eq!(interval.mean, [0.1; 9].iter().sum::<f64>() / 9.0);
    }

    #[test]
    fn no_values_no_interval() {
        assert_eq!(bootstrap_mean(&[], RESAMPLES, 0), None);
        assert_eq!(bootstrap_paired_change(&[], &[], RESAMPLES, 0), None);
        assert_eq!(
            bootstrap_paired_change(&[1.0], &[1.0, 0.0], RESAMPLES, 0),
            None
        );
        let bare = bootstrap_mean(&[0.0, 1.0], 0, 0).unwrap();
        assert_eq!((bare.low, bare.mean, bare.high), (0.5, 0.5, 0.5));
    }

    #[test]
    fn paired_change() {
        let same = bootstrap_paired_change(&SCORES, &SCORES, RESAMPLES, 5).unwrap();
        assert_eq!(
            (same.mean, same.low, same.high, same.n),
            (0.0, 0.0, 0.0, 12)
        );

        // Every example gains exactly 0.25, whatever its base score: the change is certain even though
        // the scores themselves vary a lot.
        let tuned: Vec<f64> = SCORES.iter().map(|s| s + 0.25).collect();
        let shift = bootstrap_paired_change(&SCORES, &tuned, RESAMPLES, 5).unwrap();
        assert_eq!((shift.mean, shift.low, shift.high), (0.25, 0.25, 0.25));

        let base = [0.0, 0.0, 1.0, 0.0, 0.5, 0.0, 1.0, 0.0];
        let tuned = [1.0, 0.0, 1.0, 1.0, 0.5, 1.0, 0.0, 1.0];
        let change = bootstrap_paired_change(&base, &tuned, RESAMPLES, 11).unwrap();
        assert_eq!(change.mean, 3.0 / 8.0);
        assert!(
            change.low < change.mean && change.mean < change.high,
            "{change:?}"
        );
        assert_eq!(
            change,
            bootstrap_paired_change(&base, &tuned, RESAMPLES, 11).unwrap()
        );
    }
}
