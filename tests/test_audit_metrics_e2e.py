"""Audit findings on metrics (issue 13), end to end: VQA's official accuracy from a VQA v2 folder through
the data module's batches to ``val/vqa_acc``; retrieval galleries across 2 DDP processes.

Expected accuracies: the official evaluation (GT-Vision-Lab/VQA at c4e6a0e,
PythonEvaluationTools/vqaEvaluation/vqaEval.py), copied outside this repository and run on exactly these
answers; they are also counted by hand in the comments.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.io import encode_jpeg

from mmfuse.data.vqa import VQAv2DataModule
from mmfuse.encoders.transforms import ImageTransform
from mmfuse.encoders.word_tokenizer import WordTokenizer
from mmfuse.tasks.gallery import Gallery
from mmfuse.tasks.vqa import VQATask

TRAIN = {  # question id -> the human answers; prediction forms counted: yes 12, don't 10, t shirt 9, 2 8, no 7, shirt 4
    1: ["dont"] * 6 + ["don't"] * 4,
    2: ["t-shirt"] * 9 + ["shirt"],
    3: ["yes!"] * 5 + ["yes"] * 5,
    4: ["yes"] * 2 + ["two"] * 4 + ["2"] * 4,
    5: ["no"] * 7 + ["shirt"] * 3,
}
VOCABULARY = ["yes", "don't", "t shirt", "2", "no", "shirt"]
# question id -> human answers, the predicted vocabulary entry, its official accuracy. The humans differ,
# so their answers are compared after the punctuation step only ("yes!" -> "yes ", "t-shirt" -> "t shirt",
# "don’t" and "dont" unchanged, no number words mapped), the prediction after all steps.
VAL = {
    11: (["don’t"] * 2 + ["dont"] * 2 + ["no"] * 6, "don't", 0.0),  # no human answer is "don't"
    12: (["t-shirt"] * 3 + ["shirt"] * 7, "t shirt", 0.9),           # 3 match
    13: (["yes!"] * 2 + ["yes"] + ["no"] * 7, "yes", 0.3),           # 1 matches ("yes " is not "yes")
    14: (["two"] * 5 + ["2"] * 2 + ["3"] * 3, "2", 0.6),             # 2 match ("two" stays "two")
}
VQA_ACC = (0.0 + 0.9 + 0.3 + 0.6) / 4  # 0.45; every prediction's min3 training target is 1.0


def write_jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = torch.full((3, 24, 32), value, dtype=torch.uint8)
    path.write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())


def vqa_folder(root: Path) -> Path:
    for split, answers in (("train", TRAIN), ("val", {q: a for q, (a, _, _) in VAL.items()})):
        questions, annotations = [], []
        for q, given in answers.items():
            write_jpeg(root / f"{split}2014" / f"COCO_{split}2014_{q:012d}.jpg", 10 * q)
            questions.append({"question_id": q, "image_id": q, "question": f"question {q}?"})
            annotations.append({"question_id": q, "image_id": q,
                                "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(given)]})
        (root / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps({"questions": questions}))
        (root / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


def vqa_module(root: Path, soft_score: str = "min3") -> VQAv2DataModule:
    image_file = {s: f"{s}2014/COCO_{s}2014_{{image_id:012d}}.jpg" for s in ("train", "val")}
    dm = VQAv2DataModule(str(root), questions={s: f"v2_OpenEnded_mscoco_{s}2014_questions.json" for s in image_file},
                         annotations={s: f"v2_mscoco_{s}2014_annotations.json" for s in image_file},
                         image_file=image_file, num_answers=len(VOCABULARY), soft_score=soft_score,
                         num_workers=0, batch_size=8, eval_batch_size=8)
    dm.attach(ImageTransform(16, (0.5,) * 3, (0.25,) * 3), WordTokenizer(512, 16))
    dm.setup("fit")
    return dm


class Predicts(nn.Module):
    """A stand-in model: the one-hot row of the answer chosen for each question (its ``text_id``)."""

    def __init__(self, choice: torch.Tensor, num_answers: int) -> None:
        super().__init__()
        self.choice, self.num_answers = choice, num_answers

    def forward(self, batch):
        return nn.functional.one_hot(self.choice[batch["text_id"]], self.num_answers).float()


@pytest.mark.parametrize("soft_score", ["min3", "official"])
def test_vqa_v2_folder_to_val_vqa_acc_is_the_official_accuracy(tmp_path, soft_score):
    dm = vqa_module(vqa_folder(tmp_path), soft_score)
    assert dm.vocabulary() == VOCABULARY
    captions = dm.split("val").captions
    choice = torch.tensor([VOCABULARY.index(VAL[int(c.split()[1][:-1])][1]) for c in captions])
    task = VQATask(len(VOCABULARY), "mid", num_answers=len(VOCABULARY), head="linear")
    with torch.no_grad():
        task.head.weight.copy_(5 * torch.eye(len(VOCABULARY)))
        task.head.bias.zero_()
    model = Predicts(choice, len(VOCABULARY))
    batches = list(dm.val_dataloader())
    assert sum(len(b["text_id"]) for b in batches) == len(VAL)
    for batch in batches:
        task.update("val", task.step(model, batch)[1], batch)
    assert float(task.compute("val")["val/vqa_acc"]) == pytest.approx(VQA_ACC, abs=1e-7)


def test_vqa_v2_batches_carry_each_vocabulary_answers_official_accuracy_sparse(tmp_path):
    """Per val question, the non-zero official accuracies of the vocabulary entries (the reference's
    values for all six entries) and the min3 targets from the normalised answers' counts."""
    dm = vqa_module(vqa_folder(tmp_path))
    batch = next(iter(dm.val_dataloader()))
    row = {int(dm.split("val").captions[int(t)].split()[1][:-1]): i for i, t in enumerate(batch["text_id"])}
    expected = {  # question -> ({entry: official accuracy > 0}, {entry: min3 target})
        11: ({"no": 1.0}, {"don't": 2 / 3, "no": 1.0}),  # "dont" -> "don't" (2); "don’t" is no entry's form
        12: ({"t shirt": 0.9, "shirt": 1.0}, {"t shirt": 1.0, "shirt": 1.0}),
        13: ({"yes": 0.3, "no": 1.0}, {"yes": 1.0, "no": 1.0}),  # "yes!" -> "yes" (3) for the target
        14: ({"2": 0.6}, {"2": 1.0}),  # "two" -> "2" (7) for the target; "3" is no entry
    }
    assert batch["answer_accuracy_ids"].shape == (4, 2) and batch["answer_ids"].shape == (4, 10)
    for q, (accuracy, target) in expected.items():
        ids, values = batch["answer_accuracy_ids"][row[q]].tolist(), batch["answer_accuracy"][row[q]].tolist()
        got = {VOCABULARY[i]: v for i, v in zip(ids, values) if i >= 0}
        assert got == pytest.approx(accuracy, abs=1e-7) and len(got) == len(accuracy)
        ids, values = batch["answer_ids"][row[q]].tolist(), batch["answer_scores"][row[q]].tolist()
        assert {VOCABULARY[i]: v for i, v in zip(ids, values) if i >= 0} == pytest.approx(target, abs=1e-7)


# -- retrieval galleries under DDP: the item count summed over the processes -----------------------------


def gallery_rank(rank: int, store: str, out_dir: str) -> None:
    """One of 2 gloo processes: an empty gallery on both, then one that only rank 0 fills."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            empty = Gallery(("pooled",)).items()
            gallery = Gallery(("pooled",))
            if rank == 0:
                gallery.update(torch.tensor([3, 1]), pooled=torch.tensor([[3.0], [1.0]]))
            items = gallery.items()
    finally:
        torch.distributed.destroy_process_group()
    result = {"empty": empty, "ids": items["ids"].tolist(), "pooled": items["pooled"].tolist(),
              "warnings": [str(w.message) for w in caught if "before the ``update``" in str(w.message)]}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_a_gallery_is_computed_only_when_some_process_updated_it_and_then_without_warnings(tmp_path):
    """Neither process updated: None on both (no compute, so no torchmetrics "compute before update"
    warning). Only rank 0 updated (ids 3, 1): both get the gathered ids sorted, 1 and 3, with their rows,
    and rank 1, whose own state is empty, does not warn."""
    torch.multiprocessing.spawn(gallery_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {
            "empty": None, "ids": [1, 3], "pooled": [[1.0], [3.0]], "warnings": []}, rank
