"""Audit findings on metrics (issue 13): ITM AUROC and decision rule, retrieval dtype, VQA accuracy.

Every expected value is exact and counted by hand in the test's docstring or comments.
"""

from __future__ import annotations

import pytest
import torch

from mmfuse.tasks.itm import ITMTask
from mmfuse.tasks.metrics import auroc
from mmfuse.types import PAIR_TYPES

# -- ITM: AUROC on the logits' ranks, one decision rule (logit > 0) --------------------------------------


def itm_metrics(logits: list[float], labels: list[int], types: list[str] | None = None) -> dict[str, float]:
    """``ITMTask.update`` / ``compute`` on fixed logits (what a validation step hands over)."""
    task = ITMTask(2, "mid", head="linear")
    outputs = {"logits": torch.tensor(logits), "loss": torch.zeros(len(logits)),
               "labels": torch.tensor(labels, dtype=torch.float32)}
    if types is not None:
        outputs["pair_type"] = torch.tensor([PAIR_TYPES.index(t) for t in types])
    task.update("val", outputs, {})
    return {k: float(v) for k, v in task.compute("val").items()}


def test_itm_auroc_ranks_confident_logits_instead_of_tying_their_float32_probabilities():
    """The audit's case. Positives 20, 25, 30, 35, 40, 26, 19 against negatives 17, 18, 22: of the
    7 x 3 = 21 pairs the positive scores higher in 19 (20 and 19 are below 22), so AUROC = 19/21 =
    0.905 (scikit-learn's value). float32 sigmoids of these logits are all 1.0: AUROC 0.5."""
    logits = [17.0, 20, 25, 30, 35, 40, 18, 22, 26, 19]
    labels = [0, 1, 1, 1, 1, 1, 0, 0, 1, 1]
    assert float(auroc(torch.tensor(logits), torch.tensor(labels))) == pytest.approx(19 / 21, abs=1e-15)
    assert itm_metrics(logits, labels)["val/auroc"] == pytest.approx(19 / 21, abs=1e-15)


def test_auroc_counts_ties_one_half_and_is_undefined_without_both_classes():
    # positives 2, 3 vs negatives 1, 2: 2>1, 2=2 (1/2), 3>1, 3>2 -> 3.5 / 4
    assert float(auroc(torch.tensor([1.0, 2, 2, 3]), torch.tensor([0, 1, 0, 1]))) == 0.875
    assert float(auroc(torch.tensor([5.0, 5, 5]), torch.tensor([0, 1, 1]))) == 0.5
    assert torch.isnan(auroc(torch.tensor([1.0, 2]), torch.tensor([1, 1])))


# pair: logit, label, type;  prediction under "logit > 0";  correct?
ITM_CASE = [
    (3.0, 1, "positive"),    # 1  yes
    (1e-8, 1, "positive"),   # 1  yes  (float32 sigmoid: exactly 0.5)
    (0.0, 1, "positive"),    # 0  no   (logit 0 is a mismatch)
    (-2.0, 1, "positive"),   # 0  no
    (-4.0, 0, "other"),      # 0  yes
    (-1e-8, 0, "other"),     # 0  yes  (float32 sigmoid: exactly 0.5)
    (2.0, 0, "other"),       # 1  no
    (-3.0, 0, "color"),      # 0  yes
    (0.0, 0, "color"),       # 0  yes
    (20.0, 1, "positive"),   # 1  yes
    (17.0, 0, "hard"),       # 1  no
]


def test_itm_acc_f1_auroc_and_per_type_accuracy_share_the_decision_rule_logit_above_zero():
    """Hand count of ``ITM_CASE``: 7 of 11 correct; TP 3 (3.0, 1e-8, 20), FP 2 (2.0, 17), FN 2 (0.0,
    -2.0): F1 = 2*3 / (2*3 + 2 + 2) = 0.6. Per type: positive 3/5, other 2/3, color 2/2, hard 0/1, and
    the counts per type add up to the overall 7/11. AUROC: each positive's wins over the 6 negatives
    (-4, -1e-8, 2, -3, 0, 17): 3 -> 5, 1e-8 -> 4, 0 -> 3 + 1/2 (tie with 0), -2 -> 2, 20 -> 6, so
    20.5 / 30. A double sigmoid or a threshold at probability 0 predicts every pair a match (acc 5/11,
    F1 10/16, negatives all wrong); thresholds on float32 probabilities get the +-1e-8 and 0 logits
    wrong in one metric or the other, and tie them for AUROC."""
    logits, labels, types = (list(c) for c in zip(*ITM_CASE))
    m = itm_metrics(logits, labels, types)
    assert m["val/acc"] == pytest.approx(7 / 11, abs=1e-7)
    assert m["val/f1"] == pytest.approx(0.6, abs=1e-7)
    assert m["val/auroc"] == pytest.approx(20.5 / 30, abs=1e-15)
    per_type = {k: v for k, v in m.items() if k.startswith("val/acc_")}
    assert per_type == pytest.approx({"val/acc_positive": 3 / 5, "val/acc_other": 2 / 3, "val/acc_color": 1.0,
                                      "val/acc_hard": 0.0}, abs=1e-7)
