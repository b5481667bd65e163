"""Image-text matching (the seed's task): does this caption describe this image?

``logit = head(fusion(image, text))``, loss ``BCEWithLogits(logit, label)``, ``p = sigmoid(logit)``.
Metrics: ``acc`` / ``f1`` at ``p >= 0.5``, ``auroc``, ``loss``, and ``acc_<type>`` per pair type
(``positive`` and each kind of negative, see ``mmfuse.types.PAIR_TYPES``) when batches carry
``pair_type``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryF1Score

from mmfuse.tasks.base import STAGES, Task
from mmfuse.tasks.heads import SimilarityHead, build_head
from mmfuse.tasks.metrics import GroupedAccuracy
from mmfuse.types import PAIR_TYPES


class ITMTask(Task):
    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(self, in_dim: int, fusion_stage: str, head: str = "mlp", hidden_dim: int = 256,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.head = SimilarityHead() if fusion_stage == "late" else build_head(head, in_dim, 1, hidden_dim, dropout)
        self.metrics = nn.ModuleDict({
            stage: MetricCollection({
                "acc": BinaryAccuracy(), "auroc": BinaryAUROC(), "f1": BinaryF1Score(), "loss": MeanMetric()
            }, compute_groups=False)
            for stage in STAGES
        })
        self.by_type = nn.ModuleDict({stage: GroupedAccuracy(PAIR_TYPES) for stage in STAGES})

    def logits(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return self.head(model(batch)).squeeze(-1)

    def step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(model, batch)
        per_sample = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float(), reduction="none")
        return per_sample.mean(), {"logits": logits.detach().float(), "loss": per_sample.detach()}

    def update(self, stage: str, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        probs = torch.sigmoid(outputs["logits"])
        labels = batch["label"].long()
        m = self.metrics[stage]
        for name in ("acc", "auroc", "f1"):
            m[name].update(probs, labels)
        m["loss"].update(outputs["loss"])
        if "pair_type" in batch:
            correct = (probs >= 0.5).long() == labels
            self.by_type[stage].update(correct, batch["pair_type"])

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        out = {f"{stage}/{k}": v for k, v in self.metrics[stage].compute().items()}
        if self.by_type[stage].total.sum() > 0:
            out.update({f"{stage}/acc_{k}": v for k, v in self.by_type[stage].compute().items()})
        return out

    def reset(self, stage: str) -> None:
        self.metrics[stage].reset()
        self.by_type[stage].reset()
