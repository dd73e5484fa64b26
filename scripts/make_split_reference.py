#!/usr/bin/env python3
"""Print the literals that app/engine/data/split.rs pins, from an independent SplitMix64 + Fisher–Yates.

A seed must mean the same split and the same batch order forever (a run folder records only the seed),
so the Rust test compares against these numbers rather than against another call of the same code.

Usage: python3 scripts/make_split_reference.py      (standard library only)
"""

MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        """Lemire's multiply-shift: the high 64 bits of a 128-bit product."""
        return (self.next_u64() * n) >> 64

    def shuffle(self, items):
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


def split_indices(n, eval_rows, seed):
    order = list(range(n))
    SplitMix64(seed).shuffle(order)
    return sorted(order[eval_rows:]), sorted(order[:eval_rows])


def length_grouped_batches(lengths, batch_size, seed):
    """transformers' group_by_length as split.rs does it: shuffle, mega-batches of 50 batches sorted by
    length (longest first, ties in shuffled order), cut into batches, shuffle the batches."""
    rng = SplitMix64(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    mega = batch_size * 50
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


if __name__ == "__main__":
    print("SplitMix64(0) first value: %#018X" % SplitMix64(0).next_u64())
    train, ev = split_indices(20, 5, 42)
    print("split_indices(20, Count(5), 42): train", train, "eval", ev)
    lengths = [(i * 37) % 11 + 1 for i in range(120)]
    batches = length_grouped_batches(lengths, 2, 7)
    print("length_grouped_batches(lengths, 2, 7): first 6 batches", batches[:6], "last", batches[-1])
