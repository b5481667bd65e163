"""Metrics beyond torchmetrics' own."""

from __future__ import annotations

import torch
from torchmetrics import Metric


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
