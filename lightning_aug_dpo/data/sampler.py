"""A training sampler that resumes mid-epoch: no prompt seen twice, none skipped.

Lightning restores model, optimizer and loop counters from a checkpoint, but a plain
``DataLoader`` restarts its epoch from the first batch, so a run killed after ``n`` batches
would see those ``n`` batches again and end the epoch early. :class:`ResumableSampler` makes the
epoch's order a pure function of ``(seed, epoch)`` (as ``DistributedSampler`` does: Lightning
calls ``set_epoch``) and, after :meth:`resume_at`, leaves out the samples this rank already
consumed in that epoch. Its length stays the full epoch's, so Lightning's batch counters (which
it restores too) still reach the end of the epoch exactly when the sampler runs out.

Being a ``DistributedSampler``, it is not replaced by Lightning under DDP: each rank shuffles the
same permutation and takes its own strided shard, as Lightning's own sampler would.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """Seeded per-epoch shuffling (or fixed order) that can skip an epoch's consumed prefix.

    Args:
        dataset: the map-style dataset (only its length is used).
        seed: the permutation of epoch ``e`` is seeded with ``seed + e``.
        shuffle: shuffle each epoch (``False``: dataset order).
        num_replicas: number of ranks (1 without DDP).
        rank: this rank.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self._resume: tuple[int, int] | None = None  # (epoch, samples already consumed)

    def resume_at(self, epoch: int, consumed: int) -> None:
        """Make epoch ``epoch`` start after its first ``consumed`` samples of this rank (once).

        Also sets the epoch, since a multi-worker loader may draw indices before Lightning
        calls ``set_epoch``.
        """
        self.set_epoch(epoch)
        self._resume = (epoch, consumed) if consumed > 0 else None

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1] :]
            self._resume = None  # the next epoch (or a new fit) starts from the beginning
        return iter(indices)
