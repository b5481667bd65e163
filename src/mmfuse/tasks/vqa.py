"""``task=vqa``: visual question answering as multi-label classification over an answer vocabulary.

``logits = head(fusion(image, question)) ∈ R^K`` (K = ``num_answers``; late fusion: per-modality
heads, logits added). Targets are the batch's soft scores ``t_a`` (``answer_ids`` / ``answer_scores``,
as ``data.soft_score`` makes them, see ``mmfuse.data.vqa``); loss ``sum_a BCEWithLogits(logit_a, t_a)``,
averaged over questions (Teney et al. 2018, "Tips and tricks for VQA").

Metric ``vqa_acc``: the official VQA accuracy (``mmfuse.tasks.vqa_answers``: the leave-one-human-out
mean of ``min(1, matches / 3)``, after the official answer processing) of the predicted answer
``argmax_a logit_a``, averaged over questions. It is read from the batch's sparse ``answer_accuracy_ids``
/ ``answer_accuracy`` (each vocabulary answer's official accuracy where above 0, padded with -1 / 0),
which the data computes from the raw human answers (``mmfuse.data.vqa``); a batch without them is an
error, never scored against its targets. So the metric does not follow the training target: with
``data.soft_score=min3`` (``min(n / 3, 1)``, which gives 1.0 where the official accuracy gives 0.9 for
3 of 10 humans) ``vqa_acc`` stays the official one. Also ``loss``.

Per question type: when the datamodule has ``question_types()`` (``data=shapes_vqa``; ``attach_data``)
and the batches carry ``question_type`` (its index), ``vqa_acc_<type>`` is the same mean over that
type's questions (a ``MeanMetric`` per type, weighted by membership, so it is reduced across processes
like ``vqa_acc``; NaN for a type without questions in the split). Data without question types (VQA v2)
logs ``vqa_acc`` and ``loss`` only.

``task.answer``: ``classify`` (the above) or ``generate``: ``VQATask(...)`` then builds a
``mmfuse.tasks.vqa_generate.GenerativeVQATask`` (a decoder writes the answer, scored with the same
official accuracy), and ``uses_decoder`` tells the builder to pass it the ``decoder``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection

from mmfuse.errors import MMFuseError
from mmfuse.tasks.base import STAGES, Task
from mmfuse.tasks.heads import build_task_head


def dense_targets(answer_ids: torch.Tensor, answer_scores: torch.Tensor, num_answers: int) -> torch.Tensor:
    """``[B, K]`` soft targets from the padded ``answer_ids`` (-1 = none) and ``answer_scores`` ``[B, M]``."""
    valid = answer_ids >= 0
    if bool((answer_ids >= num_answers).any()):
        raise MMFuseError(f"answer id {int(answer_ids.max())} >= task.num_answers={num_answers}: set "
                          "task.num_answers to the data's data.num_answers")
    target = torch.zeros(answer_ids.shape[0], num_answers, device=answer_scores.device)
    return target.scatter_add_(1, answer_ids.clamp(min=0), answer_scores.float() * valid)  # padding adds 0


def vqa_accuracy(logits: torch.Tensor, accuracy: torch.Tensor) -> torch.Tensor:
    """Per question: ``accuracy [B, K]`` (dense, e.g. ``dense_targets`` of ``answer_accuracy_ids`` /
    ``answer_accuracy``) at the arg-max answer."""
    return accuracy.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1)


ANSWER_MODES = ("classify", "generate")


def answer_mode(answer: Any) -> str:
    if answer not in ANSWER_MODES:
        raise MMFuseError(f"task.answer={answer!r}: expected classify (a head over the answer vocabulary) or "
                          "generate (a decoder writes the answer: also set decoder=transformer | hf_cross | prefix_lm)")
    return str(answer)


class VQATask(Task):
    monitor = "val/vqa_acc"
    monitor_mode = "max"

    @staticmethod
    def uses_decoder(task_cfg: Any) -> bool:
        """Whether ``task_cfg`` asks for generated answers (the builder then passes ``decoder``)."""
        return answer_mode(task_cfg.get("answer", "classify")) == "generate"

    def __new__(cls, *args: Any, **kwargs: Any) -> Task:
        if cls is VQATask and answer_mode(kwargs.get("answer", "classify")) == "generate":
            from mmfuse.tasks.vqa_generate import GenerativeVQATask

            return GenerativeVQATask(*args, **kwargs)  # not a VQATask: its __init__ is not run again
        return super().__new__(cls)

    def __init__(self, in_dim: int, fusion_stage: str, num_answers: int = 3129, head: str = "mlp",
                 hidden_dim: int = 512, dropout: float = 0.0, modalities: Sequence[str] = ("image", "text"),
                 **_: Any) -> None:
        super().__init__()
        self.num_answers = int(num_answers)
        self.head = build_task_head(head, in_dim, self.num_answers, fusion_stage, hidden_dim, dropout, modalities)
        self.metrics = nn.ModuleDict({s: MetricCollection({"vqa_acc": MeanMetric(), "loss": MeanMetric()},
                                                          compute_groups=False) for s in STAGES})
        self.question_types: tuple[str, ...] = ()
        self.type_metrics = nn.ModuleDict()

    def attach_data(self, datamodule: Any) -> None:
        """The data's question types, when it has them: one ``vqa_acc_<type>`` metric per type and stage."""
        types = getattr(datamodule, "question_types", None)
        if types is None or tuple(types()) == self.question_types:
            return
        self.question_types = tuple(types())
        device = self.metrics[STAGES[0]]["vqa_acc"].device
        self.type_metrics = nn.ModuleDict({s: MetricCollection({f"vqa_acc_{t}": MeanMetric() for t in self.question_types},
                                                               compute_groups=False) for s in STAGES}).to(device)

    def step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "answer_ids" not in batch:
            raise MMFuseError("task=vqa needs answers in the batches (data=vqa_v2)")
        logits = self.head(model(batch)).float()
        target = dense_targets(batch["answer_ids"], batch["answer_scores"], self.num_answers)
        per_sample = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=1)
        if "answer_accuracy_ids" not in batch or "answer_accuracy" not in batch:
            raise MMFuseError("task=vqa: the batch has no 'answer_accuracy_ids' / 'answer_accuracy' (each answer's "
                              "official accuracy, which val/vqa_acc reports; the training targets are not it); "
                              "Fix: use data=vqa_v2, or give these fields in a data module of your own")
        accuracy = dense_targets(batch["answer_accuracy_ids"], batch["answer_accuracy"], self.num_answers)
        return per_sample.mean(), {"loss": per_sample.detach(), "acc": vqa_accuracy(logits.detach(), accuracy)}

    def per_sample(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per question: ``vqa_acc``, the official accuracy of the arg-max answer."""
        return {"vqa_acc": outputs["acc"].float()}

    def update(self, stage: str, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        self.metrics[stage]["vqa_acc"].update(outputs["acc"])
        self.metrics[stage]["loss"].update(outputs["loss"])
        if self.question_types and "question_type" in batch:
            question_type = batch["question_type"]
            for i, name in enumerate(self.question_types):
                self.type_metrics[stage][f"vqa_acc_{name}"].update(outputs["acc"], (question_type == i).float())

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        out = {f"{stage}/{k}": v for k, v in self.metrics[stage].compute().items()}
        if self.question_types:
            out.update({f"{stage}/{k}": v for k, v in self.type_metrics[stage].compute().items()})
        return out

    def reset(self, stage: str) -> None:
        self.metrics[stage].reset()
        if self.question_types:
            self.type_metrics[stage].reset()
