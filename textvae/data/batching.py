"""Length-bucketed batching: shuffled, little padding, reproducible and resumable.

Training order for epoch e (the "pool" bucketing of fairseq / torchtext's BucketIterator):

1. permute all sentence indices with a generator seeded from ``(seed, e)``;
2. cut the permutation into pools of ``pool_batches * batch_size`` sentences;
3. sort each pool by length and cut it into batches (similar lengths -> little padding);
4. shuffle the order of all batches with the same generator.

The plan depends only on ``(lengths, batch_size, pool_batches, seed, e)``, so a run resumed at
batch k of epoch e sees exactly the batches it would have seen (``start_batch = k`` skips the
first k without collating them). ``pool_batches = 1`` is plain shuffling.

Evaluation order (``shuffle=False``) is all sentences sorted by length, cut into batches.

Distributed training: every rank builds the same global plan and takes batches
``rank, rank + R, rank + 2R, ...``. When the batch count is not a multiple of R the largest
batches are halved until it is (or, with ``drop_last``, the last few are dropped), so every rank
runs the same number of steps and the ranks' sentences are disjoint.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np


class BucketBatchSampler:
    """Yields lists of sentence indices (a ``batch_sampler`` in torch DataLoader terms)."""

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        pool_batches: int = 100,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.lengths = np.asarray(lengths)
        if batch_size < 1 or pool_batches < 1:
            raise ValueError(f"batch_size and pool_batches must be >= 1: {batch_size}, {pool_batches}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, num_replicas={num_replicas})")
        self.batch_size = batch_size
        self.pool_batches = pool_batches
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_batch = 0
        if self._global_count() > len(self.lengths) or len(self) == 0:
            raise ValueError(
                f"{len(self.lengths)} sentences cannot give {num_replicas} replicas the same "
                f"non-zero number of batches of size <= {batch_size}"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate; ``start_batch`` (this rank's batches) resumes mid-epoch."""
        self.epoch = epoch
        self.start_batch = start_batch

    def _global_count(self) -> int:
        n, r = len(self.lengths), self.num_replicas
        count = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return count - count % r if self.drop_last else math.ceil(count / r) * r

    def __len__(self) -> int:
        """Batches per epoch for this rank (including any skipped by ``start_batch``)."""
        return self._global_count() // self.num_replicas

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global plan of ``epoch``: index arrays of all ranks' batches, in order."""
        bs, n = self.batch_size, len(self.lengths)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n)
            pool = self.pool_batches * bs  # a multiple of bs: only the very last batch is short
            batches = []
            for start in range(0, n, pool):
                chunk = order[start : start + pool]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
        else:
            order = np.argsort(self.lengths, kind="stable")
            batches = [order[i : i + bs] for i in range(0, n, bs)]
        if self.drop_last and len(batches[-1]) < bs:
            batches.pop()
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return self._even_out(batches)

    def _even_out(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Make the batch count a multiple of num_replicas (see the module docstring)."""
        extra = len(batches) % self.num_replicas
        if extra == 0:
            return batches
        if self.drop_last:
            return batches[: len(batches) - extra]
        for _ in range(self.num_replicas - extra):
            i = max(range(len(batches)), key=lambda j: len(batches[j]))  # first of the largest
            half = (len(batches[i]) + 1) // 2
            batches[i : i + 1] = [batches[i][:half], batches[i][half:]]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.epoch_batches(self.epoch)[self.rank :: self.num_replicas]
        for batch in mine[self.start_batch :]:
            yield batch.tolist()


def even_subset(n: int, limit: Optional[int] = None) -> np.ndarray:
    """Positions of ``limit`` of ``n`` items spread evenly over them (i * n // limit); all when ``limit``
    is None or at least ``n``. The first items instead would favour one topic, one label's file or
    the first dialogues, and the shortest sentences in evaluation order."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.arange(limit) * n // limit


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int] | np.ndarray) -> float:
    """Padded slots / total slots, where a batch of B sentences padded to length T has B * T slots."""
    lengths = np.asarray(lengths)
    slots = padded = 0
    for batch in batches:
        batch_lengths = lengths[np.asarray(batch)]
        total = len(batch_lengths) * int(batch_lengths.max())
        slots += total
        padded += total - int(batch_lengths.sum())
    return padded / slots if slots else 0.0
