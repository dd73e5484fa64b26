//! Which examples each micro-batch of a run holds: a pure function of (seed, lengths, micro-batch
//! number), so a resumed run sees exactly the batches it would have seen.

use crate::engine::data::length_grouped_batches;
use crate::engine::rng::SplitMix64;

/// The order of the training examples over a run, one micro-batch at a time.
pub struct BatchOrder {
    lengths: Vec<usize>,
    size: usize,
    seed: u64,
    grouped: bool,
    /// The plan of the epoch last asked for: its example order (plain) or its batches (grouped).
    epoch: Option<(usize, Vec<Vec<usize>>)>,
}

impl BatchOrder {
    /// `lengths` of the training examples (in tokens, as trained), `size` examples per micro-batch.
    /// With `group_by_length`, each epoch's micro-batches hold examples of similar length
    /// ([`length_grouped_batches`]); otherwise they take the epoch's shuffled order as it comes.
    pub fn new(lengths: Vec<usize>, size: usize, seed: u64, group_by_length: bool) -> BatchOrder {
        BatchOrder {
            lengths,
            size: size.max(1),
            seed,
            grouped: group_by_length,
            epoch: None,
        }
    }

    /// The examples of micro-batch `index` (counted from the start of the run).
    pub fn micro_batch(&mut self, index: usize) -> Vec<usize> {
        let n = self.lengths.len();
        if n == 0 {
            return Vec::new();
        }
        if self.grouped {
            // Every epoch has the same number of batches: all full but the last.
            let per_epoch = n.div_ceil(self.size);
            let (epoch, batch) = (index / per_epoch, index % per_epoch);
            return self.plan(epoch)[batch].clone();
        }
        // A plain micro-batch may run over the end of an epoch into the next one's order.
        (index * self.size..(index + 1) * self.size)
            .map(|position| self.plan(position / n)[0][position % n])
            .collect()
    }

    /// The plan of `epoch`, made once and kept while it is asked for.
    fn plan(&mut self, epoch: usize) -> &Vec<Vec<usize>> {
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let seed = epoch_seed(self.seed, epoch);
            let plan = if self.grouped {
                length_grouped_batches(&self.lengths, self.size, seed).batches
            } else {
                let mut order: Vec<usize> = (0..self.lengths.len()).collect();
                SplitMix64::new(seed).shuffle(&mut order);
                vec![order]
            };
            self.epoch = Some((epoch, plan));
        }
        match &self.epoch {
            Some((_, plan)) => plan,
            None => unreachable!("the plan was made above"),
        }
    }
}

/// The seed of `epoch`'s order: the run's order reshuffles every epoch.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::data::padding_waste;

    fn lengths(n: usize) -> Vec<usize> {
        let mut rng = SplitMix64::new(9);
        (0..n).map(|_| 8 + rng.below(500)).collect()
    }

    /// Each epoch takes every example exactly once, whether grouped or not.
    fn epochs_are_complete(grouped: bool) {
        let (n, size) = (103, 4);
        let mut order = BatchOrder::new(lengths(n), size, 5, grouped);
        // Two epochs' worth of micro-batches (the plain order's last one runs into a third epoch).
        let seen: Vec<usize> = (0..2 * n.div_ceil(size))
            .flat_map(|i| order.micro_batch(i))
            .collect();
        for epoch in seen.chunks(n).take(2) {
            let mut sorted = epoch.to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "grouped: {grouped}");
        }
        assert_ne!(seen[..n], seen[n..2 * n], "each epoch has its own order");
    }

    #[test]
    fn every_epoch_takes_every_example_once() {
        epochs_are_complete(false);
        epochs_are_complete(true);
    }

    #[test]
    fn grouping_cuts_padding_and_is_a_pure_function_of_the_index() {
        let lengths = lengths(400);
        let size = 8;
        let batches = |grouped: bool| -> Vec<Vec<usize>> {
            let mut order = BatchOrder::new(lengths.clone(), size, 3, grouped);
            (0..100).map(|i| order.micro_batch(i)).collect()
        };
        let (plain, grouped) = (batches(false), batches(true));
        let waste = |b: &[Vec<usize>]| {
            let (tokens, padded) = padding_waste(&lengths, b);
            1.0 - tokens as f64 / padded as f64
        };
        assert!(
            waste(&grouped) < waste(&plain) / 4.0,
            "grouped {} vs plain {}",
            waste(&grouped),
            waste(&plain)
        );
        // Asked out of order and from a fresh order (as a resumed run asks), the same batches.
        let mut fresh = BatchOrder::new(lengths.clone(), size, 3, true);
        for i in [77, 3, 99, 50, 51, 0] {
            assert_eq!(fresh.micro_batch(i), grouped[i], "micro-batch {i}");
        }
    }

    /// The plain order is the one runs were trained with before grouping existed, pinned literally (from
    /// an independent SplitMix64 + Fisher–Yates in Python), so a seed means the same batches forever.
    #[test]
    fn the_plain_order_is_pinned() {
        let mut order = BatchOrder::new(vec![10; 5], 2, 42, false);
        let got: Vec<Vec<usize>> = (0..5).map(|i| order.micro_batch(i)).collect();
        // Epoch 0 is [2, 4, 3, 1, 0], epoch 1 is [0, 3, 2, 4, 1]; micro-batch 2 spans both.
        assert_eq!(
            got,
            vec![vec![2, 4], vec![3, 1], vec![0, 0], vec![3, 2], vec![4, 1]]
        );
    }
}
