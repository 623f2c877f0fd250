"""The training sampler: a shuffle that depends only on (seed, epoch), sharded over ranks, able to start mid-epoch.

Lightning restores the model, optimizer, schedulers and loop counters of a killed run; where the data stood is up to
the data module. ``MultimodalDataModule.state_dict`` records (epoch, batches consumed) in each checkpoint and its
train loader starts there through :meth:`ResumableSampler.start_at`, so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (permutation seeded by ``seed + epoch``; Lightning calls ``set_epoch`` every epoch and
    leaves a ``DistributedSampler`` in place under DDP) whose next iteration can skip what this rank already used.

    With ``num_replicas=1`` (one process) it is a plain seeded shuffle of the whole dataset.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self._skip = 0

    def start_at(self, epoch: int, samples_done: int) -> None:
        """Make the next iteration the rest of ``epoch`` after this rank's first ``samples_done`` indices."""
        self.set_epoch(epoch)
        self._skip = max(0, int(samples_done))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])
