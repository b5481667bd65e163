"""Generative VQA (``task=vqa task.answer=generate``): answer targets, the official accuracy of
generated answers, the data's answer tokens, a tiny run through the builder, and the errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from test_datasets import vqa_folder, vqa_module

from mmfuse.builder import build_datamodule, build_module, is_generative
from mmfuse.data.vqa import AnswerTargets, answer_target
from mmfuse.decoders.base import Decoder, GenerationOptions
from mmfuse.decoders.words import WordCaptionTokenizer
from mmfuse.errors import MMFuseError
from mmfuse.tasks.vqa import VQATask, dense_targets, vqa_accuracy
from mmfuse.tasks.vqa_answers import answer_accuracies, official_accuracy, prediction_forms
from mmfuse.tasks.vqa_generate import GenerativeVQATask, answer_scores

os.environ.setdefault("HF_HUB_OFFLINE", "1")

Q1 = ["two"] * 6 + ["2"] * 2 + ["three"] * 2  # vqa_folder's question 1
TSHIRT = ["t-shirt"] * 3 + ["shirt"] * 7
DOG = ["a dog"] * 3 + ["cat"] * 7  # vqa_folder's question 5


def test_answer_target_is_the_best_scoring_form():
    assert answer_target(Q1) == "2"  # "2": 0.6 (the two "2"); "3": 0 (the humans' "three" is not normalised)
    assert answer_target(["two"] * 6 + ["2"] * 2 + ["1"] * 2) == "2"  # both 0.6: 8 humans normalise to "2"
    assert answer_target(["two"] * 6 + ["3"] * 2 + ["three"] * 2) == "3"  # 0.6 beats "2" (6 humans, but 0)
    assert answer_target(["red"] * 5 + ["blue"] * 5) == "blue"  # 1.0 and 5 humans each: alphabetical
    assert answer_target(DOG) == "cat" and answer_target(TSHIRT) == "shirt"
    assert answer_target(["Yes!"] * 10) == "yes"  # all humans alike: compared as given, "Yes!" -> 0
    assert answer_target(["the", "?"]) == "" and answer_target([]) == ""


def test_generated_answers_score_the_official_accuracy():
    human = [Q1, Q1, Q1, ["yes"] * 10, TSHIRT, DOG, DOG, ["no"] * 9 + ["yes"]]
    generated = {0: "Two", 1: "2.", 2: "three", 3: "Yes!", 4: "T-shirt", 5: "a dog", 6: "the cat", 7: "yes"}
    per_question = [0.6, 0.6, 0.0, 1.0, 0.9, 0.0, 1.0, 0.3]
    assert [official_accuracy(generated[i], human[i]) for i in range(8)] == pytest.approx(per_question)
    vocab = ["yes", "no", "2", "cat"]
    scores = answer_scores(generated, human, vocab)
    assert scores["vqa_acc"] == pytest.approx(4.4 / 8)
    # forms: 2 2 3 yes t shirt dog cat yes -> in vocab: 2 2 yes cat yes = 5; distinct: 2 3 yes "t shirt" dog cat
    assert scores["exact_vocab"] == pytest.approx(5 / 8) and scores["distinct"] == pytest.approx(6 / 8)
    # the classifier's accuracy of the same answer (a vocabulary entry) is the same number
    forms = prediction_forms(vocab)
    for i, k in ((0, 2), (3, 0), (6, 3), (7, 0)):
        acc = sorted(answer_accuracies(human[i], forms).items())
        dense = dense_targets(torch.tensor([[a for a, _ in acc]]), torch.tensor([[v for _, v in acc]]), len(vocab))
        logits = torch.nn.functional.one_hot(torch.tensor([k]), len(vocab)).float()
        assert float(vqa_accuracy(logits, dense)) == pytest.approx(answer_scores({0: generated[i]}, [human[i]],
                                                                                 vocab)["vqa_acc"])
    assert answer_scores({0: "yes"}, [[]], vocab)["vqa_acc"] == 0.0  # no human answers: 0, as classification
    with pytest.raises(MMFuseError, match="question index 3 outside"):
        answer_scores({3: "yes"}, [["yes"]], vocab)


def test_data_adds_answer_tokens_only_when_asked(tmp_path):
    root = vqa_folder(tmp_path)
    plain = vqa_module(root, num_answers=8)
    plain.setup("fit")
    assert set(plain.splits["train"].fields) == {"answer_ids", "answer_scores", "answer_accuracy_ids",
                                                 "answer_accuracy"}
    dm = vqa_module(root, num_answers=8)
    tok = WordCaptionTokenizer(max_vocab=16)
    dm.answer_generation = AnswerTargets(tok, 4)
    dm.setup("fit")
    # fitted on the train targets: 2 (q1), yes (q2), blue (q3), no (q4); counts 1 each: alphabetical
    assert tok.vocab[4:] == ["2", "blue", "no", "yes"]
    train = dm.splits["train"]
    assert train.fields["question_index"].tolist() == [0, 1, 2, 3]
    # questions grouped by image (the checked split's order): q1 and q4 (image 11), q2 (12), q3 (10)
    assert dm.split("train").captions == ["question 1?", "question 4?", "question 2?", "question 3?"]
    assert [tok.decode(r.tolist()) for r in train.fields["caption_ids"]] == ["2", "no", "yes", "blue"]
    assert train.fields["caption_ids"][0].tolist() == [2, 4, 3] and train.fields["caption_mask"].all()
    assert dm.human_answers_of["train"][0] == Q1
    val = dm.splits["val"]  # q5 "cat" is not in the decoder vocabulary: bos [UNK] eos
    assert val.fields["caption_ids"].tolist() == [[2, 1, 3], [2, 7, 3]]
    assert dm.human_answers_of["val"] == [DOG, ["yes"] * 10]
    for k in plain.splits["train"].fields:  # the classification fields are unchanged
        assert torch.equal(plain.splits["train"].fields[k], train.fields[k])


def test_a_question_without_a_usable_answer_trains_on_nothing(tmp_path):
    root = vqa_folder(tmp_path)
    path = root / "v2_mscoco_val2014_annotations.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["answers"] = [{"answer": "the"}] * 10  # q2: every answer normalises to ""
    path.write_text(json.dumps(data))
    dm = vqa_module(root, num_answers=8)
    dm.answer_generation = AnswerTargets(WordCaptionTokenizer(max_vocab=16), 4)
    dm.setup("fit")
    val = dm.splits["val"].fields
    assert val["caption_mask"].tolist() == [[True] * 3, [False] * 3] and val["caption_ids"][1].tolist() == [2, 3, 0]


class FixedAnswer(Decoder):
    """Generates the same token ids for every question (a decoder that memorised one answer)."""

    def __init__(self, memory_dim: int, answer: list[int]) -> None:
        super().__init__()
        self.tokenizer = WordCaptionTokenizer(max_vocab=16)
        self.memory_dim, self.max_length, self.answer = memory_dim, 8, answer
        self.out = torch.nn.Linear(memory_dim, 16)

    def forward(self, memory, memory_mask, ids, mask):
        return self.out(memory[:, :1]).expand(-1, ids.shape[1], -1)

    def generate(self, memory, memory_mask, options):
        return [list(self.answer) for _ in range(memory.shape[0])]


def _cfg(make_cfg, root, *extra):
    return make_cfg("data=vqa_v2", f"data.root={root}", "data.num_answers=8", "data.image_size=16",
                    "data.num_workers=0", "data.batch_size=4", "data.eval_batch_size=4", "task=vqa",
                    "fusion=cross_attention", *extra)


def _val_is_train(root):
    """vqa_folder with the val split replaced by the train split (to score memorised answers)."""
    for kind in ("v2_OpenEnded_mscoco_{}2014_questions.json", "v2_mscoco_{}2014_annotations.json"):
        shutil.copy(root / kind.format("train"), root / kind.format("val"))
    shutil.rmtree(root / "val2014")
    shutil.copytree(root / "train2014", root / "val2014")
    for f in (root / "val2014").iterdir():
        f.rename(f.with_name(f.name.replace("train2014", "val2014")))
    return root


def _evaluate(module, dm, stage="val"):
    module.eval()
    task = module.task
    with torch.no_grad():
        for batch in dm.val_dataloader():
            task.update(stage, task.step(module.model, batch)[1], batch)
    task.epoch_end(stage, module.model)
    out = {k: float(v) for k, v in task.compute(stage).items()}
    task.reset(stage)
    return out


def test_generative_vqa_learns_the_answers_and_scores_them_officially(make_cfg, tmp_path):
    torch.manual_seed(0)
    root = _val_is_train(vqa_folder(tmp_path / "data"))
    cfg = _cfg(make_cfg, root, "task.answer=generate", "decoder=transformer", "decoder.dropout=0.0")
    module = build_module(cfg)
    assert isinstance(module.task, GenerativeVQATask) and not hasattr(module.task, "head")
    dm = build_datamodule(cfg, module)
    dm.setup("fit")
    module.task.attach_data(dm)
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["question_index"].tolist()) == [0, 1, 2, 3]
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    module.train()
    losses = []
    for _ in range(60):
        loss, _ = module.task.step(module.model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.05 < losses[0] / 10
    m = _evaluate(module, dm)
    assert module.task.last_generated["val"] == {0: "2", 1: "no", 2: "yes", 3: "blue"}
    # memorised targets: q1 "2" 0.6 (two "2" of 10), q2-q4 1.0 each -> 3.6 / 4
    assert m["val/vqa_acc"] == pytest.approx(0.9)
    assert m["val/exact_vocab"] == 1.0 and m["val/distinct"] == 1.0 and m["val/loss"] < 0.05


def test_a_fixed_answer_scores_the_hand_computed_accuracy(make_cfg, tmp_path):
    root = _val_is_train(vqa_folder(tmp_path / "data"))
    cfg = _cfg(make_cfg, root, "task.answer=generate", "decoder=transformer")
    module = build_module(cfg)
    decoder = module.task.decoder
    module.task.decoder = FixedAnswer(decoder.memory_dim, [])
    dm = build_datamodule(cfg, module)
    dm.setup("fit")
    module.task.attach_data(dm)
    tok = module.task.decoder.tokenizer  # fitted by the data: [PAD] [UNK] [BOS] [EOS] 2 blue no yes
    module.task.decoder.answer = [tok.vocab.index("yes")]
    m = _evaluate(module, dm)
    # "yes" against q1 (0), q2 (10 x yes: 1), q3 (0), q4 (1 x yes: 0.3) -> 1.3 / 4
    assert m["val/vqa_acc"] == pytest.approx(1.3 / 4)
    assert m["val/exact_vocab"] == 1.0 and m["val/distinct"] == 0.25


def test_answer_modes_and_errors(make_cfg, tmp_path):
    from mmfuse.cli import optimized_metric

    root = vqa_folder(tmp_path / "data")
    classify = _cfg(make_cfg, root, "decoder=transformer")
    assert not is_generative(classify.task)
    task = build_module(classify).task
    assert type(task) is VQATask and not hasattr(task, "decoder")  # no decoder even when one is selected
    generate = _cfg(make_cfg, root, "task.answer=generate")
    assert is_generative(generate.task) and optimized_metric(generate) == "val/vqa_acc"
    with pytest.raises(MMFuseError, match=r"needs a decoder: set decoder=transformer \| hf_cross \| prefix_lm"):
        build_module(generate)  # decoder=none
    with pytest.raises(MMFuseError, match=r"^task=vqa task.answer=generate needs a decoder: set decoder=transformer"):
        VQATask(8, "mid", answer="generate")
    with pytest.raises(MMFuseError, match=r"task.answer='text': expected classify .* or generate"):
        VQATask(8, "mid", answer="text")
    with pytest.raises(MMFuseError, match=r"task.answer='text'"):
        is_generative(_cfg(make_cfg, root, "task.answer=text").task)
    gen = VQATask(8, "mid", answer="generate", decoder=FixedAnswer(8, []), generate={"max_length": 3})
    assert isinstance(gen, GenerativeVQATask) and gen.options == GenerationOptions(max_length=3)
    assert type(VQATask(8, "mid", num_answers=3, head="linear", answer="classify")) is VQATask

    class NotVQA:
        pass

    with pytest.raises(MMFuseError, match="needs VQA data with human answers"):
        gen.configure_data(NotVQA())


def test_train_logs_the_generative_vqa_metrics(make_cfg, tmp_path):
    from mmfuse.evaluate import evaluate
    from mmfuse.train import train

    root = vqa_folder(tmp_path / "data")
    cfg = _cfg(make_cfg, root, "debug=fast", "task.answer=generate", "decoder=transformer", "data.batch_size=4")
    metrics = train(cfg)["metrics"]
    assert {"val/vqa_acc", "val/loss", "val/exact_vocab", "val/distinct"} <= set(metrics)
    assert metrics["val/vqa_acc"] in (0.0, 0.5)  # val: q5 (cat: unknown to the decoder, 0) and q2 (yes: 0 or 1)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    evaluated = evaluate(make_cfg(f"ckpt_path={ckpt}", subdir="eval", config_name="eval"))["metrics"]
    val = {k: v for k, v in metrics.items() if k.startswith("val/")}
    assert {k: v for k, v in evaluated.items() if k.startswith("val/")} == pytest.approx(val, abs=1e-6)
