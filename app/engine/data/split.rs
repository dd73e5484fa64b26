//! A deterministic, seeded train/eval split and length-grouped batching.
//! The shuffle uses SplitMix64 + Fisher–Yates, written here so that a seed gives the same split on every
//! platform and with every version of every dependency.

use super::DataError;
use crate::engine::rng::SplitMix64;

/// How much of the data to hold out for evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SplitSpec {
    /// Train on everything (evaluation uses a separate file, or none).
    None,
    /// A fraction of the rows, 0 < f < 1 (rounded, at least one row).
    Fraction(f64),
    /// Exactly this many rows.
    Count(usize),
}

impl SplitSpec {
    /// `0.1` → a fraction, `200` → a count.
    pub fn parse(text: &str) -> Result<SplitSpec, DataError> {
        let t = text.trim();
        let bad = || {
            DataError::Split(format!(
                "eval split `{text}`: give a fraction between 0 and 1 (0.1 holds out 10%) or a whole number of rows (200)"
            ))
        };
        if let Ok(n) = t.parse::<usize>() {
            return Ok(if n == 0 {
                SplitSpec::None
            } else {
                SplitSpec::Count(n)
            });
        }
        let f: f64 = t.parse().map_err(|_| bad())?;
        if f.is_finite() && f > 0.0 && f < 1.0 {
            Ok(SplitSpec::Fraction(f))
        } else if f == 0.0 {
            Ok(SplitSpec::None)
        } else {
            Err(bad())
        }
    }

    /// How many of `n` rows go to evaluation.
    pub fn eval_rows(&self, n: usize) -> Result<usize, DataError> {
        let eval = match *self {
            SplitSpec::None => 0,
            SplitSpec::Fraction(f) => {
                if !(f > 0.0 && f < 1.0) {
                    return Err(DataError::Split(format!(
                        "eval fraction {f} must be between 0 and 1"
                    )));
                }
                ((n as f64 * f).round() as usize).max(1)
            }
            SplitSpec::Count(c) => c,
        };
        if eval > 0 && eval >= n {
            return Err(DataError::Split(format!(
                "holding out {eval} of {n} rows for evaluation leaves none to train on; hold out fewer, or use a separate eval file"
            )));
        }
        Ok(eval)
    }
}

/// Indexes `0..n` split into (train, eval), each in ascending order. Same seed, same split.
pub fn split_indices(
    n: usize,
    spec: &SplitSpec,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    let eval_n = spec.eval_rows(n)?;
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let mut eval = order[..eval_n].to_vec();
    let mut train = order[eval_n..].to_vec();
    eval.sort_unstable();
    train.sort_unstable();
    Ok((train, eval))
}

/// Batches of example indexes, and how much padding they need.
#[derive(Debug, Clone, PartialEq)]
pub struct Batches {
    pub batches: Vec<Vec<usize>>,
    /// Tokens of real data.
    pub tokens: u64,
    /// Tokens including padding (every example padded to its batch's longest).
    pub padded_tokens: u64,
}

impl Batches {
    /// Share of the padded tokens that is padding (0 = none).
    pub fn waste(&self) -> f64 {
        if self.padded_tokens == 0 {
            0.0
        } else {
            1.0 - self.tokens as f64 / self.padded_tokens as f64
        }
    }
}

/// Tokens and padded tokens of `batches` over examples of `lengths`.
pub fn padding_waste(lengths: &[usize], batches: &[Vec<usize>]) -> (u64, u64) {
    let mut tokens = 0u64;
    let mut padded = 0u64;
    for batch in batches {
        let longest = batch.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        tokens += batch.iter().map(|&i| lengths[i] as u64).sum::<u64>();
        padded += (longest * batch.len()) as u64;
    }
    (tokens, padded)
}

/// Group examples of similar length into batches, as transformers' `group_by_length` does: shuffle
/// (seeded), cut into mega-batches of 50 batches, sort each by length, cut into batches, shuffle the
/// batches. Padding drops sharply while the order stays random between epochs (change the seed).
/// `batch_size` 1 or 0 gives one example per batch.
pub fn length_grouped_batches(lengths: &[usize], batch_size: usize, seed: u64) -> Batches {
    let size = batch_size.max(1);
    let mut rng = SplitMix64::new(seed);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(lengths.len().div_ceil(size));
    for mega in order.chunks_mut(size * 50) {
        mega.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(mega.chunks(size).map(|c| c.to_vec()));
    }
    rng.shuffle(&mut batches);
    let (tokens, padded_tokens) = padding_waste(lengths, &batches);
    Batches {
        batches,
        tokens,
        padded_tokens,
    }
}

/// Batches in plain shuffled order (for comparison with length grouping).
pub(crate) fn random_batches(lengths: &[usize], batch_size: usize, seed: u64) -> Batches {
    let size = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let batches: Vec<Vec<usize>> = order.chunks(size).map(|c| c.to_vec()).collect();
    let (tokens, padded_tokens) = padding_waste(lengths, &batches);
    Batches {
        batches,
        tokens,
        padded_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_seeded_complete_and_disjoint() {
        let (train, eval) = split_indices(100, &SplitSpec::Fraction(0.1), 7).unwrap();
        assert_eq!((train.len(), eval.len()), (90, 10));
        let mut all: Vec<usize> = train.iter().chain(&eval).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(
            split_indices(100, &SplitSpec::Fraction(0.1), 7).unwrap().1,
            eval
        );
        assert_ne!(
            split_indices(100, &SplitSpec::Fraction(0.1), 8).unwrap().1,
            eval
        );
        assert_eq!(
            split_indices(100, &SplitSpec::Count(3), 7).unwrap().1.len(),
            3
        );
        assert!(split_indices(3, &SplitSpec::Count(3), 7).is_err());
    }

    /// A run folder records only the seed, so a seed must mean the same split and batch order forever.
    /// The literals come from an independent SplitMix64 + Fisher–Yates (scripts/make_split_reference.py).
    #[test]
    fn the_shuffle_is_pinned() {
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        let (train, eval) = split_indices(20, &SplitSpec::Count(5), 42).unwrap();
        assert_eq!(eval, [1, 7, 9, 15, 16]);
        assert_eq!(train, [0, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 17, 18, 19]);
        // 120 rows in batches of 2: two mega-batches, sorted by length, then the batches shuffled.
        let lengths: Vec<usize> = (0..120).map(|i| (i * 37) % 11 + 1).collect();
        let grouped = length_grouped_batches(&lengths, 2, 7);
        assert_eq!(grouped.batches.len(), 60);
        assert_eq!(
            grouped.batches[..6],
            [[1, 53], [58, 69], [38, 16], [0, 55], [49, 5], [67, 75]]
        );
        assert_eq!(grouped.batches[59], [95, 29]);
    }

    #[test]
    fn parse_split() {
        assert_eq!(SplitSpec::parse("0.1").unwrap(), SplitSpec::Fraction(0.1));
        assert_eq!(SplitSpec::parse("200").unwrap(), SplitSpec::Count(200));
        assert_eq!(SplitSpec::parse("0").unwrap(), SplitSpec::None);
        assert!(SplitSpec::parse("1.5").is_err());
        assert!(SplitSpec::parse("-1").is_err());
        assert!(SplitSpec::parse("NaN").is_err());
    }

    #[test]
    fn grouping_by_length_cuts_padding() {
        let lengths: Vec<usize> = (0..1000).map(|i| 10 + (i * 7919) % 500).collect();
        let grouped = length_grouped_batches(&lengths, 8, 1);
        let random = random_batches(&lengths, 8, 1);
        assert_eq!(grouped.tokens, random.tokens);
        assert!(
            grouped.waste() < random.waste() / 3.0,
            "{} vs {}",
            grouped.waste(),
            random.waste()
        );
        let mut seen: Vec<usize> = grouped.batches.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }
}
