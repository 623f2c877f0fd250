"""The training sampler: a shuffle that depends only on (seed, epoch), sharded over ranks, able to start mid-epoch,
optionally drawing records with per-record weights (e.g. to balance rare answers against frequent ones).

Lightning restores the model, optimizer, schedulers and loop counters of a killed run; where the data stood is up to
the data module. ``MultimodalDataModule.state_dict`` records (epoch, batches consumed) in each checkpoint and its
train loader starts there through :meth:`ResumableSampler.start_at`, so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator, Sequence, Sized

import torch
from torch.utils.data import DistributedSampler


def balancing_weights(keys: Sequence[Hashable], power: float) -> torch.Tensor:
    """Per-record sampling weights ``count(key) ** -power`` (float64, summing to 1).

    ``power=0`` is uniform over records; ``power=1`` makes every distinct key equally likely (each answer of a VQA
    set as often as any other); values between soften the natural imbalance without erasing it.
    """
    if power < 0:
        raise ValueError(f"balancing power must be >= 0, got {power}")
    if not keys:
        raise ValueError("cannot balance an empty dataset")
    counts = Counter(keys)
    weights = torch.tensor([counts[k] ** -power for k in keys], dtype=torch.float64)
    return weights / weights.sum()


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (permutation seeded by ``seed + epoch``; Lightning calls ``set_epoch`` every epoch and
    leaves a ``DistributedSampler`` in place under DDP) whose next iteration can skip what this rank already used.

    With ``num_replicas=1`` (one process) it is a plain seeded shuffle of the whole dataset. With ``weights`` (one
    non-negative number per record) an epoch is instead ``len(dataset)`` draws with replacement in proportion to
    the weights, from the same (seed, epoch) generator, dealt out to the ranks in turn.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        weights: torch.Tensor | None = None,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float64)
            if weights.shape != (len(dataset),):
                raise ValueError(f"weights must have one entry per record ({len(dataset)}), got {tuple(weights.shape)}")
            if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError("weights must be finite, non-negative and not all zero")
        self.weights = weights
        self._skip = 0

    def start_at(self, epoch: int, samples_done: int) -> None:
        """Make the next iteration the rest of ``epoch`` after this rank's first ``samples_done`` indices."""
        self.set_epoch(epoch)
        self._skip = max(0, int(samples_done))

    def _epoch_indices(self) -> list[int]:
        if self.weights is None:
            return list(super().__iter__())
        # Inverse-CDF sampling (torch.multinomial refuses more than 2**24 categories, i.e. records).
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        cdf = self.weights.cumsum(0)
        u = torch.rand(self.total_size, generator=g, dtype=torch.float64) * cdf[-1]
        draws = torch.searchsorted(cdf, u, right=True).clamp_(max=len(cdf) - 1)
        return draws[self.rank : self.total_size : self.num_replicas].tolist()

    def __iter__(self) -> Iterator[int]:
        indices = self._epoch_indices()
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])
