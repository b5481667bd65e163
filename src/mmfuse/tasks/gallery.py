"""Collect per-item tensors of an evaluation split (embeddings, encoder outputs), keyed by item id.

Retrieval needs every image and every text of the split at epoch end, while validation sees them in
batches of pairs (an image several times, once per caption). ``Gallery`` is a torchmetrics ``Metric``
so the items are gathered across processes (DDP); ``items()`` drops the duplicates (a repeated id, or
the samples a distributed sampler pads with) and returns the tensors sorted by id.

Fields may be left out of every update (e.g. tokens when the scorer reads only pooled vectors).
With ``pad_to``, ``tokens`` / ``mask`` fields of different lengths (text tokens are padded per batch)
are padded to ``pad_to`` along dimension 1 so that every batch stacks.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mmfuse.errors import MMFuseError


class Gallery(Metric):
    full_state_update = False

    def __init__(self, fields: tuple[str, ...], pad_to: int | None = None) -> None:
        super().__init__()
        self.fields = tuple(fields)
        self.pad_to = pad_to
        self.add_state("ids", default=[], dist_reduce_fx="cat")
        for name in self.fields:
            self.add_state(f"f_{name}", default=[], dist_reduce_fx="cat")

    def update(self, ids: torch.Tensor, **tensors: torch.Tensor) -> None:
        if not set(tensors) <= set(self.fields):
            raise ValueError(f"Gallery.update takes fields among {self.fields}, got {sorted(tensors)}")
        self.ids.append(ids.detach().long())
        for name, t in tensors.items():
            t = t.detach()
            if self.pad_to and t.dim() >= 2 and name.endswith(("tokens", "mask")) and t.shape[1] != self.pad_to:
                if t.shape[1] > self.pad_to:
                    raise MMFuseError(f"{t.shape[1]} tokens exceed the retrieval gallery's limit of {self.pad_to}: "
                                      "raise task.max_text_tokens")
                pad = [0, 0] * (t.dim() - 2) + [0, self.pad_to - t.shape[1]]
                t = F.pad(t, pad)
            getattr(self, f"f_{name}").append(t)

    def __len__(self) -> int:
        return sum(len(i) for i in self.ids) if isinstance(self.ids, list) else len(self.ids)

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"ids": [N] sorted distinct ids, field: [N, ...]}`` (first occurrence of each id; only the
        fields that were updated)."""
        ids = dim_zero_cat(self.ids)
        order = torch.argsort(ids, stable=True)
        sorted_ids = ids[order]
        first = torch.ones_like(sorted_ids, dtype=torch.bool)
        first[1:] = sorted_ids[1:] != sorted_ids[:-1]
        keep = order[first]
        out = {"ids": ids[keep]}
        for name in self.fields:
            values = getattr(self, f"f_{name}")
            if isinstance(values, list) and not values:
                continue
            values = dim_zero_cat(values)
            if len(values) == len(ids):  # a field never updated comes back empty from a process sync
                out[name] = values[keep]
        return out

    def items(self) -> dict[str, torch.Tensor] | None:
        """``compute()``, or None when nothing was collected on any process. Under DDP every process must
        call this (as it must ``compute``): the processes first exchange their item counts and field
        shapes, so no process computes a gallery that none updated, and one that saw no items joins the
        others' sync with empty tensors of their shapes."""
        count = len(self)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            mine = (count, {name: (tuple(values[0].shape[1:]), str(values[0].dtype).removeprefix("torch."))
                            for name in self.fields if (values := getattr(self, f"f_{name}"))})
            everyone: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(everyone, mine)
            count = sum(n for n, _ in everyone)
            if count and not len(self):
                self._join_empty({k: v for _, shapes in everyone for k, v in shapes.items()})
        if count == 0:
            return None
        with warnings.catch_warnings():
            if not len(self):  # this process saw none of the items the others gathered: not an error
                warnings.filterwarnings("ignore", message=".*was called before the ``update``")
            out = self.compute()
        return out if len(out["ids"]) else None

    def _join_empty(self, shapes: dict[str, tuple[tuple[int, ...], str]]) -> None:
        """Zero-length states of the other processes' trailing shapes / dtypes, for the sync."""
        self.ids.append(torch.zeros(0, dtype=torch.long, device=self.device))
        for name, (shape, dtype) in shapes.items():
            getattr(self, f"f_{name}").append(torch.zeros((0, *shape), dtype=getattr(torch, dtype), device=self.device))
