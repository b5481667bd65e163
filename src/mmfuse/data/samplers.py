"""Samplers that make distributed training equal to one process, and a train loader that can resume.

``TrainOrder`` (training): every epoch one permutation of the ``N`` samples, drawn from
``seed + epoch``, is cut into global batches of ``G = world * batch_size`` consecutive samples; rank
``r`` takes the ``r``-th slice of every global batch. So ``world`` processes with ``batch_size`` each
see exactly the batches one process sees with ``G`` (DDP averages the ranks' mean gradients: the mean
over the global batch). With ``N`` not a multiple of ``world``, the order is padded to the next multiple
by repeating its first samples (as ``DistributedSampler`` does), so that every rank takes the same
number of steps; the last global batch is split evenly.

``EvalShard`` (validation / test): rank ``r`` takes samples ``r, r + world, ...``: every sample exactly
once, nothing padded, so the metrics reduced across ranks equal the one-process metrics. Ranks may get
one sample (and so one batch) more than others; evaluation runs no collective per batch.

``TrainBatches`` is ``TrainOrder`` yielding each batch as one index tensor (the train loader uses it with
``batch_size=None`` over datasets that take an index tensor). All subclass ``DistributedSampler`` so that
Lightning keeps them instead of injecting its own.

``ResumableLoader`` counts the batches it has yielded in the current epoch; Lightning saves its
``state_dict()`` in every checkpoint and calls ``load_state_dict()`` when it resumes mid-epoch, and the
loader then starts the epoch after the batches already trained on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmfuse.errors import MMFuseError


def default_seed(world: int) -> int:
    """The run's seed (``PL_GLOBAL_SEED``, set by ``seed_everything``); else 0 on several ranks (they
    must agree), else a draw from torch's generator."""
    if os.environ.get("PL_GLOBAL_SEED"):
        return int(os.environ["PL_GLOBAL_SEED"])
    if world > 1:
        return 0
    return int(torch.empty((), dtype=torch.int64).random_().item())


class TrainOrder(DistributedSampler):
    def __init__(self, dataset: Dataset, batch_size: int, world: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int | None = None) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle,
                         seed=default_seed(world) if seed is None else seed, drop_last=False)
        self.batch_size = int(batch_size)
        self.start_batch = 0  # batches of this rank to skip in the next epoch started (one-shot)

    def __len__(self) -> int:
        return self.samples_per_rank()

    def samples_per_rank(self) -> int:
        return math.ceil(len(self.dataset) / self.num_replicas)

    def global_order(self) -> torch.Tensor:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        padded = self.samples_per_rank() * self.num_replicas
        if padded > n:
            order = torch.cat([order, order.repeat(math.ceil(padded / n))[: padded - n]])
        return order

    def batches(self) -> Iterator[torch.Tensor]:
        """This rank's batches of the epoch as index tensors, after the ``start_batch`` skipped ones."""
        order = self.global_order()
        world, b = self.num_replicas, self.batch_size
        start, self.start_batch = self.start_batch * b * world, 0
        for begin in range(start, len(order), b * world):
            chunk = order[begin: begin + b * world]
            share = len(chunk) // world  # every chunk length is a multiple of world (padding above)
            yield chunk[self.rank * share: (self.rank + 1) * share].clone()  # not a view: sent to workers alone

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch.tolist()


class TrainBatches(TrainOrder):
    """``TrainOrder`` one batch at a time: each item is the ``LongTensor`` of a batch's sample indices, for a
    ``DataLoader(batch_size=None)`` over a dataset that takes such a tensor (``PairDataset``). The same
    batches, without collecting Python ints into a list per batch; ``len`` is the number of batches."""

    def __len__(self) -> int:
        return math.ceil(self.samples_per_rank() / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches()


class EvalShard(DistributedSampler):
    def __init__(self, dataset: Dataset, world: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=False, drop_last=False)

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a ``TrainOrder`` whose place in the epoch survives a checkpoint.

    ``state_dict() = {"epoch", "batches", "world", "batch_size", "seed"}``: ``batches`` is how many
    batches this rank has yielded in epoch ``epoch``. Lightning only calls ``load_state_dict`` when it
    restarts in the middle of an epoch.
    """

    _batches = 0
    _resume_at = 0

    def __iter__(self) -> Iterator[Any]:
        order: TrainOrder = self.sampler
        order.start_batch = self._batches = self._resume_at
        self._resume_at = 0
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        order: TrainOrder = self.sampler
        return {"epoch": order.epoch, "batches": self._batches, "world": order.num_replicas,
                "batch_size": order.batch_size, "seed": order.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        order: TrainOrder = self.sampler
        now = {"world": order.num_replicas, "batch_size": order.batch_size, "seed": order.seed}
        saved = {k: state.get(k) for k in now}
        if saved != now:
            raise MMFuseError(
                f"the checkpoint was saved in the middle of an epoch with data order {saved} (processes, "
                f"per-process batch size, seed) but this run has {now}: the rest of that epoch cannot be "
                "reproduced. Fix: resume with the same trainer devices, data.batch_size and seed, or from an "
                "end-of-epoch checkpoint"
            )
        order.set_epoch(int(state["epoch"]))
        self._resume_at = int(state["batches"])
