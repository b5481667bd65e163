"""Metrics beyond torchmetrics' own."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def cpu_if_mps(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU if it is on Apple's MPS, which has no float64; else ``t`` itself."""
    return t.cpu() if t.device.type == "mps" else t


def as_float(t: torch.Tensor) -> torch.Tensor:
    """``t`` as floating point without rounding: float32 / float64 unchanged, anything else (half,
    bfloat16, integers) as float64. Scores keep their own precision, so ranking them makes no new ties.
    On Apple's MPS (no float64) as float32 instead, on the device: exact for half and bfloat16 (every
    such value is a float32), integers above 2^24 in magnitude are rounded."""
    if t.dtype in (torch.float32, torch.float64):
        return t
    return t.float() if t.device.type == "mps" else t.double()


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of ``scores`` (any monotone score, e.g. logits) for binary ``labels``,
    as the Mann-Whitney statistic on the scores' ranks (ties count one half):

    ``AUROC = P(s_pos > s_neg) + P(s_pos = s_neg) / 2 = (R_pos - P (P + 1) / 2) / (P N)``

    with ``R_pos`` the sum of the positives' mid-ranks (1-based, ties get their mean rank), ``P`` / ``N``
    the numbers of positives / negatives. Only the order of the scores matters, so logits are ranked
    as they are, never squashed through a sigmoid (float32 rounds every logit above ~16.6 to 1.0).
    NaN when a class is absent or a score is NaN (undefined). Computed on the CPU for MPS tensors (the
    ranks are float64).
    """
    scores, labels = cpu_if_mps(as_float(scores.flatten())), cpu_if_mps(labels.flatten().bool())
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0 or bool(scores.isnan().any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=scores.device)
    order = torch.argsort(scores)
    _, group, counts = torch.unique_consecutive(scores[order], return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # 1-based rank of each group's last member
    mid = last - (counts.double() - 1) / 2
    ranks = torch.empty(len(scores), dtype=torch.float64, device=scores.device)
    ranks[order] = mid[group]
    return (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class RankAUROC(Metric):
    """``auroc`` over every ``(score, label)`` of the epoch, gathered across processes."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        self.scores.append(as_float(scores.detach()).flatten())
        self.labels.append(labels.detach().flatten().long())

    def compute(self) -> torch.Tensor:
        if isinstance(self.scores, list) and not self.scores:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return auroc(dim_zero_cat(self.scores), dim_zero_cat(self.labels))


class GroupedAccuracy(Metric):
    """Accuracy per group: ``acc_g = #correct in g / #samples in g``; synchronised across processes.

    ``compute()`` returns ``{name: acc}`` for the groups that had samples.
    """

    full_state_update = False

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names
        self.add_state("correct", default=torch.zeros(len(names), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(len(names), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor, group: torch.Tensor) -> None:
        n = len(self.names)
        self.correct += torch.bincount(group[correct.bool()], minlength=n)[:n]
        self.total += torch.bincount(group, minlength=n)[:n]

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            name: self.correct[i].float() / self.total[i]
            for i, name in enumerate(self.names)
            if self.total[i] > 0
        }
