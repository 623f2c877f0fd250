"""The training sampler: a shuffle that depends only on (seed, epoch), sharded over ranks, able to start mid-epoch,
optionally drawing records with per-record weights (e.g. to balance rare answers against frequent ones) and optionally
placing records that share a key (e.g. an image) next to each other, so one batch can encode that image once.

Lightning restores the model, optimizer, schedulers and loop counters of a killed run; where the data stood is up to
the data module. ``MultimodalDataModule.state_dict`` records (epoch, batches consumed) in each checkpoint and its
train loader starts there through :meth:`ResumableSampler.start_at`, so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence, Sized

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


def domain_weights(
    origin: Sequence[int],
    manifest_weights: Sequence[float],
    keys: Sequence[Hashable] | None = None,
    power: float = 1.0,
) -> torch.Tensor:
    """Per-record sampling weights (float64, summing to 1) that give source ``m`` (``origin[i]``: the source of record
    ``i``) the share ``manifest_weights[m] / sum(manifest_weights)`` of the draws, spread evenly over its records, or
    with ``keys`` balanced within it (:func:`balancing_weights` per source). A weighted source with no record is an
    error: its share could not be drawn."""
    total = float(sum(manifest_weights))
    weights = torch.zeros(len(origin), dtype=torch.float64)
    for m, share in enumerate(manifest_weights):
        members = [i for i, o in enumerate(origin) if o == m]
        if not members:
            if share > 0:
                raise ValueError(
                    f"train manifest {m} has weight {share} but no training record (all left out by limit_train or "
                    "skip_bad_records?)"
                )
            continue
        within = (
            balancing_weights([keys[i] for i in members], power)
            if keys is not None
            else torch.full((len(members),), 1.0 / len(members), dtype=torch.float64)
        )
        weights[members] = within * (share / total)
    return weights


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (permutation seeded by ``seed + epoch``; Lightning calls ``set_epoch`` every epoch and
    leaves a ``DistributedSampler`` in place under DDP) whose next iteration can skip what this rank already used.

    With ``num_replicas=1`` (one process) it is a plain seeded shuffle of the whole dataset. With ``weights`` (one
    non-negative number per record) an epoch is instead ``len(dataset)`` draws with replacement in proportion to
    the weights, from the same (seed, epoch) generator, dealt out to the ranks in turn.

    With ``groups`` (one hashable key per record, None for a record of its own) and ``group_size`` k > 1, the epoch's
    indices (the same multiset as without grouping) are reordered: the indices of each key are cut into runs of
    ``k * num_replicas`` and the runs are shuffled, so each rank gets about k records of one key in a row. VQA sets
    ask ~10 questions per image; with the image as key a batch of 64 holds ~64/k distinct images, and the model
    encodes each distinct image once (``OmniModel.encode``). Which records an epoch uses does not change, only
    which of them share a batch.

    With ``pools`` (epoch -> the indices that epoch may use: a curriculum, :mod:`omnifuse.data.curriculum`) an epoch
    whose pool is not the whole dataset is ``total_size`` indices from the pool: its shuffles repeated to fill the
    epoch, or, with ``weights``, draws in proportion to the weights of the pool's records.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        weights: torch.Tensor | None = None,
        groups: Sequence[Hashable | None] | None = None,
        group_size: int = 1,
        pools: Callable[[int], Sequence[int]] | None = None,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float64)
            if weights.shape != (len(dataset),):
                raise ValueError(f"weights must have one entry per record ({len(dataset)}), got {tuple(weights.shape)}")
            if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError("weights must be finite, non-negative and not all zero")
        if groups is not None and len(groups) != len(dataset):
            raise ValueError(f"groups must have one key per record ({len(dataset)}), got {len(groups)}")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.weights = weights
        self.groups = list(groups) if groups is not None and group_size > 1 else None
        self.group_size = group_size
        self.pools = pools
        self._skip = 0

    def start_at(self, epoch: int, samples_done: int) -> None:
        """Make the next iteration the rest of ``epoch`` after this rank's first ``samples_done`` indices."""
        self.set_epoch(epoch)
        self._skip = max(0, int(samples_done))

    def _epoch_order(self) -> list[int]:
        """All ``total_size`` indices of this epoch, before they are dealt to the ranks."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n, weights, order = len(self.dataset), self.weights, None
        pool = list(self.pools(self.epoch)) if self.pools is not None else None
        if pool is not None and len(pool) < n:
            # Curriculum: this epoch draws from ``pool`` only, and is still ``total_size`` indices long.
            if weights is not None:
                weights = torch.zeros_like(self.weights)
                weights[pool] = self.weights[pool]
                if weights.sum() <= 0:
                    raise ValueError(f"epoch {self.epoch}: the curriculum's records all have weight 0 (balance_by)")
            else:  # the pool shuffled, and shuffled again as often as it takes to fill the epoch
                order = []
                while len(order) < self.total_size:
                    perm = torch.randperm(len(pool), generator=g).tolist() if self.shuffle else range(len(pool))
                    order += [pool[i] for i in perm]
                order = order[: self.total_size]
        if order is None and weights is not None:
            # Inverse-CDF sampling (torch.multinomial refuses more than 2**24 categories, i.e. records).
            cdf = weights.cumsum(0)
            u = torch.rand(self.total_size, generator=g, dtype=torch.float64) * cdf[-1]
            order = torch.searchsorted(cdf, u, right=True).clamp_(max=len(cdf) - 1).tolist()
        elif order is None:
            # DistributedSampler's own order: a seeded permutation padded by repetition to a multiple of the ranks.
            order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
            pad = self.total_size - n
            if pad > 0:
                order += (order * math.ceil(pad / n))[:pad]
        if self.groups is not None:
            order = self._grouped(order, g)
        return order

    def _grouped(self, order: list[int], g: torch.Generator) -> list[int]:
        """``order`` with the indices of each group key cut into runs of ``group_size * num_replicas``; the runs are
        shuffled (or, with ``shuffle=False``, kept in the order their keys first appear)."""
        buckets: dict[Hashable, list[int]] = {}
        for position, index in enumerate(order):
            key = self.groups[index]
            buckets.setdefault(("group", key) if key is not None else ("alone", position), []).append(index)
        run = self.group_size * self.num_replicas
        runs = [bucket[i : i + run] for bucket in buckets.values() for i in range(0, len(bucket), run)]
        run_order = torch.randperm(len(runs), generator=g).tolist() if self.shuffle else range(len(runs))
        return [index for r in run_order for index in runs[r]]

    def _epoch_indices(self) -> list[int]:
        return self._epoch_order()[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        indices = self._epoch_indices()
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])
