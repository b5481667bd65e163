"""A task = head + loss + metrics. The LightningModule delegates everything task-specific here.

Contract:
- ``Task(in_dim, fusion_stage, **options)``; ``in_dim`` is the fusion's ``out_dim``;
- ``step(model, batch) -> (loss, outputs)`` computes the loss for one batch;
- ``update(stage, outputs, batch)`` accumulates metrics for ``stage`` in ``("val", "test")``;
- ``epoch_end(stage, model)``: called at the end of an evaluation epoch, before ``compute``, with the
  model (for metrics that score the whole split, e.g. retrieval over every image-text pair);
- ``compute(stage) -> {"<stage>/<name>": value}`` and ``reset(stage)``;
- the builder passes ``image_dim`` / ``text_dim`` (the encoders' widths) besides ``in_dim``;
- ``monitor``: the metric that picks the best checkpoint, and ``monitor_mode`` ("max" / "min").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

STAGES = ("val", "test")


class Task(nn.Module):
    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def update(self, stage: str, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        raise NotImplementedError

    def epoch_end(self, stage: str, model: nn.Module) -> None:
        """Nothing by default."""

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reset(self, stage: str) -> None:
        raise NotImplementedError
