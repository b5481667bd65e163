"""data=shapes_dialog: answers true of the scene, the referent rule, the ambiguity that makes history
rounds need the history, balance, candidates and relevance, caching, and the DialogDataset batches.

The checks re-derive everything from the scene objects and the question / answer strings with a parser
of their own (``value_of_answer``, ``truth``), not from the generator's ``Round`` fields.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from mmfuse.data.dialog import DialogInputs, round_texts
from mmfuse.data.shapes.scene import COLORS, SHAPES
from mmfuse.data.shapes_dialog import datamodule as dm_module
from mmfuse.data.shapes_dialog.datamodule import ShapesDialogDataModule, make_dialogs
from mmfuse.data.shapes_dialog.rounds import ANSWERS, KIND_NAMES, RIVALS
from mmfuse.encoders.word_tokenizer import WordTokenizer, split_words
from mmfuse.errors import MMFuseError

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "1": 1, "2": 2, "3": 3, "4": 4}
PRONOUN = re.compile(r"^(what colour is it|what shape is it|what is it|is it .*)\?$")


def value_of_answer(text: str) -> str:
    """What an answer string states, parsed from its words."""
    words = split_words(text)
    colors = [w for w in words if w in COLORS]
    shapes = [w for w in words if w in SHAPES]
    if colors and shapes:
        return f"object:{colors[0]} {shapes[0]}"
    if colors:
        return f"color:{colors[0]}"
    if shapes:
        return f"shape:{shapes[0]}"
    if words[0] in ("yes", "yeah", "yep"):
        return "yes"
    if words[0] in ("no", "nope"):
        return "no"
    return f"count:{next(NUMBERS[w] for w in words if w in NUMBERS)}"


def named_object(question: str, objects) -> int:
    """The object an image question picks out (present in the scene), or -1."""
    m = re.fullmatch(r"what colour is the (\w+)\?", question)
    if m:
        return next(i for i, o in enumerate(objects) if o.shape == m[1])
    m = re.fullmatch(r"what shape is the (\w+) object\?", question)
    if m:
        return next(i for i, o in enumerate(objects) if o.color == m[1])
    m = re.fullmatch(r"is there a (\w+) (\w+)\?", question)
    if m and m[2] != "object":
        return next((i for i, o in enumerate(objects) if (o.color, o.shape) == (m[1], m[2])), -1)
    m = re.fullmatch(r"is there a (\w+)(?: object)?\?", question)
    if m:
        return next((i for i, o in enumerate(objects) if m[1] in (o.color, o.shape)), -1)
    return -1


def truth(question: str, objects, referent: int) -> str:
    """The value that answers ``question`` about ``objects``, "it" being ``objects[referent]``."""
    yes_no = {True: "yes", False: "no"}
    if question == "how many objects are there?":
        return f"count:{len(objects)}"
    if PRONOUN.match(question):
        o = objects[referent]
        if question == "what colour is it?":
            return f"color:{o.color}"
        if question == "what shape is it?":
            return f"shape:{o.shape}"
        if question == "what is it?":
            return f"object:{o.color} {o.shape}"
        word = question.removeprefix("is it ").removeprefix("a ").removesuffix("?")
        return yes_no[word in (o.color, o.shape)]
    if question.startswith("is there"):
        return yes_no[named_object(question, objects) >= 0]
    o = objects[named_object(question, objects)]
    return f"color:{o.color}" if question.startswith("what colour") else f"shape:{o.shape}"


def referents(questions: list[str], objects) -> list[int]:
    """The documented rule: "it" is the object named by the most recent earlier round that names one."""
    out, named = [], -1
    for q in questions:
        if PRONOUN.match(q):
            out.append(named)
        else:
            out.append(-1)
            named = named_object(q, objects) if named_object(q, objects) >= 0 else named
    return out


@pytest.fixture(scope="module")
def many():
    return make_dialogs("train", 2000, 32, 0, 10, 100)


@pytest.fixture(scope="module")
def small():
    dm = ShapesDialogDataModule(num_train=40, num_val=10, num_test=0, image_size=32)
    return dm, dm.dialogs("train")


def test_every_ground_truth_is_true_of_the_scene_and_referent(many):
    scenes, dialogs, _, _ = many
    for scene, dialog in zip(scenes, dialogs, strict=True):
        refs = referents([r.question for r in dialog], scene.objects)
        for r, ref in zip(dialog, refs, strict=True):
            assert value_of_answer(r.answer) == truth(r.question, scene.objects, ref), (scene, r)


def test_history_referent_is_the_documented_rule(many):
    scenes, dialogs, _, _ = many
    for scene, dialog in zip(scenes, dialogs, strict=True):
        refs = referents([r.question for r in dialog], scene.objects)
        assert KIND_NAMES[dialog[0].kind] == "image" and named_object(dialog[0].question, scene.objects) >= 0
        for k, (r, ref) in enumerate(zip(dialog, refs, strict=True)):
            assert (KIND_NAMES[r.kind] == "history") == bool(PRONOUN.match(r.question))
            if r.kind == 1:
                assert r.referent == ref >= 0
                before = dialog[k - 1]  # "it" is the object just talked about: never after a count or a "no"
                assert before.kind == 1 or named_object(before.question, scene.objects) == ref


def test_history_rounds_are_ambiguous_without_the_history(many):
    scenes, dialogs, _, _ = many
    answers_of = defaultdict(set)
    no_history = {0: [], 1: []}
    for scene, dialog in zip(scenes, dialogs, strict=True):
        n = len(scene.objects)
        for r in dialog:
            if r.kind == 1:
                per_object = [truth(r.question, scene.objects, i) for i in range(n)]
                assert len(set(per_object)) >= 2, (scene, r)
                answers_of[r.question].add(r.answer)
                # guessing the referent among the objects: right on the objects that share its answer
                no_history[1].append(per_object.count(value_of_answer(r.answer)) / n)
            else:
                no_history[0].append(value_of_answer(r.answer) == truth(r.question, scene.objects, -1))
    assert all(len(a) >= 2 for a in answers_of.values()), answers_of
    assert len(answers_of) == 6 + 4 + 3  # is it {colour}? / is it a {shape}? / what colour, shape, is it?
    assert np.mean(no_history[0]) == 1.0
    assert 0.38 < np.mean(no_history[1]) < 0.46  # 1/2 or 1/3 on attributes, 1/2 on yes/no


def test_image_questions_name_a_unique_object(many):
    scenes, dialogs, _, _ = many
    for scene, dialog in zip(scenes, dialogs, strict=True):
        for r in dialog:
            if r.kind == 1 or r.question == "how many objects are there?":
                continue
            words = re.findall(r"[a-z]+", r.question)
            color = next((w for w in words if w in COLORS), None)
            shape = next((w for w in words if w in SHAPES), None)
            matches = [o for o in scene.objects if color in (None, o.color) and shape in (None, o.shape)]
            assert len(matches) == (0 if value_of_answer(r.answer) == "no" else 1), (scene, r)


def test_answers_are_balanced_per_question_string(many):
    scenes, dialogs, _, _ = many
    by_question = defaultdict(Counter)
    for dialog in dialogs:
        for r in dialog:
            by_question[r.question][value_of_answer(r.answer)] += 1
    values = {"colour": [f"color:{c}" for c in COLORS], "shape": [f"shape:{s}" for s in SHAPES],
              "object": [f"object:{c} {s}" for c in COLORS for s in SHAPES], "yes": ["yes", "no"],
              "count": ["count:2", "count:3"]}
    checked = 0
    for question, counts in by_question.items():
        n = sum(counts.values())
        group = next(g for g, vs in values.items() if set(counts) <= set(vs))
        if n < 50:
            continue
        p = 1 / len(values[group])
        for v in values[group]:
            assert abs(counts[v] / n - p) < 4.5 * math.sqrt(p * (1 - p) / n), (question, counts)
        checked += 1
    assert checked >= 30
    kinds = Counter(r.kind for d in dialogs for r in d)
    assert 0.44 < kinds[1] / (kinds[0] + kinds[1]) < 0.50
    assert Counter(len(s.objects) for s in scenes)[3] / len(scenes) == pytest.approx(0.5, abs=0.04)


def test_candidates_gt_position_and_dense_relevance(small):
    dm, split = small
    scenes = dm.rendered("train").scenes
    assert split.options.shape == (400, 100) and split.answers == list(ANSWERS) and len(set(ANSWERS)) == 144
    assert split.kind_names == KIND_NAMES == ("image", "history")
    for n, (d, k) in enumerate(zip(split.dialog, split.round, strict=True)):
        row = split.options[n]
        assert len(set(row.tolist())) == 100
        assert ANSWERS[row[split.gt_index[n]]] == split.round_answers[d][k]
        ref = referents(split.questions[d], scenes[d].objects)[k]
        true = truth(split.questions[d][k], scenes[d].objects, ref)
        expected = [float(value_of_answer(ANSWERS[a]) == true) for a in row]
        assert split.relevance[n].tolist() == expected
    assert (split.relevance.sum(1) >= 1).all() and (split.relevance.sum(1) > 1).mean() > 0.5  # paraphrases


def test_gt_index_is_uniform_over_positions(many):
    _, _, options, gt_index = many
    counts = np.bincount(gt_index, minlength=100)
    expected = len(gt_index) / 100
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 160  # 99 degrees of freedom: mean 99, sd 14
    assert (options[np.arange(len(gt_index)), gt_index] >= 0).all()


def test_deterministic_and_seeded():
    a = make_dialogs("val", 30, 32, 0, 10, 100)
    b = make_dialogs("val", 30, 32, 0, 10, 100)
    assert a[0] == b[0] and a[1] == b[1] and (a[2] == b[2]).all() and (a[3] == b[3]).all()
    assert make_dialogs("val", 30, 32, 1, 10, 100)[1] != a[1]
    assert make_dialogs("test", 30, 32, 0, 10, 100)[1] != a[1]
    one = ShapesDialogDataModule(num_train=0, num_val=5, num_test=0).rendered("val")
    two = ShapesDialogDataModule(num_train=0, num_val=5, num_test=0).rendered("val")
    assert torch.equal(one.images, two.images) and one.images.shape == (5, 3, 32, 32)


def test_cache_round_trip(tmp_path, monkeypatch):
    first = ShapesDialogDataModule(num_train=0, num_val=6, num_test=0, cache_dir=str(tmp_path)).rendered("val")
    files = list(tmp_path.glob("val-*.pt"))
    assert len(files) == 1

    def no_render(*args):
        raise AssertionError("read from the cache, not drawn again")

    monkeypatch.setattr(dm_module, "render_split", no_render)
    again = ShapesDialogDataModule(num_train=0, num_val=6, num_test=0, cache_dir=str(tmp_path)).rendered("val")
    assert again.scenes == first.scenes and again.dialogs == first.dialogs
    assert (again.options == first.options).all() and (again.gt_index == first.gt_index).all()
    assert torch.equal(again.images, first.images)
    monkeypatch.undo()
    files[0].write_bytes(b"damaged")  # drawn again
    assert ShapesDialogDataModule(num_train=0, num_val=6, num_test=0,
                                  cache_dir=str(tmp_path)).rendered("val").dialogs == first.dialogs


def test_every_rival_phrasing_is_among_the_candidates():
    """The answers of the ground truth's form are always candidates, so their presence tells nothing."""
    split = ShapesDialogDataModule(num_train=40, num_val=0, num_test=0).dialogs("train")
    for row, g in zip(split.options, split.gt_index, strict=True):
        gt = int(row[g])
        assert set(RIVALS[gt]) <= set(row.tolist()) and len(set(row.tolist())) == len(row)
    it_is_red = ANSWERS.index("it is red")
    assert sorted(ANSWERS[i] for i in RIVALS[it_is_red]) == [f"it is {c}" for c in sorted(COLORS) if c != "red"]
    assert [ANSWERS[i] for i in RIVALS[ANSWERS.index("yes it is")]] == ["no it is not"]
    assert len(RIVALS[ANSWERS.index("a red circle")]) == 23


def test_round_texts_of_one_hand_checked_round():
    dm = ShapesDialogDataModule(num_train=3, num_val=0, num_test=0)
    split = dm.dialogs("train")
    # scene 0: a blue square and a yellow triangle; round 4 ("what colour is the triangle?") names the
    # triangle, so round 5's "it" is the yellow triangle; round 9 names the square, round 10's "it"
    assert [(o.color, o.shape) for o in dm.rendered("train").scenes[0].objects] == [
        ("blue", "square"), ("yellow", "triangle")]
    texts, history = round_texts(split, DialogInputs(history="concat", rounds=2))
    assert history is None
    assert texts[4] == "is it yellow? ; what colour is the triangle? yellow ; is there a circle? no"
    assert split.round_answers[0][4] == "yes it is" and split.kind[4] == 1
    assert texts[9] == "what is it? ; what colour is the square? blue ; what colour is the triangle? yellow"
    assert split.round_answers[0][9] == "a blue square" and split.kind[9] == 1
    assert texts[0] == "what shape is the yellow object? ; a picture of some coloured shapes"
    assert round_texts(split, DialogInputs(history="none"))[0][4] == "is it yellow?"


def test_build_split_batches_map_options_to_answer_strings():
    dm = ShapesDialogDataModule(num_train=8, num_val=3, num_test=0, image_size=32)
    dm.attach(image=lambda x: x.float() / 255, text=WordTokenizer(max_vocab=200, max_length=64))
    dm.dialog = DialogInputs(history="concat", rounds=3)
    dm.setup("fit")
    assert dm.splits["test"] is None and dm.kind_names() == KIND_NAMES
    split, ds = dm.dialogs("train"), dm.splits["train"]
    assert len(ds) == 80
    rows = [0, 7, 13, 42, 79]
    batch = ds.__getitems__(rows)
    vocab = dm.tokenizer.vocab
    for b, n in enumerate(rows):
        assert batch["round_index"][b] == n and batch["round"][b] == split.round[n] + 1
        assert batch["kind"][b] == split.kind[n] and torch.equal(batch["relevance"][b], torch.from_numpy(split.relevance[n]))
        for k in range(100):
            u = batch["options"][b, k]
            words = [vocab[i] for i, m in zip(batch["option_ids"][u].tolist(), batch["option_mask"][u].tolist(),
                                              strict=True) if m][1:]  # after [CLS]
            assert words == split_words(ANSWERS[split.options[n, k]])
        gt = batch["options"][b, batch["gt_index"][b]]
        words = [vocab[i] for i, m in zip(batch["option_ids"][gt].tolist(), batch["option_mask"][gt].tolist(),
                                          strict=True) if m][1:]
        assert words == split_words(split.round_answers[split.dialog[n]][split.round[n]])
    assert batch["image"].shape == (5, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert (batch["image_id"] == torch.tensor([0, 0, 1, 4, 7])).all()


def test_bad_settings_and_the_config(make_cfg):
    with pytest.raises(MMFuseError, match="data.num_options=200"):
        ShapesDialogDataModule(num_options=200)
    with pytest.raises(MMFuseError, match="data.rounds=0"):
        ShapesDialogDataModule(rounds=0)
    from hydra.utils import instantiate

    cfg = make_cfg("data=shapes_dialog", "data.num_train=4", "data.num_val=2", "data.num_test=2")
    dm = instantiate(cfg.data)
    assert isinstance(dm, ShapesDialogDataModule) and (dm.rounds, dm.num_options, dm.image_size) == (10, 100, 32)
    assert str(dm.cache_dir).endswith("shapes_dialog")
    dm.cache_dir = None  # draw in memory: nothing written under the configured cache
    with pytest.raises(MMFuseError, match="task=dialog"):
        dm.build_split("train")
