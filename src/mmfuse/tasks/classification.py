"""``task=classification``: a label for each image-text pair, from ``data=jsonl``'s ``label`` field.

``logits = head(fusion(image, text)) ∈ R^C`` (late fusion: per-modality heads, logits added).
- ``label_type=multiclass`` (batch ``target`` = class index): loss cross-entropy; ``acc`` (top-1),
  ``f1`` (macro over classes), ``auroc`` (macro one-vs-rest on the softmax);
- ``label_type=multilabel`` (batch ``target`` = multi-hot ``[B, C]``): loss BCE-with-logits summed
  over labels; ``acc`` (per label at ``p >= 0.5``, micro), ``f1`` (macro over labels), ``auroc``
  (macro over labels).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelF1Score,
)

from mmfuse.errors import MMFuseError
from mmfuse.tasks.base import STAGES, Task
from mmfuse.tasks.heads import build_task_head

LABEL_TYPES = ("multiclass", "multilabel")


def _metrics(label_type: str, c: int) -> dict[str, Any]:
    if label_type == "multiclass":
        return {"acc": MulticlassAccuracy(c, average="micro"), "f1": MulticlassF1Score(c, average="macro"),
                "auroc": MulticlassAUROC(c, average="macro")}
    return {"acc": MultilabelAccuracy(c, average="micro"), "f1": MultilabelF1Score(c, average="macro"),
            "auroc": MultilabelAUROC(c, average="macro")}


class ClassificationTask(Task):
    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(self, in_dim: int, fusion_stage: str, num_classes: int | None = None,
                 label_type: str = "multiclass", head: str = "mlp", hidden_dim: int = 256,
                 dropout: float = 0.0, **_: Any) -> None:
        super().__init__()
        if label_type not in LABEL_TYPES:
            raise MMFuseError(f"task.label_type={label_type!r}: expected one of {LABEL_TYPES} "
                              "(with data=jsonl it follows data.labels)")
        if not num_classes or int(num_classes) < 2:
            raise MMFuseError(f"task.num_classes={num_classes!r}: give the number of classes (>= 2), "
                              "e.g. data.num_classes=10 with data=jsonl")
        self.label_type = label_type
        self.num_classes = int(num_classes)
        self.head = build_task_head(head, in_dim, self.num_classes, fusion_stage, hidden_dim, dropout)
        self.metrics = nn.ModuleDict({
            s: MetricCollection({**_metrics(label_type, self.num_classes), "loss": MeanMetric()}, compute_groups=False)
            for s in STAGES
        })

    def step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "target" not in batch:
            raise MMFuseError("task=classification needs labels in the batches: data=jsonl with "
                              "data.labels=multiclass or multilabel")
        logits = self.head(model(batch)).float()
        target = batch["target"]
        if self.label_type == "multiclass":
            per_sample = F.cross_entropy(logits, target.long(), reduction="none")
        else:
            per_sample = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").sum(1)
        return per_sample.mean(), {"logits": logits.detach(), "loss": per_sample.detach()}

    def update(self, stage: str, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        m = self.metrics[stage]
        if self.label_type == "multiclass":
            probs, target = outputs["logits"].softmax(dim=1), batch["target"].long()
        else:
            probs, target = outputs["logits"].sigmoid(), batch["target"].long()
        for name in ("acc", "f1", "auroc"):
            m[name].update(probs, target)
        m["loss"].update(outputs["loss"])

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        return {f"{stage}/{k}": v for k, v in self.metrics[stage].compute().items()}

    def reset(self, stage: str) -> None:
        self.metrics[stage].reset()
