"""``task=dialog``: the rounds' texts per history mode, the batches' candidates, the discriminative and
generative scores against their formulas, the metrics per round type, a tiny run, and the errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from omegaconf import open_dict

from mmfuse.builder import build_datamodule, build_module, is_generative
from mmfuse.data.dialog import DialogDataModule, DialogInputs, DialogSplit, history_text, round_texts
from mmfuse.data.pairs import TensorImages
from mmfuse.decoders.transformer import TransformerDecoder
from mmfuse.decoders.words import WordCaptionTokenizer
from mmfuse.encoders.word_tokenizer import WordTokenizer
from mmfuse.errors import MMFuseError
from mmfuse.tasks.dialog import DialogTask
from mmfuse.tasks.dialog_scorers import GenerativeScorer

ANSWERS = ["red", "blue", "yes", "no", "it is red"]


def toy_split(dialogs: int = 3, seed: int = 0, hidden: bool = False) -> DialogSplit:
    """``dialogs`` dialogs of 2 rounds over ``ANSWERS``; 4 candidates a round; round 2 is 'history'."""
    rng = np.random.default_rng(seed)
    questions = [[f"what colour is object {d}", "what about it"] for d in range(dialogs)]
    answers_of = [[ANSWERS[d % 2], ANSWERS[2 + d % 2]] for d in range(dialogs)]
    dialog, rnd, options, gt, relevance, kind = [], [], [], [], [], []
    for d in range(dialogs):
        for r in range(2):
            true = ANSWERS.index(answers_of[d][r])
            others = [a for a in range(len(ANSWERS)) if a != true]
            opts = [true, *rng.choice(others, size=3, replace=False).tolist()]
            rng.shuffle(opts)
            dialog.append(d)
            rnd.append(r)
            options.append(opts)
            gt.append(-1 if hidden and r == 1 else opts.index(true))
            relevance.append([float(o == true) for o in opts] if r == 0 else [float("nan")] * 4)
            kind.append(r)
    images = TensorImages(torch.randint(0, 255, (dialogs, 3, 16, 16), generator=torch.Generator().manual_seed(seed),
                                        dtype=torch.uint8))
    return DialogSplit(images=images, image_keys=[f"scene {d}" for d in range(dialogs)],
                       captions=[f"caption {d}" for d in range(dialogs)], questions=questions, round_answers=answers_of,
                       dialog=np.array(dialog), round=np.array(rnd), options=np.array(options, dtype=np.int32),
                       gt_index=np.array(gt), answers=list(ANSWERS), relevance=np.array(relevance, dtype=np.float32),
                       kind=np.array(kind), kind_names=("image", "history"))


class ToyDialogs(DialogDataModule):
    dataset_name = "toy_dialogs"

    def __init__(self, dialogs: int = 3, image_size: int = 16, **loader) -> None:
        super().__init__(**loader)
        self.image_size = image_size
        self.count = int(dialogs)

    def read_dialogs(self, name):
        return toy_split(self.count, seed={"train": 0, "val": 0, "test": 1}[name], hidden=name == "test")


def test_round_texts_follow_the_history_mode():
    split = toy_split()
    assert round_texts(split, DialogInputs("none"))[0][:2] == ["what colour is object 0", "what about it"]
    texts, history = round_texts(split, DialogInputs("concat"))
    assert history is None
    assert texts[:2] == ["what colour is object 0 ; caption 0",
                         "what about it ; what colour is object 0 red ; caption 0"]
    assert round_texts(split, DialogInputs("concat", rounds=1))[0][1] == "what about it ; what colour is object 0 red"
    assert round_texts(split, DialogInputs("concat", rounds=0))[0][1] == "what about it"
    questions, history = round_texts(split, DialogInputs("late"))
    assert questions[1] == "what about it" and history[1] == "what colour is object 0 red ; caption 0"
    with pytest.raises(MMFuseError, match="task.history='all'"):
        DialogInputs("all")
    with pytest.raises(MMFuseError, match="task.history_rounds=-1"):
        DialogInputs("concat", rounds=-1)


def _toy_module(history: str = "concat", decoder=None, dialogs: int = 3) -> ToyDialogs:
    dm = ToyDialogs(dialogs, batch_size=4, eval_batch_size=6)
    tok = WordTokenizer(max_vocab=64, max_length=24)
    dm.attach(image=lambda x: x.float() / 255, text=tok)
    dm.dialog = DialogInputs(history, decoder=decoder, max_length=6 if decoder is not None else 0)
    dm.setup("fit")
    return dm


def test_batches_carry_each_rounds_candidates():
    dm = _toy_module("late", decoder=WordCaptionTokenizer(max_vocab=16))
    split, ds = dm.dialogs("val"), dm.splits["val"]
    batch = ds[torch.arange(len(ds))]
    tok = dm.tokenizer
    words = [" ".join(tok.vocab[i] for i in row if i > 2) for row in batch["option_ids"].tolist()]
    for n in range(len(ds)):
        assert [words[u] for u in batch["options"][n].tolist()] == [ANSWERS[o] for o in split.options[n]]
    assert batch["gt_index"].tolist() == split.gt_index.tolist() and batch["round"].tolist() == [1, 2] * 3
    assert batch["kind"].tolist() == [0, 1] * 3 and batch["round_index"].tolist() == list(range(6))
    assert torch.isnan(batch["relevance"][1]).all() and batch["relevance"][0].tolist() == split.relevance[0].tolist()
    dec = dm.dialog.decoder  # fitted on the train answers, every true answer is its caption target
    targets = [dec.decode(r.tolist()) for r in batch["caption_ids"]]
    assert targets == [ANSWERS[o[g]] for o, g in zip(split.options, split.gt_index, strict=True)]
    assert [dec.decode(r.tolist()) for r in batch["option_tokens"]] == sorted(set(ANSWERS), key=ANSWERS.index)
    history = [" ".join(tok.vocab[i] for i in row if i > 2) for row in batch["history_ids"].tolist()]
    assert history[1] == "what colour is object 0 red caption 0"
    test = dm.splits["test"][torch.arange(6)]  # round 2 hidden: nothing to train on, and no gt position
    assert test["gt_index"].tolist()[1::2] == [-1] * 3 and not test["caption_mask"][1::2].any()
    assert test["caption_mask"][0::2].any(1).all()


def test_a_split_without_dense_annotations_has_nan_relevance():
    class NoDense(ToyDialogs):
        def read_dialogs(self, name):
            split = super().read_dialogs(name)
            split.relevance = None
            return split

    dm = NoDense(3, batch_size=4)
    dm.attach(image=lambda x: x.float() / 255, text=WordTokenizer(max_vocab=64, max_length=24))
    dm.dialog = DialogInputs("none")
    dm.setup("fit")
    assert "relevance" not in dm.splits["val"].fields  # nothing stored
    batch = dm.splits["val"][torch.arange(6)]
    assert batch["relevance"].shape == (6, 4) and torch.isnan(batch["relevance"]).all()


def test_history_is_most_recent_first_then_the_caption():
    split = toy_split(1)
    split.questions[0] += ["and the third"]
    split.round_answers[0] += ["no"]
    assert history_text(split, 0, 2, None) == "what about it yes ; what colour is object 0 red ; caption 0"
    assert history_text(split, 0, 2, 2) == "what about it yes ; what colour is object 0 red"
    assert history_text(split, 0, 0, None) == "caption 0"


def _cfg(make_cfg, *extra, subdir="run"):
    cfg = make_cfg("task=dialog", "encoder.image=tiny_cnn", "encoder.text=tiny_text", *extra, subdir=subdir)
    with open_dict(cfg):
        cfg.data = {"_target_": "test_dialog_task.ToyDialogs", "dialogs": 3, "batch_size": 4, "eval_batch_size": 6,
                    "image_size": 16}
    return cfg


def test_discriminative_scores_are_scaled_dot_products(make_cfg):
    torch.manual_seed(0)
    cfg = _cfg(make_cfg, "fusion=mul", "task.embed_dim=8", "task.history=concat")
    module = build_module(cfg)
    assert not is_generative(cfg.task) and module.task.mode == "discriminative"
    dm = build_datamodule(cfg, module)
    dm.setup("fit")
    batch = dm.splits["val"][torch.arange(6)]
    loss, out = module.task.step(module.model, batch)
    scorer, model = module.task.scorer, module.model
    query = scorer.head(model(batch))
    answers = scorer.answer(model.encode("text", {"input_ids": batch["option_ids"],
                                                  "attention_mask": batch["option_mask"]}).pooled)
    expected = torch.stack([(answers[batch["options"][n]] @ query[n]) / math.sqrt(8) for n in range(6)])
    assert torch.allclose(out["scores"], expected, atol=1e-6)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(expected, batch["gt_index"]).detach()), abs=1e-6)


def test_generative_scores_are_candidate_log_likelihoods():
    torch.manual_seed(0)
    decoder = TransformerDecoder(memory_dim=6, width=16, layers=1, heads=2, ff_mult=2, max_length=6, dropout=0.0,
                                 max_vocab=16)
    tok = decoder.tokenizer
    tok.fit(ANSWERS)
    decoder.eval()
    scorer = GenerativeScorer(decoder, memory_width=6)
    ids, mask = tok.encode(ANSWERS, 6)
    memory, memory_mask = torch.randn(2, 3, 6), torch.tensor([[True, True, False], [True, True, True]])
    options = torch.tensor([[0, 4, 2], [1, 3, 0]])
    batch = {"options": options, "option_tokens": ids, "option_token_mask": mask}
    with torch.no_grad():
        scores = scorer.likelihoods(memory, memory_mask, batch)
        for b in range(2):
            for k in range(3):
                o = int(options[b, k])
                length = int(mask[o].sum())
                one = ids[o:o + 1, :length]
                logp = decoder(memory[b:b + 1], memory_mask[b:b + 1], one, mask[o:o + 1, :length]).log_softmax(-1)
                want = sum(float(logp[0, t, one[0, t + 1]]) for t in range(length - 1))
                assert float(scores[b, k]) == pytest.approx(want, abs=1e-5)
    assert scores.shape == (2, 3)
    import mmfuse.tasks.dialog_scorers as scorers  # one candidate per pass: the same numbers

    budget, first = scorers.SCORE_BUDGET, scorers.FIRST_PASS
    try:
        scorers.SCORE_BUDGET, scorers.FIRST_PASS = 1, 2
        with torch.no_grad():
            assert torch.allclose(scorer.likelihoods(memory, memory_mask, batch), scores, atol=1e-6)
    finally:
        scorers.SCORE_BUDGET, scorers.FIRST_PASS = budget, first
    assert scorers.chunk_size(10, 100, 24) == 2**27 // 1024


def test_metrics_per_round_type_and_hidden_answers():
    task = DialogTask(in_dim=4, fusion_stage="mid", text_dim=4, embed_dim=4)
    task.kind_names = ("image", "history")
    s = torch.tensor
    rounds = {
        0: (s([3.0, 1.0, 2.0, 0.0]), 0, s([1.0, 0.0, 0.5, 0.0]), 0),   # gt rank 1; ndcg 1
        1: (s([3.0, 1.0, 2.0, 0.0]), 2, s([float("nan")] * 4), 1),      # gt rank 2
        2: (s([0.0, 1.0, 2.0, 3.0]), 0, s([float("nan")] * 4), 1),      # gt rank 4
        3: (s([0.0, 1.0, 2.0, 3.0]), -1, s([float("nan")] * 4), 0),     # hidden: left out
    }
    out = task.score(rounds)
    assert out["r1"] == pytest.approx(1 / 3) and out["mean_rank"] == pytest.approx(7 / 3)
    assert out["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 3) and out["ndcg"] == pytest.approx(1.0)
    assert out["r1_image"] == 1.0 and out["mrr_history"] == pytest.approx(3 / 8) and out["r1_history"] == 0.0
    assert "ndcg_history" not in out and "rounds" not in out
    assert task.score({3: rounds[3]}) == {}


def test_update_keeps_each_round_apart_from_its_batch():
    """Each round is kept as its own copy (a view would take its whole batch along when the rounds are
    gathered across processes), and the loss is a mean over rounds, not over batches."""
    task = DialogTask(in_dim=4, fusion_stage="mid", text_dim=4, embed_dim=4)
    batch = {"gt_index": torch.tensor([0, 1, 2]), "relevance": torch.zeros(3, 5), "kind": torch.zeros(3, dtype=torch.long),
             "round_index": torch.tensor([0, 1, 2])}
    task.update("val", {"loss": torch.tensor(1.0), "scores": torch.randn(3, 5)}, batch)
    task.update("val", {"loss": torch.tensor(4.0), "scores": torch.randn(1, 5)},
                {k: v[:1] + (3 if k == "round_index" else 0) for k, v in batch.items()})
    scores, _, relevance, _ = task._rounds["val"][1]
    assert scores.untyped_storage().nbytes() == 5 * 4 and relevance.untyped_storage().nbytes() == 5 * 4
    assert float(task.losses["val"].compute()) == pytest.approx((3 * 1.0 + 1 * 4.0) / 4)


def test_tiny_runs_train_and_log_the_visdial_metrics(make_cfg):
    from mmfuse.train import train

    for extra in (("task.history=late",),
                  ("task.decoder=generative", "decoder=transformer", "task.history=late", "fusion=cross_attention")):
        cfg = _cfg(make_cfg, "debug=fast", "trainer.max_epochs=1", "test=true", *extra,
                   subdir="run_" + str(len(extra)))
        result = train(cfg)
        metrics = result["metrics"]
        for m in ("val/r1", "val/r5", "val/r10", "val/mean_rank", "val/mrr", "val/ndcg", "val/r1_history",
                  "val/ndcg_image", "test/mrr", "val/loss"):
            assert m in metrics, (extra, sorted(metrics))
        assert 1.0 <= metrics["val/mean_rank"] <= 4.0 and metrics["val/r5"] == 1.0  # 4 candidates: always in the top 5


def test_errors_name_the_fix(make_cfg):
    with pytest.raises(MMFuseError, match="needs a decoder: set decoder=transformer"):
        build_module(_cfg(make_cfg, "task.decoder=generative"))
    with pytest.raises(MMFuseError, match="task.decoder='beam'"):
        build_module(_cfg(make_cfg, "task.decoder=beam"))
    cfg = make_cfg("task=dialog", subdir="shapes")
    module = build_module(cfg)
    with pytest.raises(MMFuseError, match="task=dialog needs dialog data"):
        build_datamodule(cfg, module)
    with pytest.raises(InstantiationException, match="configure encoder.text"):
        build_module(_cfg(make_cfg, "encoder.text=none", "fusion=image_only", subdir="notext"))


def test_eval_reproduces_a_shapes_dialog_checkpoints_metrics(make_cfg):
    from mmfuse.evaluate import evaluate
    from mmfuse.train import train

    cfg = make_cfg("debug=fast", "data=shapes_dialog", "task=dialog", "data.num_train=32", "data.num_val=8",
                   "data.num_test=8", "data.num_options=20", "task.decoder=generative", "decoder=transformer",
                   "task.history=late", "fusion=cross_attention", subdir="train")
    trained = train(cfg)["metrics"]
    assert trained["val/r10"] >= 0.5 and {"val/ndcg_history", "val/mrr_image", "test/r1"} <= set(trained)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    evaluated = evaluate(make_cfg(f"ckpt_path={ckpt}", subdir="eval", config_name="eval"))["metrics"]
    val = {k: v for k, v in trained.items() if k.startswith("val/")}
    assert {k: v for k, v in evaluated.items() if k.startswith("val/")} == pytest.approx(val, abs=1e-6)


@pytest.mark.slow
def test_removing_the_history_loses_on_the_history_rounds_only(make_cfg):
    """The no-history control (``task.history=none``) against ``late`` on shapes_dialog, same budget and
    seed: it must lose on the rounds that say "it" and not on those that name their object."""
    from mmfuse.train import train

    metrics = {}
    for history in ("none", "late"):
        cfg = make_cfg("data=shapes_dialog", "task=dialog", f"task.history={history}", "data.num_train=1000",
                       "data.num_val=200", "data.num_test=0", "trainer.max_epochs=6", "callbacks.progress_bar=null",
                       "seed=1", subdir=history)
        metrics[history] = train(cfg)["metrics"]
    none, late = metrics["none"], metrics["late"]
    print({h: {k: round(v, 3) for k, v in m.items() if "r1" in k or "mrr" in k} for h, m in metrics.items()})
    # measured (1,000 scenes, 6 epochs): MRR on history rounds 0.598 -> 0.660, on image rounds 0.688 ->
    # 0.660 (late learns the image rounds a little slower at this budget); at the default budget, 3 seeds,
    # history 0.62 -> 0.79 and image 0.72 -> 0.71 (experiments/shapes_dialog)
    gain_history = late["val/mrr_history"] - none["val/mrr_history"]
    assert gain_history > 0.04
    assert abs(late["val/mrr_image"] - none["val/mrr_image"]) < gain_history / 2


def test_texts_cut_by_the_tokenizer_are_counted(caplog):
    dm = ToyDialogs(3, batch_size=4)
    dm.attach(image=lambda x: x.float() / 255, text=WordTokenizer(max_vocab=64, max_length=8))
    dm.dialog = DialogInputs("concat")
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    # [CLS] + "what colour is object d caption d" = 8 tokens (cut exactly at the limit: counted), and
    # round 2's "what about it what colour is object d red caption d" = 12 (cut): 3 + 3 of 6 distinct texts
    assert dm.describe()["val"]["texts_at_max_length"] == 6
    assert "6 of 6 distinct texts fill the text encoder's max_length=8" in caplog.text
    dm = ToyDialogs(3, batch_size=4)
    dm.attach(image=lambda x: x.float() / 255, text=WordTokenizer(max_vocab=64, max_length=24))
    dm.dialog = DialogInputs("concat")
    dm.setup("fit")
    assert dm.describe()["val"]["texts_at_max_length"] == 0
