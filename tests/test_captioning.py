"""task=captioning: the word vocabulary, the transformer decoder, the memory hand-over, the data, a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import SHARED, run_cli
from mmfuse.data.captioning import caption_split, references_from_pairs
from mmfuse.data.pairs import PairDataset, TensorImages
from mmfuse.decoders.base import GenerationOptions
from mmfuse.decoders.memory import memory_dim, memory_of
from mmfuse.decoders.transformer import TransformerDecoder
from mmfuse.decoders.words import WordCaptionTokenizer
from mmfuse.errors import MMFuseError
from mmfuse.evaluate import evaluate
from mmfuse.fusion.cross import CrossAttentionFusion
from mmfuse.fusion.late import LateFusion
from mmfuse.fusion.pooled import MulFusion
from mmfuse.tasks.generative import token_loss, trim
from mmfuse.train import train
from mmfuse.types import EncoderOutput

FAST = ("debug=fast",)


def test_word_vocabulary_ids_cut_and_decode():
    tok = WordCaptionTokenizer(max_vocab=8)
    tok.fit(["a red circle", "a blue circle", "A red square!"])
    # a x3, circle x2, red x2 (ties alphabetical), then blue / square: 4 specials + 4 words = 8
    assert tok.vocab == ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a", "circle", "red", "blue"]
    ids, mask = tok.encode(["a red square", "circle"], max_length=10)
    assert ids.tolist() == [[2, 4, 6, 1, 3], [2, 5, 3, 0, 0]]
    assert mask.tolist() == [[True] * 5, [True, True, True, False, False]]
    ids, _ = tok.encode(["a red circle a red circle"], max_length=4)
    assert ids.tolist() == [[2, 4, 6, 3]]  # cut, eos kept
    assert tok.decode([4, 6, 1, 5, 3, 0]) == "a red circle"  # unknown, eos and padding dropped
    with pytest.raises(MMFuseError, match="max_vocab"):
        WordCaptionTokenizer(max_vocab=4)


def test_token_loss_counts_real_targets_only():
    logits = torch.zeros(1, 4, 3)
    logits[0, 0, 1] = math.log(2)  # p(target 1 | pos 0) = 2 / 4
    ids = torch.tensor([[0, 1, 2, 0]])
    mask = torch.tensor([[True, True, True, False]])
    total, count = token_loss(logits, ids, mask)
    assert int(count) == 2
    assert float(total) == pytest.approx(-math.log(0.5) - math.log(1 / 3))
    logits[0, 2] = 100.0  # the prediction of the padding position: not a target
    assert float(token_loss(logits, ids, mask)[0]) == pytest.approx(float(total))
    ids2, mask2 = trim(torch.tensor([[5, 6, 0, 0], [5, 0, 0, 0]]), torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]))
    assert ids2.tolist() == [[5, 6], [5, 0]] and mask2.dtype == torch.bool


def _decoder(seed: int = 0, **kw) -> TransformerDecoder:
    torch.manual_seed(seed)
    dec = TransformerDecoder(**{"memory_dim": 12, "width": 16, "layers": 2, "heads": 2, "ff_mult": 2, "dropout": 0.0,
                                "max_length": 10, "max_vocab": 16, **kw})
    dec.tokenizer.fit(["a b c d e f g h i j k l"])
    return dec.eval()


def test_decoder_cannot_see_future_tokens():
    dec = _decoder()
    memory, mmask = torch.randn(2, 3, 12), torch.ones(2, 3, dtype=torch.bool)
    ids = torch.randint(4, 16, (2, 7))
    before = dec(memory, mmask, ids)
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 1 - 4) % 12 + 4
    after = dec(memory, mmask, changed)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)
    assert not torch.allclose(before[:, 4:], after[:, 4:], atol=1e-3)


def test_memory_padding_changes_nothing():
    dec = _decoder()
    memory, mmask = torch.randn(2, 3, 12), torch.ones(2, 3, dtype=torch.bool)
    padded = torch.cat([memory, 1e3 * torch.randn(2, 4, 12)], dim=1)
    pmask = torch.cat([mmask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    ids = torch.randint(4, 16, (2, 6))
    assert torch.allclose(dec(memory, mmask, ids), dec(padded, pmask, ids), atol=1e-5)
    options = GenerationOptions(num_beams=2, max_length=6)
    assert dec.generate(memory, mmask, options) == dec.generate(padded, pmask, options)
    real = memory.clone()
    real[0, 1] += 1.0  # a real memory position does matter
    assert not torch.allclose(dec(memory, mmask, ids)[0], dec(real, mmask, ids)[0], atol=1e-4)


def test_loss_falls_and_generation_learns_a_caption_per_memory():
    dec = _decoder(dropout=0.0)
    dec.train()
    memory = torch.eye(12)[:2, None, :].repeat(1, 2, 1)  # two distinct memories
    ids, mask = dec.tokenizer.encode(["a b c d", "e f g"], max_length=10)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        total, count = token_loss(dec(memory, torch.ones(2, 2, dtype=torch.bool), ids), ids, mask)
        loss = total / count
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 20
    dec.eval()
    out = dec.generate(memory, torch.ones(2, 2, dtype=torch.bool), GenerationOptions(max_length=8))
    assert [dec.tokenizer.decode(o) for o in out] == ["a b c d", "e f g"]
    beams = dec.generate(memory, torch.ones(2, 2, dtype=torch.bool), GenerationOptions(num_beams=3, max_length=8))
    assert beams == out
    short = dec.generate(memory, torch.ones(2, 2, dtype=torch.bool), GenerationOptions(max_length=2))
    assert short == [o[:2] for o in out]


def test_vocabulary_travels_in_the_state_dict():
    dec = _decoder()
    other = TransformerDecoder(memory_dim=12, width=16, layers=2, heads=2, ff_mult=2, max_length=10, max_vocab=16)
    assert not other.tokenizer.fitted
    other.load_state_dict(dec.state_dict())
    assert other.tokenizer.vocab == dec.tokenizer.vocab


def _inputs(b: int = 2):
    image = EncoderOutput(torch.randn(b, 6), torch.randn(b, 4, 6), torch.ones(b, 4, dtype=torch.bool))
    text = EncoderOutput(torch.randn(b, 5), torch.randn(b, 3, 5), torch.tensor([[1, 1, 0]] * b).bool())
    return {"image": image, "text": text}


def test_memory_hand_over_by_fusion_kind():
    dims = {"image": 6, "text": 5}
    mul = MulFusion(dims, dim=8)
    x = _inputs()
    mem, mask = memory_of(mul, x, "auto")
    assert mem.shape == (2, 1, 8) and mask.all() and memory_dim(mul, "auto") == 8
    assert torch.equal(mem[:, 0], mul(x))
    late = LateFusion(dims, dim=7)
    mem, mask = memory_of(late, _inputs(), "auto")
    assert mem.shape == (2, 2, 7) and mask.all()
    cross = CrossAttentionFusion(dims, dim=8, heads=2, layers=1)
    x = _inputs()
    mem, mask = memory_of(cross, x, "auto")
    tokens, tmask = cross.fused_tokens(x)
    assert torch.equal(mem, tokens) and torch.equal(mask, tmask.bool()) and memory_dim(cross, "auto") == cross.token_dim
    pooled, pmask = memory_of(cross, x, "pooled")
    assert pooled.shape == (2, 1, cross.out_dim) and torch.allclose(pooled[:, 0], cross(x))
    with pytest.raises(MMFuseError, match="task.memory='tokens'"):
        memory_of(cross, x, "tokens")


def _pairs() -> PairDataset:
    texts = ["a red circle", "a blue square", "a red square", "a green cross"]
    return PairDataset(images=TensorImages(torch.zeros(3, 3, 4, 4, dtype=torch.uint8)),
                       text={"input_ids": torch.zeros(4, 2, dtype=torch.long), "attention_mask": torch.ones(4, 2)},
                       image_index=torch.tensor([0, 0, 1, 1, 0]), text_index=torch.tensor([0, 1, 2, 3, 0]),
                       fields={"label": torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])}, texts=texts,
                       transform=lambda x: x.float())


def test_references_are_the_positive_texts_of_each_image():
    assert references_from_pairs(_pairs(), "here") == [["a red circle"], ["a red square", "a green cross"], []]
    unlabeled = _pairs()
    unlabeled.fields = {}
    assert references_from_pairs(unlabeled, "here")[0] == ["a red circle", "a blue square"]
    unlabeled.texts = None
    with pytest.raises(MMFuseError, match="no caption strings"):
        references_from_pairs(unlabeled, "data=x")


def test_caption_split_trains_on_every_reference_and_scores_each_image_once():
    tok = WordCaptionTokenizer(16)
    tok.fit(["a red circle", "a red square", "a green cross"])
    refs = references_from_pairs(_pairs(), "here")
    prompt = {"input_ids": torch.tensor([[7, 8]]), "attention_mask": torch.tensor([[1, 1]])}
    train = caption_split(_pairs(), refs, tok, 8, prompt, train=True, where="here")
    assert train.image_index.tolist() == [0, 1, 1]
    batch = train[torch.tensor([0, 1, 2])]
    assert [tok.decode(r) for r in batch["caption_ids"].tolist()] == ["a red circle", "a red square", "a green cross"]
    assert batch["input_ids"].tolist() == [[7, 8]] * 3  # the prompt: the caption never reaches the encoders
    assert batch["image_id"].tolist() == [0, 1, 1]
    val = caption_split(_pairs(), refs, tok, 8, None, train=False, where="here")
    assert val.image_index.tolist() == [0, 1]  # image 2 has no reference
    assert "input_ids" not in val[torch.tensor([0, 1])]


@pytest.mark.slow
def test_shapes_captioning_run_writes_metrics_grid_and_eval_reproduces_them(make_cfg, tmp_path):
    cfg = make_cfg(*FAST, "task=captioning", "data.num_train=512", "data.num_val=64", "trainer.max_epochs=2",
                   "task.samples=4", subdir="train")
    trained = train(cfg)
    metrics = trained["metrics"]
    keys = {"bleu1", "bleu4", "rougeL", "cider", "exact", "distinct", "repeated_ngrams", "mean_length", "loss",
            "ground_grammatical", "ground_color", "ground_relation", "ground_correct"}
    assert {f"val/{k}" for k in keys} <= set(metrics)
    assert 0 < metrics["val/distinct"] <= 1 and metrics["val/mean_length"] > 0
    run = Path(cfg.paths.output_dir)
    assert (run / "captions_val.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = run / "checkpoints" / "last.ckpt"
    evaluated = evaluate(make_cfg(f"ckpt_path={ckpt}", subdir="eval", config_name="eval"))
    val = {k: v for k, v in metrics.items() if k.startswith("val/")}
    assert {k: v for k, v in evaluated["metrics"].items() if k.startswith("val/")} == pytest.approx(val, abs=1e-6)
    assert json.loads((run / "results.json").read_text())["metrics"]["val/cider"] == pytest.approx(metrics["val/cider"])
    # the eval command changes how the decoder searches (not the weights), named as in a train command
    proc = run_cli("eval.py", f"ckpt_path={ckpt}", "task.generate.num_beams=2", "task.generate.max_length=4",
                   "task.generate.min_length=4", "test=false", outputs=tmp_path / "cli")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp_path / "cli").rglob("results.json")
    short = json.loads(path.read_text())
    assert short["metrics"]["val/loss"] == pytest.approx(metrics["val/loss"], abs=1e-6)  # the same model
    assert short["metrics"]["val/mean_length"] == 4.0  # every caption exactly 4 words
    assert short["overrides"] == [f"ckpt_path={ckpt}", "task.generate.num_beams=2", "task.generate.max_length=4",
                                  "task.generate.min_length=4", "test=false"]


def test_captioning_without_a_decoder_is_one_line(make_cfg):
    cfg = make_cfg(*FAST, "task=captioning", "decoder=none")
    with pytest.raises(MMFuseError, match="needs a decoder: set decoder=transformer"):
        train(cfg)


def test_optimized_metric_is_the_tasks_own_unless_set(make_cfg):
    from mmfuse.cli import optimized_metric

    assert optimized_metric(make_cfg("task=captioning")) == "val/cider"
    assert optimized_metric(make_cfg()) == "val/acc"
    assert optimized_metric(make_cfg("task=retrieval")) == "val/rsum"
    assert optimized_metric(make_cfg("task=captioning", "optimized_metric=val/bleu4")) == "val/bleu4"


def test_pairwise_fusion_over_three_modalities_hands_over_every_pairs_tokens():
    from omegaconf import OmegaConf

    from mmfuse.builder import build_fusion

    dims = {"image": 6, "audio": 4, "text": 5}
    cfg = OmegaConf.create({"fusion": {"_target_": "mmfuse.fusion.cross.CrossAttentionFusion", "dim": 8, "heads": 2,
                                       "layers": 1, "context": "text"}})
    torch.manual_seed(0)
    fusion = build_fusion(cfg, dims)
    x = _inputs()
    x["audio"] = EncoderOutput(torch.randn(2, 4), torch.randn(2, 2, 4), torch.tensor([[1, 0], [1, 1]]).bool())
    tokens, mask = memory_of(fusion, x, "auto")
    image_t, image_m = fusion.pairs["image"].fused_tokens({"image": x["image"], "text": x["text"]})
    audio_t, audio_m = fusion.pairs["audio"].fused_tokens({"audio": x["audio"], "text": x["text"]})
    assert torch.equal(tokens, torch.cat([image_t, audio_t], 1))
    assert torch.equal(mask, torch.cat([image_m, audio_m], 1).bool())
    assert memory_dim(fusion, "auto") == fusion.pairs["image"].token_dim
    mul = build_fusion(OmegaConf.create({"fusion": {"_target_": "mmfuse.fusion.bilinear.MFBFusion"}}), dims)
    assert not hasattr(mul, "fused_tokens")  # a pooled pairwise fusion hands over its vector
    assert memory_of(mul, x, "auto")[0].shape == (2, 1, mul.out_dim)


def test_transformer_decoder_on_the_text_encoders_tokenizer():
    minilm = SHARED / "weights" / "all-MiniLM-L6-v2"
    if not minilm.is_dir():
        pytest.skip("../shared/weights/all-MiniLM-L6-v2 is absent")
    torch.manual_seed(0)
    dec = TransformerDecoder(memory_dim=8, width=16, layers=1, heads=2, ff_mult=2, dropout=0.0, tokenizer=str(minilm))
    tok = dec.tokenizer
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (101, 102, 0) and dec.embed.weight.shape == (30522, 16)
    ids, mask = tok.encode(["a dog"], max_length=8)
    assert ids.tolist() == [[101, 1037, 3899, 102]]
    assert dec(torch.randn(1, 2, 8), torch.ones(1, 2, dtype=torch.bool), ids).shape == (1, 4, 30522)
    out = dec.eval().generate(torch.randn(2, 2, 8), torch.ones(2, 2, dtype=torch.bool), GenerationOptions(max_length=3))
    assert all(len(o) <= 3 and not {101, 0} & set(o) for o in out)  # neither bos nor padding is generated
    assert dec.state_dict()["_extra_state"] == {"vocab": None}


def test_eval_selects_the_checkpoints_data_task_and_decoder_groups_first(tmp_path):
    """``eval.py ckpt_path=X task.generate.num_beams=3`` / ``data.frames=4``: keys of the checkpoint's own
    groups, which the eval config (task=itm, data=shapes by default) does not have."""
    from mmfuse.eval_groups import checkpoint_groups
    from mmfuse.module import CONFIG_KEY

    ckpt = tmp_path / "last.ckpt"
    choices = {"data": "shapes_video", "task": "captioning", "decoder": "transformer", "fusion": "mul"}
    torch.save({CONFIG_KEY: {"choices": choices}, "state_dict": {}}, ckpt)
    assert checkpoint_groups([f"ckpt_path={ckpt}", "task.generate.num_beams=3"]) == [
        "data=shapes_video", "task=captioning", "decoder=transformer"]
    # the eval command's own choice wins: that group is not prepended
    assert checkpoint_groups([f"ckpt_path={ckpt}", "data=shapes", "+decoder=transformer"]) == ["task=captioning"]
    assert checkpoint_groups(["ckpt_path=/no/such.ckpt"]) == []  # evaluate() then names the missing file
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert checkpoint_groups([f"ckpt_path={tmp_path / 'bad.ckpt'}"]) == []
