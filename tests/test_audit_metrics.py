"""Audit findings on metrics (issue 13): ITM AUROC and decision rule, retrieval dtype, VQA accuracy.

Every expected value is exact and counted by hand in the test's docstring or comments.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.tasks.classification import ClassificationTask
from mmfuse.tasks.itm import ITMTask
from mmfuse.tasks.metrics import auroc
from mmfuse.tasks.recall import matrix_rows, query_ranks, recall_at_k, rerank_rows
from mmfuse.tasks.retrieval import DualEncoderTask, RetrievalTask
from mmfuse.tasks.vqa import VQATask
from mmfuse.tasks.vqa_answers import answer_accuracies, normalize_answer, official_accuracy, prediction_forms
from mmfuse.types import PAIR_TYPES, EncoderOutput, LateOutput

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


# -- retrieval: ranked in the scores' own dtype ---------------------------------------------------------


def test_recall_ranks_float64_scores_without_rounding_them_to_float32():
    """Image 0's own text scores 1 + 1e-9, another text 1.0 (the same float32): a hit at R@1 in
    float64, a tie (counted as a miss) after a float32 cast. Text 1 -> image 1 likewise."""
    scores = torch.tensor([[1 + 1e-9, 1.0], [1.0, 1 + 1e-9]], dtype=torch.float64)
    got = recall_at_k(matrix_rows(scores), torch.tensor([0, 1]), 2, ks=(1,))
    assert got == {"i2t_r1": 100.0, "t2i_r1": 100.0, "rsum": 200.0}


def test_rerank_keeps_a_float64_rerankers_order_over_float32_candidates():
    candidates = torch.tensor([[0.5, 0.7, 0.1], [0.2, 0.9, 0.3], [0.6, 0.4, 0.8]])  # float32, all wrong
    exact = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    exact += torch.eye(3, dtype=torch.float64) * 1e-9  # each own text 1e-9 above the others

    def scorer(i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return exact[i, t]

    got = recall_at_k(rerank_rows(matrix_rows(candidates), scorer, k=3), torch.arange(3), 3, ks=(1,))
    assert got == {"i2t_r1": 100.0, "t2i_r1": 100.0, "rsum": 200.0}


def passthrough(x: torch.Tensor) -> EncoderOutput:
    return EncoderOutput(x, x[:, None], torch.ones(len(x), 1, dtype=torch.bool))


class PooledProduct(nn.Module):
    """A float64 stand-in model: encoders pass the features through, fusion ``z = x ⊙ y``."""

    needs_tokens = False
    item_modality = "image"

    def encode(self, modality, batch):
        return passthrough(batch[modality])

    def encode_image(self, batch):
        return passthrough(batch["image"])

    def encode_text(self, batch):
        return passthrough(batch["text"])

    def fusion(self, inputs: dict[str, EncoderOutput]) -> torch.Tensor:
        return inputs["image"].pooled * inputs["text"].pooled

    def forward(self, batch):
        return LateOutput(image=batch["image"], text=batch["text"])


def test_itm_retrieval_scores_a_float64_model_in_float64():
    """Images x0 = (1, 0), x1 = (0, 1); texts y0 = (1 + 1e-9, 0) of image 0, y1 = (1, 0) of image 1;
    ITM logit = x . y. i2t: image 0 ranks y0 (1 + 1e-9) over y1 (1): hit (a float32 tie: miss);
    image 1 scores both 0: tie, miss -> i2t_r1 50. t2i: y0 ranks x0 first: hit; y1 scores x0 1 > x1 0:
    miss -> t2i_r1 50. With 2 candidates every R@5 / R@10 is 100: rsum 500 (450 after a float32 cast)."""
    task = ITMTask(2, "mid", head="linear").double()
    with torch.no_grad():
        task.head.weight.fill_(1.0)
        task.head.bias.zero_()
    task.eval()
    batch = {"image": torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
             "text": torch.tensor([[1 + 1e-9, 0.0], [1.0, 0.0]], dtype=torch.float64),
             "image_id": torch.tensor([0, 1]), "text_id": torch.tensor([0, 1])}
    model = PooledProduct()
    task.update("val", task.step(model, batch)[1], batch)
    task.epoch_end("val", model)
    m = {k: float(v) for k, v in task.compute("val").items()}
    assert {k: m[f"val/{k}"] for k in ("i2t_r1", "t2i_r1", "rsum")} == {"i2t_r1": 50.0, "t2i_r1": 50.0,
                                                                        "rsum": 500.0}


def test_dual_encoder_ranks_float64_embeddings_in_float64():
    """u0 = (1, 0), u1 = (0, 1); v0 = (1, 1e-5) of image 0, v1 = (1, 2e-5), v2 = (1e-5, 1) of image 1.
    cos(u0, v0) = 1 - 5e-11 > cos(u0, v1) = 1 - 2e-10 (both 1.0 in float32): image 0 hits at R@1;
    image 1 hits with v2. t2i: v0 -> u0 hit, v1 -> u0 (own image u1 scores 2e-5): miss, v2 -> u1 hit.
    So i2t_r1 = 100, t2i_r1 = 200/3 (i2t_r1 50 after a float32 cast)."""
    task = DualEncoderTask(2).double()
    task.eval()
    batch = {"image": torch.tensor([[1.0, 0], [0, 1], [0, 1]], dtype=torch.float64),
             "text": torch.tensor([[1.0, 1e-5], [1, 2e-5], [1e-5, 1]], dtype=torch.float64),
             "image_id": torch.tensor([0, 1, 1]), "text_id": torch.tensor([0, 1, 2])}
    _, out = task.step(PooledProduct(), batch)
    task.update("val", out, batch)
    task.epoch_end("val", None)
    m = {k: float(v) for k, v in task.compute("val").items()}
    assert (m["val/i2t_r1"], m["val/t2i_r1"]) == (100.0, pytest.approx(200 / 3, abs=1e-4))


# -- VQA: the official answer processing and accuracy ----------------------------------------------------
# Expected values: the reference evaluation (GT-Vision-Lab/VQA at c4e6a0e, the current version:
# PythonEvaluationTools/vqaEvaluation/vqaEval.py, processPunctuation + processDigitArticle after the
# newline/tab/strip steps of evaluate(), and evaluate()'s per-question accuracy, each human answer with its
# own answer_id), copied outside this repository and run under Python 3 on exactly these inputs; its
# outputs pasted here. (The values of its 2015 beta, 07aecec, differ: "t-shirt" and "yes!" stayed,
# "can't" became "can t", "dont" became "don’t".)

PREDICTION_FORMS = {
    't-shirt': 't shirt', 'none': '0', 'dont': "don't", "don't": "don't", '1,000': '1000', 'yes!': 'yes',
    '(yes)': 'yes', 'u.s.a.': 'usa', ' A Dog. ': 'dog', 'Two': '2', 'two dogs': '2 dogs', 'the one': '1',
    'an apple': 'apple', '3.5': '3.5', '3.': '3', '.5': '.5', '1,000.': '1000', 'cant': "can't",
    "can't": "can't", 'isnt': "isn't", "yall'll": "y'all'll", 'yall’ll': 'yall’ll',
    'i dont know': "i don't know", "what's up?": "what's up", 'left / right': 'left right',
    'left/right': 'left right', 'yes,no': 'yes no', 'yes , no': 'yes no', '2,3': '23', 'red;blue': 'red blue',
    '[red]': 'red', '"quote"': 'quote', 'a=b': 'b', 'a+b': 'b', 'back\\slash': 'back slash',
    'snake_case': 'snake case', '<html>': 'html', 'e@mail': 'e mail', '`tick`': 'tick', 'no?': 'no',
    'Yes\nno': 'yes no', 'tab\there': 'tab here', '10:30': '10:30', "it's": "it's", 'ten': '10', 'zero': '0',
    'Im': 'im', 'oclock': "o'clock", 'wheres': "where's", '...': '', '{curly}': 'curly',
    'x-ray - no': 'xray no', 'no!': 'no', "somebody'd": 'somebodyd', 'don’t': 'don’t',
}

ACCURACY_CASES = [  # (prediction, human answers, the reference's accuracy)
    ("yes", ["yes"] * 10, 1.0),
    ("yes", ["yes"] * 3 + ["no"] * 7, 0.9),
    ("yes", ["yes"] * 2 + ["no"] * 8, 0.6),
    ("yes", ["yes"] + ["no"] * 9, 0.3),
    ("yes", ["yes"] * 4 + ["no"] * 6, 1.0),
    ("no", ["yes"] * 10, 0.0),
    ("Yes", ["Yes"] * 10, 0.0),  # all the same: compared as given, and the prediction is lower-cased
    ("yes", ["Yes"] * 10, 0.0),
    ("yes", ["Yes"] * 5 + ["yes"] * 5, 1.0),
    ("yes", ["yes!"] * 3 + ["yes"] * 7, 1.0),
    ("yes!", ["yes!"] * 10, 0.0),  # all the same: "yes!" kept, the prediction becomes "yes"
    ("yes", ["(yes)"] * 4 + ["no"] * 6, 0.0),  # the ground truth "(yes)" becomes " yes "
    ("2", ["two"] * 5 + ["2"] * 5, 1.0),  # number words are mapped in the prediction only
    ("two", ["2"] * 3 + ["3"] * 7, 0.9),
    ("1000", ["1,000"] * 4 + ["1000"] + ["100"] * 5, 1.0),
    ("usa", ["u.s.a."] * 3 + ["usa"] + ["america"] * 6, 1.0),
    ("can't", ["can't"] * 3 + ["no"] * 7, 0.9),
    ("cant", ["can't"] * 3 + ["no"] * 7, 0.9),
    ("dont", ["don’t"] * 2 + ["dont"] * 2 + ["no"] * 6, 0.0),  # "don't" (ASCII) matches neither
    ("dont", ["don't"] * 2 + ["dont"] * 2 + ["no"] * 6, 0.6),
    ("dog", ["a dog"] * 3 + ["dog"] * 2 + ["cat"] * 5, 0.6000000000000001),
    ("t-shirt", ["t-shirt"] * 2 + ["shirt"] * 8, 0.6),
    ("t shirt", ["t-shirt"] * 3 + ["shirt"] * 7, 0.9),
    ("t-shirt", ["t-shirt"] * 10, 0.0),
    ("0", ["none"] * 3 + ["0"] * 3 + ["1"] * 4, 0.9),
    ("10:30", ["10:30"] * 2 + ["10 30"] * 8, 0.6),
    ("yes", ["yes", "yes", "yes"], 0.6666666666666666),
    ("yes", ["yes", "no", "no"], 0.2222222222222222),
]


def test_vqa_answer_processing_is_the_official_evaluations():
    assert {a: normalize_answer(a) for a in PREDICTION_FORMS} == PREDICTION_FORMS


@pytest.mark.parametrize(("prediction", "answers", "expected"), ACCURACY_CASES)
def test_vqa_accuracy_is_the_official_evaluations(prediction, answers, expected):
    assert official_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_vocabulary_accuracies_are_each_answers_official_accuracy():
    """``answer_accuracies`` scores every vocabulary answer at once, also the answers whose prediction
    forms coincide (``cant`` and ``can't`` -> ``can't``, ``two`` and ``2`` -> ``2``)."""
    vocabulary = ["yes", "no", "2", "cant", "can't", "1000", "dog", "don’t", "two", "t-shirt"]
    forms = prediction_forms(vocabulary)
    assert (forms["can't"], forms["2"], forms["t shirt"]) == ([3, 4], [2, 8], [9])
    for _, answers, _ in ACCURACY_CASES:
        dense = [official_accuracy(v, answers) for v in vocabulary]
        got = answer_accuracies(answers, forms)
        assert [got.get(i, 0.0) for i in range(len(vocabulary))] == pytest.approx(dense, abs=1e-12)
        assert all(got[i] > 0 for i in got)


class Features(nn.Module):
    def forward(self, batch):
        return batch["features"]


def test_vqa_task_reports_the_official_accuracy_not_the_min3_training_target():
    """Question 0: 3 of 10 humans said answer 1 (min3 target 1.0, official 0.9), 7 said answer 0 (1.0,
    1.0); question 1: 1 said answer 2 (1/3, 0.3), 9 said answer 0. The head predicts answer 1 and 2:
    vqa_acc = (0.9 + 0.3) / 2 = 0.6 (the targets would say (1 + 1/3) / 2). The loss stays the targets'."""
    task = VQATask(3, "mid", num_answers=3, head="linear")
    with torch.no_grad():
        task.head.weight.copy_(torch.eye(3))
        task.head.bias.zero_()
    batch = {"features": torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]),
             "answer_ids": torch.tensor([[1, 0, -1], [2, 0, -1]]),
             "answer_scores": torch.tensor([[1.0, 1.0, 0.0], [1 / 3, 1.0, 0.0]]),
             "answer_accuracy_ids": torch.tensor([[1, 0], [2, 0]]),
             "answer_accuracy": torch.tensor([[0.9, 1.0], [0.3, 1.0]])}
    loss, out = task.step(Features(), batch)
    task.update("val", out, batch)
    assert float(task.compute("val")["val/vqa_acc"]) == pytest.approx(0.6, abs=1e-7)
    target = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1 / 3]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(batch["features"], target, reduction="none")
    assert float(loss.detach()) == pytest.approx(float(expected.sum(1).mean()), abs=1e-6)


def test_vqa_task_without_official_accuracies_in_the_batch_is_an_error_not_the_targets():
    task = VQATask(3, "mid", num_answers=3, head="linear")
    batch = {"features": torch.eye(3)[:2], "answer_ids": torch.tensor([[1, -1], [2, -1]]),
             "answer_scores": torch.tensor([[1.0, 0.0], [1.0, 0.0]])}
    with pytest.raises(MMFuseError) as err:
        task.step(Features(), batch)
    assert str(err.value) == (
        "task=vqa: the batch has no 'answer_accuracy_ids' / 'answer_accuracy' (each answer's official accuracy, "
        "which val/vqa_acc reports; the training targets are not it); Fix: use data=vqa_v2, or give these "
        "fields in a data module of your own")


def test_rerank_keeps_the_candidate_order_of_items_one_float32_ulp_apart_below_the_reranked():
    """Image 0's candidates (float32): text 0 (another image's) 0.7, its own text 1 0.50000006 (0.5 + one
    ulp), text 2 (another's) 0.5. k = 1 re-scores text 0 only, at -30: text 1 stays above text 2, rank 1
    (text 0 above it). Subtracting a shift of 31.7 in float32 rounded 0.50000006 and 0.5 to the same
    value, a tie counted against the query: rank 2. Image 1: its text 0 re-scored (-30) above both: rank 0.
    Texts equal under the candidates stay tied (image 1 ranks texts 1 and 2, both 0.1, equally)."""
    candidates = torch.tensor([[0.7, 0.50000006, 0.5], [0.9, 0.1, 0.1]])
    assert float(candidates[0, 1]) > float(candidates[0, 2])
    rows = rerank_rows(matrix_rows(candidates), lambda i, t: torch.full(i.shape, -30.0), k=1)
    assert query_ranks(rows, torch.tensor([1, 0, 1]), 2, "i2t").tolist() == [1, 0]
    # floor(-30) - 1 - dense rank (0 for the re-scored top text): -31 - 1, -31 - 2
    assert rows("i2t", torch.tensor([0, 1])).tolist() == [[-30.0, -32.0, -33.0], [-30.0, -32.0, -32.0]]


def test_retrieval_with_a_dual_encoder_runs_a_float64_model_in_float64():
    """task=retrieval's defaults (hard negatives from the dual encoder) with contrastive_weight 0.5 on a
    ``.double()`` task: projections and ITM head the identity / all ones, images x0 = (1, 0), x1 = (0, 1),
    texts y_i = x_i. Each image's own text scores 1, the other 0, under both scorers: every recall 100,
    rsum 600, also the dual encoder's (itc_rsum). max_pairs=1 makes evaluation re-rank the dual
    encoder's top 10. Before: ``embed`` cast to float32 before the float64 projections (RuntimeError)."""
    task = RetrievalTask(2, "mid", head="linear", contrastive_weight=0.5, embed_dim=2, max_pairs=1,
                         image_dim=2, text_dim=2).double()
    with torch.no_grad():
        for linear in (task.itc.image, task.itc.text):
            linear.weight.copy_(torch.eye(2))
            linear.bias.zero_()
        task.head.weight.fill_(1.0)
        task.head.bias.zero_()
    x = torch.eye(2, dtype=torch.float64)
    batch = {"image": x, "text": x.clone(), "image_id": torch.tensor([0, 1]), "text_id": torch.tensor([0, 1])}
    model = PooledProduct()
    _, out = task.step(model, batch)
    assert out["itc"][0].dtype == out["itc"][1].dtype == torch.float64
    task.eval()
    task.update("val", task.step(model, batch)[1], batch)
    task.epoch_end("val", model)
    m = {k: float(v) for k, v in task.compute("val").items()}
    assert (m["val/rsum"], m["val/itc_rsum"]) == (600.0, 600.0)


# -- classification: the ITM decision rule for multilabel, AUROCs from ranks ---------------------------


def classification_metrics(logits: list, target: list, label_type: str) -> dict[str, float]:
    task = ClassificationTask(2, "mid", num_classes=len(logits[0]), label_type=label_type)
    task.update("val", {"logits": torch.tensor(logits), "loss": torch.zeros(len(logits))},
                {"target": torch.tensor(target)})
    return {k: float(v) for k, v in task.compute("val").items()}


def test_multilabel_predicts_a_label_where_its_logit_is_above_zero():
    """Predictions (logit > 0): [[1, 0], [0, 1], [0, 1], [1, 0]] against [[1, 0], [0, 1], [0, 1], [1, 1]]:
    7 of 8 labels right. F1 label 0: TP 2 -> 1.0; label 1: TP 2, FN 1 -> 4/5; macro 0.9. A float32
    sigmoid makes logit 1e-8 exactly 0.5, which torchmetrics' p > 0.5 predicts 0: acc 6/8, F1 (2/3 + 4/5)/2."""
    m = classification_metrics([[1e-8, -1.0], [0.0, 3.0], [-1e-8, 2.0], [5.0, -2.0]],
                               [[1, 0], [0, 1], [0, 1], [1, 1]], "multilabel")
    assert (m["val/acc"], m["val/f1"]) == (pytest.approx(7 / 8, abs=1e-7), pytest.approx(0.9, abs=1e-7))


def test_multilabel_auroc_ranks_each_labels_logits():
    """Label 0: logits 17, 20 (negatives) below 25, 30 (positives): 1.0 (float32 sigmoids are all 1.0:
    0.5). Label 1: positives -1, 2 against negatives 0.5, -3: 3 of 4 pairs ordered: 0.75. Macro 0.875.
    Label 0's predictions are all 1 (2 of 4 right), label 1's [0, 1, 1, 0] (2 of 4): acc 0.5."""
    m = classification_metrics([[17.0, -1.0], [20.0, 2.0], [25.0, 0.5], [30.0, -3.0]],
                               [[0, 1], [0, 1], [1, 0], [1, 0]], "multilabel")
    assert m["val/auroc"] == pytest.approx(0.875, abs=1e-15)
    assert m["val/acc"] == pytest.approx(0.5, abs=1e-7)


def test_multiclass_auroc_ranks_log_softmax_where_the_float32_softmax_saturates():
    """Samples [20, 0, 0] (class 0), [20, 1, 0] (class 1), [0, 0, 20] (class 2). Class 0 vs rest by
    log p_0: -log(1 + 2e^-20) = -4.1e-9 (the positive) > -log(1 + e^-19 + e^-20) = -7.7e-9 > -20: 1.0;
    in float32 both first p_0 are 1.0, a tie: (1/2 + 1) / 2 = 0.75. Classes 1 and 2: their positive
    scores highest (log p_1 = -19 against -20, -20; log p_2 = -4.1e-9 against about -20): 1.0 each."""
    m = classification_metrics([[20.0, 0, 0], [20.0, 1, 0], [0, 0, 20.0]], [0, 1, 2], "multiclass")
    assert m["val/auroc"] == 1.0
    assert m["val/acc"] == pytest.approx(2 / 3, abs=1e-7)  # argmax: 0, 0, 2


def test_macro_auroc_is_the_mean_over_the_labels_with_both_outcomes_and_nan_otherwise():
    """Label 1 is never positive (undefined): the macro AUROC is label 0's, 1.0; no label defined: NaN."""
    m = classification_metrics([[2.0, 1.0], [-1.0, 0.0]], [[1, 0], [0, 0]], "multilabel")
    assert m["val/auroc"] == 1.0
    assert math.isnan(classification_metrics([[2.0, 1.0], [-1.0, 0.0]], [[1, 0], [1, 0]], "multilabel")["val/auroc"])


@pytest.mark.skipif(not torch.backends.mps.is_available(), reason="needs Apple's MPS")
def test_auroc_of_half_scores_on_mps():
    """MPS has no float64: half scores are ranked as float32 there and the ranks made on the CPU."""
    scores = torch.tensor([1.0, 2, 2, 3], dtype=torch.float16, device="mps")
    assert float(auroc(scores, torch.tensor([0, 1, 0, 1], device="mps"))) == 0.875
