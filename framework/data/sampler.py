"""A training data loader that can stop mid-epoch and resume with the same data order.

Lightning restores the optimizer, the scheduler and the step count from ``last.ckpt``, but
a plain ``DataLoader`` starts every resumed epoch from its first batch, in a new random
order. :class:`ResumableDataLoader` fixes both:

* the order of epoch ``e`` is a permutation drawn from ``seed + e`` alone, so an
  interrupted run and an uninterrupted one see the same batches in the same order;
* it is *stateful* in Lightning's sense (``state_dict`` / ``load_state_dict``): every
  checkpoint records the epoch and how many batches of it were served, and a resumed run
  skips exactly those batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler


class EpochShuffleSampler(Sampler[int]):
    """Shuffle ``range(n)`` with ``seed + epoch``; optionally start part-way into the epoch.

    Lightning calls :meth:`set_epoch` before every epoch (as it does for a
    ``DistributedSampler``), so each epoch has its own, reproducible order.

    Args:
        n: the number of examples.
        seed: the run's seed.
        shuffle: ``False`` keeps the file order (still resumable).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``; a pending skip is kept only for that same epoch."""
        if int(epoch) != self.epoch:
            self.start = 0
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        """The example order of ``epoch``."""
        if not self.shuffle:
            return list(range(self.n))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(self.order(self.epoch)[start:])

    def __len__(self) -> int:
        # The full length even while skipping: Lightning counts the skipped batches itself.
        return self.n


class ShardedEpochSampler(DistributedSampler):
    """:class:`EpochShuffleSampler`'s order of the whole data set, dealt out to the processes.

    Process ``r`` of ``w`` takes positions ``r, r + w, r + 2w...`` of the one-process order,
    so global batch ``k`` of ``w`` processes with batch ``b`` holds exactly the examples of
    batch ``k`` of one process with batch ``w * b``: adding devices changes how fast a run
    goes, not what it trains on. (Lightning's own sampler would shuffle the order a second
    time.) Being a ``DistributedSampler``, Lightning uses it as it is and calls
    :meth:`set_epoch` on it.

    Args:
        n: the number of examples.
        seed: the run's seed.
        shuffle: ``False`` keeps the file order.
        num_replicas: the number of processes (default: the process group's size).
        rank: this process's global rank (default: from the process group).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        self.epoch_order = EpochShuffleSampler(n, seed, shuffle)

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order.order(self.epoch)
        # Padded to a multiple of the processes with its first examples, as DistributedSampler.
        while len(order) < self.total_size:
            order += order[: self.total_size - len(order)]
        return iter(order[self.rank : self.total_size : self.num_replicas])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position inside an epoch survives a checkpoint.

    Args:
        dataset: the (map-style) dataset.
        batch_size: examples per batch.
        seed: the run's seed; epoch ``e`` is shuffled with ``seed + e``.
        shuffle: shuffle each epoch (``False``: file order).
        epoch: the epoch this loader starts in (the trainer's current epoch); a saved state
            from another epoch is ignored, so extending a finished run starts a fresh epoch.
        sampler: a :class:`ShardedEpochSampler` (several processes), or Lightning's own when
            it re-creates the loader; the position is then restored by skipping batches.
        **kwargs: any other ``DataLoader`` argument (``collate_fn``, ``num_workers``...).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 1,
        *,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        sampler: Sampler | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("shuffle", None)
        if sampler is None:
            sampler = EpochShuffleSampler(len(dataset), seed, shuffle)
            sampler.set_epoch(epoch)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.seed = int(seed)
        self.start_epoch = int(epoch)
        self._served = 0  # batches of the current epoch handed to the training loop
        self._skip = 0  # batches to skip when the next epoch starts (resume, foreign sampler)

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", self.start_epoch))

    def set_epoch(self, epoch: int) -> None:
        """Say which epoch comes next (when the loader was built before a checkpoint loaded)."""
        self.start_epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(int(epoch))

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: nothing is drawn until the first batch is asked for, so the epoch
        # Lightning sets just before that (set_epoch) is the one used.
        own = isinstance(self.sampler, EpochShuffleSampler)
        if own:  # our sampler skips the served examples itself
            done, skip = self.sampler.start // max(int(self.batch_size or 1), 1), 0
        else:  # a foreign sampler (multi-device): draw and drop the served batches
            done = skip = self._skip
        self._skip = 0
        self._served = done
        for i, batch in enumerate(super().__iter__()):
            if i < skip:
                continue
            self._served += 1
            yield batch

    # Lightning's _Stateful protocol: saved into every checkpoint, restored on resume.
    def state_dict(self) -> dict[str, int]:
        """Where the training loop is: epoch, batches served, and what fixes the order."""
        return {
            "epoch": self.epoch,
            "batches": self._served,
            "seed": self.seed,
            "num_examples": len(self.dataset),  # type: ignore[arg-type]
            "batch_size": int(self.batch_size or 1),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the batches a checkpoint says were already trained on (same epoch only)."""
        epoch, batches = int(state.get("epoch", 0)), int(state.get("batches", 0))
        same_data = state.get("num_examples") == len(self.dataset) and state.get(
            "batch_size"
        ) == int(self.batch_size or 1)
        if epoch != self.epoch or not same_data or batches >= len(self):
            return  # a finished epoch, or different data: start the epoch from its beginning
        if isinstance(self.sampler, EpochShuffleSampler):
            self.sampler.start = batches * int(self.batch_size or 1)
        else:
            self._skip = batches
