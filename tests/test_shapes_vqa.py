"""data=shapes_vqa: answers true of the drawn scenes, balance per question text, the question-only prior,
determinism and the cache, the VQA batch contract, per-question-type accuracy in task=vqa (both answer
modes), and the text-only control against the default fusion (slow)."""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from mmfuse.builder import build_datamodule, build_module
from mmfuse.data.shapes.scene import COLORS, shape_mask
from mmfuse.data.shapes_vqa import datamodule as dm_module
from mmfuse.data.shapes_vqa.datamodule import ShapesVQADataModule, prior_accuracy, render_split
from mmfuse.data.shapes_vqa.questions import VOCABULARY, Question
from mmfuse.errors import MMFuseError
from mmfuse.tasks.vqa import VQATask
from mmfuse.tasks.vqa_generate import GenerativeVQATask

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TYPES = ("attribute", "relation", "count", "compare")
SINGULAR = {"circles": "circle", "squares": "square", "triangles": "triangle", "crosses": "cross"}
WORDS = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}
N_ANSWERS = {"what colour": 6, "what shape": 4, "what is": 3, "how many": 4, "are the": 2}


@pytest.fixture(scope="module")
def big() -> tuple:
    return render_split("train", 4000, 32, 0)


def relation_of(o, ref) -> str:
    """o's relation to ref, written out again from the scene.py rule (image y grows downwards)."""
    dx, dy = ref.x - o.x, ref.y - o.y
    if abs(dx) >= abs(dy):
        return "left" if dx > 0 else "right"
    return "above" if dy > 0 else "below"


def derive(q: Question, objs) -> str:
    """The answer read off the scene's objects alone (and the question's preconditions checked)."""
    t = q.text
    if m := re.fullmatch(r"what colour is the (\w+)\?", t):
        named = [o for o in objs if o.shape == m[1]]
        assert len(named) == 1, t
        return named[0].color
    if m := re.fullmatch(r"what shape is the (\w+) object\?", t):
        named = [o for o in objs if o.color == m[1]]
        assert len(named) == 1, t
        return named[0].shape
    if m := re.fullmatch(r"what is (to the left of|to the right of|above|below) the (\w+)\?", t):
        refs = [o for o in objs if o.shape == m[2]]
        assert len(refs) == 1, t
        ref = refs[0]
        for o in objs:  # every other object is clearly off the diagonal (margin 0.12 * 32)
            if o is not ref:
                d = sorted([abs(o.x - ref.x), abs(o.y - ref.y)])
                assert d[1] - d[0] >= 0.12 * 32
        hits = [o for o in objs if o is not ref and relation_of(o, ref) == WORDS[m[1]]]
        assert len(hits) == 1, t
        return hits[0].shape
    if m := re.fullmatch(r"how many (\w+) are there\?", t):
        return str(sum(o.shape == SINGULAR[m[1]] for o in objs))
    if m := re.fullmatch(r"how many (\w+) objects are there\?", t):
        return str(sum(o.color == m[1] for o in objs))
    if m := re.fullmatch(r"are the two shapes the same (colour|shape)\?", t):
        assert len(objs) == 2
        a, b = ((o.color if m[1] == "colour" else o.shape) for o in objs)
        return "yes" if a == b else "no"
    raise AssertionError(f"unknown question {t!r}")


def expected_type(text: str) -> str:
    return ("attribute" if text.startswith(("what colour", "what shape")) else "relation" if text.startswith("what is")
            else "count" if text.startswith("how many") else "compare")


def test_every_answer_is_true_of_its_scene_and_the_drawing(big):
    questions, scenes, images = big
    grid = np.arange(32, dtype=np.float32) + 0.5
    xs, ys = np.meshgrid(grid, grid)
    assert images.shape == (4000, 3, 32, 32) and images.dtype == torch.uint8
    for i, (q, objs) in enumerate(zip(questions, scenes, strict=True)):
        assert 2 <= len(objs) <= 4 and q.type == expected_type(q.text) and q.answer in VOCABULARY
        assert derive(q, objs) == q.answer, (q, objs)
        if i < 300:  # the image shows these objects: disjoint masks, each in (about) its colour
            masks = [shape_mask(o.shape, xs, ys, o) for o in objs]
            assert (np.sum(masks, axis=0) <= 1).all()
            for o, mask in zip(objs, masks, strict=True):
                mean = images[i].numpy().transpose(1, 2, 0)[mask].mean(0)
                nearest = min(COLORS, key=lambda c: np.abs(mean - np.array(COLORS[c])).sum())
                assert nearest == o.color, (o, mean)
    assert Counter(q.type for q in questions) == pytest.approx({t: 1000 for t in TYPES}, abs=100)
    assert Counter(len(s) for s in scenes).keys() == {2, 3, 4}
    assert len({q.text for q in questions}) == 4 + 6 + 16 + 10 + 2  # every question text occurs


def test_the_question_alone_gives_the_answer_away_nowhere(big):
    questions = big[0]
    by_text = defaultdict(Counter)
    for q in questions:
        by_text[q.text][q.answer] += 1
    for text, counts in by_text.items():
        k = next(n for prefix, n in N_ANSWERS.items() if text.startswith(prefix))
        assert len(counts) == k, (text, counts)  # every allowed answer occurs, nothing else
        n = sum(counts.values())
        if n >= 20:  # margin: 3.5 standard errors of a share 1/k among n (0.11 at 3 answers and 60 questions)
            margin = 3.5 * (1 / k * (1 - 1 / k) / n) ** 0.5
            assert max(counts.values()) / n <= 1 / k + margin, (text, counts, margin)
    # the question-only prior of a fresh split sits at chance: 1/6 and 1/4 (attribute), 1/3, 1/4, 1/2
    prior = prior_accuracy(questions, render_split("val", 2000, 32, 0)[0])
    chance = {"attribute": (1 / 6 + 1 / 4) / 2, "relation": 1 / 3, "count": 1 / 4, "compare": 1 / 2}
    for t, c in chance.items():
        assert prior[t] == pytest.approx(c, abs=0.05), prior


def test_question_prior_by_hand():
    Q = Question
    A, B, C = "what colour is the square?", "are the two shapes the same colour?", "how many squares are there?"
    train = [Q("attribute", A, "red"), Q("attribute", A, "red"), Q("attribute", A, "blue"),
             Q("compare", B, "no"), Q("compare", B, "yes"),  # a tie: yes comes first in the vocabulary
             Q("count", C, "2"), Q("count", C, "1"), Q("count", C, "1")]
    # overall: red 2, "1" 2 -> red (first in the vocabulary): what an unseen text gets
    val = [Q("attribute", A, "red"), Q("attribute", A, "blue"), Q("attribute", "what shape is the red object?", "circle"),
           Q("attribute", "what colour is the circle?", "red"), Q("compare", B, "no"), Q("compare", B, "yes"),
           Q("count", C, "1"), Q("count", C, "1"), Q("relation", "what is above the cross?", "square")]
    assert prior_accuracy(train, val) == pytest.approx(
        {"attribute": 2 / 4, "relation": 0.0, "count": 1.0, "compare": 1 / 2, "overall": 5 / 9})
    assert prior_accuracy(train, val[4:6]) == {"compare": 0.5, "overall": 0.5}  # types without questions left out


def test_scenes_depend_on_seed_split_and_sizes_only():
    a, b = render_split("val", 40, 32, 3), render_split("val", 40, 32, 3)
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    assert render_split("val", 40, 32, 4)[0] != a[0] and render_split("test", 40, 32, 3)[0] != a[0]
    assert render_split("val", 40, 24, 3)[2].shape == (40, 3, 24, 24)


def test_cache_round_trip_and_a_damaged_file(tmp_path, monkeypatch):
    first = ShapesVQADataModule(num_train=30, num_val=10, num_test=0, cache_dir=str(tmp_path))
    q, s, im = first.rendered("train")
    files = list(tmp_path.glob("train-*.pt"))
    assert len(files) == 1
    raw = torch.load(files[0], weights_only=True)  # plain data only
    assert raw["questions"][0] == [q[0].type, q[0].text, q[0].answer]

    def no_drawing(*a):
        raise AssertionError("drawn again instead of read from the cache")

    monkeypatch.setattr(dm_module, "render_split", no_drawing)
    q2, s2, im2 = ShapesVQADataModule(num_train=30, num_val=10, num_test=0, cache_dir=str(tmp_path)).rendered("train")
    assert q2 == q and s2 == s and torch.equal(im2, im)
    monkeypatch.undo()
    files[0].write_bytes(b"not a torch file")
    q3, _, im3 = ShapesVQADataModule(num_train=30, num_val=10, num_test=0, cache_dir=str(tmp_path)).rendered("train")
    assert q3 == q and torch.equal(im3, im)
    ShapesVQADataModule(num_train=31, num_val=10, num_test=0, cache_dir=str(tmp_path)).rendered("train")
    assert len(list(tmp_path.glob("train-*.pt"))) == 2  # another size, another file
    with pytest.raises(MMFuseError, match="data.num_answers=3129"):
        ShapesVQADataModule(num_answers=3129)


def _small(make_cfg, *extra):
    return make_cfg("data=shapes_vqa", "task=vqa", "data.num_train=64", "data.num_val=32", "data.num_test=0",
                    "data.batch_size=16", "data.eval_batch_size=32", *extra)


def test_batches_follow_the_vqa_contract_and_log_accuracy_per_type(make_cfg):
    cfg = _small(make_cfg)
    module = build_module(cfg)
    assert module.task.num_answers == 16 == len(VOCABULARY)  # task.num_answers follows data.num_answers
    dm = build_datamodule(cfg, module)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (32, 3, 32, 32) and batch["input_ids"].shape[0] == 32
    truth = [VOCABULARY.index(q.answer) for q in dm.questions("val")]
    assert batch["answer_ids"].tolist() == [[truth[i]] for i in batch["image_id"].tolist()]
    assert torch.equal(batch["answer_accuracy_ids"], batch["answer_ids"]) and batch["answer_ids"].dtype == torch.long
    assert batch["answer_scores"].tolist() == batch["answer_accuracy"].tolist() == [[1.0]] * 32
    types = [TYPES.index(dm.questions("val")[i].type) for i in batch["image_id"].tolist()]
    assert batch["question_type"].dtype == torch.long and batch["question_type"].tolist() == types
    assert dm.question_types() == TYPES and dm.vocabulary() == list(VOCABULARY) and "caption_ids" not in batch
    task = module.task
    task.attach_data(dm)
    with torch.no_grad():
        outputs = task.step(module.model, batch)[1]
    task.update("val", outputs, batch)
    m = task.compute("val")
    acc = outputs["acc"]
    for i, t in enumerate(TYPES):
        assert float(m[f"val/vqa_acc_{t}"]) == pytest.approx(float(acc[batch["question_type"] == i].mean()))
    assert float(m["val/vqa_acc"]) == pytest.approx(float(acc.mean()))


def test_per_type_accuracy_on_a_hand_made_batch():
    class Data:
        @staticmethod
        def question_types():
            return ("attribute", "relation", "count", "compare")

    task = VQATask(in_dim=4, fusion_stage="mid", num_answers=3)
    batch = {"question_type": torch.tensor([0, 0, 1, 2, 2, 2])}
    outputs = {"acc": torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0]), "loss": torch.ones(6)}
    task.update("val", outputs, batch)  # before attach_data (VQA v2): no per-type metrics
    assert sorted(task.compute("val")) == ["val/loss", "val/vqa_acc"]
    task.reset("val")
    task.attach_data(Data())
    task.update("val", outputs, batch)
    task.update("val", {"acc": torch.tensor([1.0, 0.0]), "loss": torch.ones(2)}, {"question_type": torch.tensor([3, 3])})
    m = {k: float(v) for k, v in task.compute("val").items()}
    assert m["val/vqa_acc"] == pytest.approx(5 / 8)
    assert (m["val/vqa_acc_attribute"], m["val/vqa_acc_relation"]) == pytest.approx((0.5, 1.0))
    assert (m["val/vqa_acc_count"], m["val/vqa_acc_compare"]) == pytest.approx((2 / 3, 0.5))
    task.reset("val")
    task.update("test", outputs, batch)
    t = task.compute("test")
    assert set(t) == {"test/loss", "test/vqa_acc", *(f"test/vqa_acc_{x}" for x in TYPES)}
    assert torch.isnan(t["test/vqa_acc_compare"])  # no compare question in the split


def test_generative_answers_scored_per_type(make_cfg):
    from test_vqa_generate import FixedAnswer

    cfg = _small(make_cfg, "task.answer=generate", "decoder=transformer")
    module = build_module(cfg)
    dm = build_datamodule(cfg, module)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    tok = module.task.decoder.tokenizer  # fitted on the answer vocabulary, some of it unseen in 64 train questions
    questions = dm.questions("val")
    decoded = [tok.decode([int(x) for x, keep in zip(ids, mask, strict=True) if keep][1:-1])
               for ids, mask in zip(batch["caption_ids"], batch["caption_mask"], strict=True)]
    assert decoded == [questions[i].answer for i in batch["question_index"].tolist()]
    assert dm.human_answers_of["val"][0] == [questions[0].answer] * 10
    task = GenerativeVQATask(in_dim=4, fusion_stage="mid", decoder=FixedAnswer(4, []))
    task.attach_data(dm)
    generated = {i: ("yes" if i % 2 else q.answer) for i, q in enumerate(questions)}  # even: right, odd: "yes"
    scores = task.score("val", generated)
    for t in TYPES:
        mine = [i for i, q in enumerate(questions) if q.type == t]
        right = sum(i % 2 == 0 or questions[i].answer == "yes" for i in mine)
        assert scores[f"vqa_acc_{t}"] == pytest.approx(right / len(mine)), t
    assert scores["vqa_acc"] == pytest.approx(sum(i % 2 == 0 or q.answer == "yes"
                                                  for i, q in enumerate(questions)) / len(questions))
    only = task.score("val", {0: "no"})  # the other types have no generated answer: left out
    assert set(only) == {"vqa_acc", "exact_vocab", "distinct", f"vqa_acc_{questions[0].type}"}


@pytest.mark.slow
def test_text_only_stays_at_the_prior_and_the_default_fusion_sees_the_image(make_cfg, tmp_path):
    from mmfuse.train import train

    # 1500 steps (~30 s each run on one CPU thread)
    budget = ("data.num_train=16000", "data.num_val=1000", "data.num_test=0", "data.batch_size=32", "trainer.max_epochs=3",
              f"data.cache_dir={tmp_path / 'cache'}", "callbacks.progress_bar=null")
    blind = train(make_cfg("data=shapes_vqa", "task=vqa", "fusion=text_only", "encoder.image=none", *budget,
                           subdir="blind"))
    prior = blind["data"]["val"]["question_prior"]
    assert blind["metrics"]["val/vqa_acc"] == pytest.approx(prior["overall"], abs=0.03), (blind["metrics"], prior)
    seeing = train(make_cfg("data=shapes_vqa", "task=vqa", *budget, subdir="seeing"))["metrics"]
    # measured: attribute 0.339 against the prior's 0.233 (+0.105); at the full default budget 0.510 / 0.222
    assert seeing["val/vqa_acc_attribute"] > prior["attribute"] + 0.07, (seeing, prior)
