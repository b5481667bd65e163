"""A task = head + loss + metrics. The LightningModule delegates everything task-specific here.

Contract:
- ``Task(in_dim, fusion_stage, **options)``; ``in_dim`` is the fusion's ``out_dim``;
- ``step(model, batch) -> (loss, outputs)`` computes the loss for one batch;
- ``update(stage, outputs, batch)`` accumulates metrics for ``stage`` in ``("val", "test")``;
- ``epoch_end(stage, model)``: called at the end of an evaluation epoch, before ``compute``, with the
  model (for metrics that score the whole split, e.g. retrieval over every image-text pair);
- ``compute(stage) -> {"<stage>/<name>": value}`` and ``reset(stage)``;
- the builder passes ``image_dim`` / ``text_dim`` (the encoders' widths) besides ``in_dim``;
- ``monitor``: the metric that picks the best checkpoint, and ``monitor_mode`` ("max" / "min");
- ``per_sample(outputs, batch) -> {column: [n]}`` or None: each evaluated sample's score on the metrics
  that are means over samples (``acc``: 1 / 0; ``vqa_acc``), so that ``mean(column) = <stage>/<column>``,
  plus what identifies the sample (``label``); written to ``predictions/<split>.npz``
  (``mmfuse.predictions``) for ``python -m mmfuse.compare --test paired_bootstrap``.
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

    def per_sample(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """None: this task's metrics are not means over samples (retrieval recalls, CIDEr)."""
        return None
