"""``task=classification``: a label for each image-text pair, from ``data=jsonl``'s ``label`` field.

``logits = head(fusion(image, text)) ∈ R^C`` (late fusion: per-modality heads, logits added).
- ``label_type=multiclass`` (batch ``target`` = class index): loss cross-entropy; ``acc`` (top-1:
  ``argmax_c logit_c``), ``f1`` (macro over classes, of the same prediction), ``auroc`` (macro
  one-vs-rest: class ``c`` scored by ``log softmax(logits)_c``, in float64, which ranks as ``p_c`` does
  without the float32 softmax's saturation at 1.0);
- ``label_type=multilabel`` (batch ``target`` = multi-hot ``[B, C]``): loss BCE-with-logits summed
  over labels; a label is predicted where ``logit > 0`` (``p > 0.5``; logit 0 is not predicted), the
  rule of ITM (``mmfuse.tasks.itm.predict``); ``acc`` (micro over labels) and ``f1`` (macro over labels)
  of those integer predictions, ``auroc`` (macro over labels) ranking each label's logits.

``groups`` (optional, from the data: ``data.groups``, e.g. data=shapes_av's interaction types): names of
sample groups; batches then carry ``<group_key>`` (index into ``groups``) and ``acc_<group>`` is the
multiclass accuracy within each group. Several groupings at once: ``groups`` a mapping
``{batch key: [names]}`` (shapes_av: its interaction types and its rules).

AUROCs: per class / label the rank statistic ``mmfuse.tasks.metrics.auroc`` (ties 1/2), then the mean
over the classes / labels where it is defined (both outcomes present); NaN where none is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelAccuracy,
    MultilabelF1Score,
)
from torchmetrics.utilities import dim_zero_cat

from mmfuse.errors import MMFuseError
from mmfuse.tasks.base import STAGES, Task
from mmfuse.tasks.heads import build_task_head
from mmfuse.tasks.itm import predict
from mmfuse.tasks.metrics import GroupedAccuracy, RankAUROC, as_float, auroc, cpu_if_mps

LABEL_TYPES = ("multiclass", "multilabel")


class MacroRankAUROC(RankAUROC):
    """Macro AUROC of ``scores [N, C]`` against binary ``hits [N, C]`` over the epoch (gathered across
    processes): ``auroc`` of each column, the mean over the columns that have both outcomes; NaN when
    none has, or when a score is NaN."""

    def update(self, scores: torch.Tensor, hits: torch.Tensor) -> None:
        self.scores.append(as_float(scores.detach()))
        self.labels.append(hits.detach().long())

    def compute(self) -> torch.Tensor:
        if isinstance(self.scores, list) and not self.scores:
            return torch.tensor(float("nan"), dtype=torch.float64)
        scores, hits = dim_zero_cat(self.scores), dim_zero_cat(self.labels).bool()
        defined = hits.any(dim=0) & ~hits.all(dim=0)
        if bool(scores.isnan().any()) or not bool(defined.any()):
            return torch.tensor(float("nan"), dtype=torch.float64)
        return torch.stack([auroc(scores[:, c], hits[:, c]) for c in defined.nonzero().flatten().tolist()]).mean()


def _metrics(label_type: str, c: int) -> dict[str, Any]:
    if label_type == "multiclass":
        return {"acc": MulticlassAccuracy(c, average="micro"), "f1": MulticlassF1Score(c, average="macro"),
                "auroc": MacroRankAUROC()}
    return {"acc": MultilabelAccuracy(c, average="micro"), "f1": MultilabelF1Score(c, average="macro"),
            "auroc": MacroRankAUROC()}


class ClassificationTask(Task):
    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(self, in_dim: int, fusion_stage: str, num_classes: int | None = None,
                 label_type: str = "multiclass", head: str = "mlp", hidden_dim: int = 256,
                 dropout: float = 0.0, modalities: Sequence[str] = ("image", "text"),
                 groups: Sequence[str] | Mapping[str, Sequence[str]] | None = None, group_key: str | None = "group",
                 **_: Any) -> None:
        super().__init__()
        if label_type not in LABEL_TYPES:
            raise MMFuseError(f"task.label_type={label_type!r}: expected one of {LABEL_TYPES} "
                              "(with data=jsonl it follows data.labels)")
        if not num_classes or int(num_classes) < 2:
            raise MMFuseError(f"task.num_classes={num_classes!r}: give the number of classes (>= 2), "
                              "e.g. data.num_classes=10 with data=jsonl")
        self.label_type = label_type
        self.num_classes = int(num_classes)
        self.head = build_task_head(head, in_dim, self.num_classes, fusion_stage, hidden_dim, dropout, modalities)
        self.metrics = nn.ModuleDict({
            s: MetricCollection({**_metrics(label_type, self.num_classes), "loss": MeanMetric()}, compute_groups=False)
            for s in STAGES
        })
        if isinstance(groups, Mapping):
            self.groups = {str(k): tuple(v) for k, v in groups.items()}
        else:
            self.groups = {str(group_key): tuple(groups)} if groups else {}
        if self.groups and label_type != "multiclass":
            raise MMFuseError("task.groups: accuracy per group is defined for label_type=multiclass only")
        self.by_group = nn.ModuleDict({
            s: nn.ModuleDict({k: GroupedAccuracy(names) for k, names in self.groups.items()}) for s in STAGES
        }) if self.groups else None

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

    def per_sample(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per sample: ``acc`` (multiclass: 1 when the arg-max is the class; multilabel: the share of labels
        right, whose mean over samples is the micro accuracy), ``label`` (multiclass: the class)."""
        logits, target = outputs["logits"], batch["target"].long()
        if self.label_type == "multiclass":
            return {"acc": (logits.argmax(dim=1) == target).float(), "label": target}
        return {"acc": (predict(logits) == target).float().mean(dim=1)}

    def update(self, stage: str, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        m, logits, target = self.metrics[stage], outputs["logits"], batch["target"].long()
        if self.label_type == "multiclass":
            predicted = logits.argmax(dim=1)
            scores, hits = cpu_if_mps(logits).double().log_softmax(dim=1), F.one_hot(target, self.num_classes)
        else:
            predicted, scores, hits = predict(logits), logits, target
        m["acc"].update(predicted, target)  # integer predictions: torchmetrics applies no threshold
        m["f1"].update(predicted, target)
        m["auroc"].update(scores, hits)
        m["loss"].update(outputs["loss"])
        if self.by_group is not None:
            for key, names in self.groups.items():
                if key not in batch:
                    raise MMFuseError(f"task.groups={list(names)} but the batches have no {key!r} "
                                      "(task.group_key): set task.groups=null, or give the data's group index")
                self.by_group[stage][key].update(predicted == target, batch[key].long())

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        out = {f"{stage}/{k}": v for k, v in self.metrics[stage].compute().items()}
        if self.by_group is not None:
            for metric in self.by_group[stage].values():
                out.update({f"{stage}/acc_{k}": v for k, v in metric.compute().items()})
        return out

    def reset(self, stage: str) -> None:
        self.metrics[stage].reset()
        if self.by_group is not None:
            for metric in self.by_group[stage].values():
                metric.reset()
