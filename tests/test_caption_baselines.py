"""The non-parametric caption baselines (decoder=most_frequent / nearest), UnimodalFusion(project=false) and
the COCO captioning experiment configs."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse.decoders.base import GenerationOptions
from mmfuse.decoders.baselines import MostFrequentDecoder, NearestDecoder, consensus, sentence_bleu
from mmfuse.fusion.baselines import ImageOnly, TextOnly
from mmfuse.tasks.generative import token_loss
from mmfuse.types import EncoderOutput

OPTIONS = GenerationOptions(max_length=20)
# three training "images" (memories of two positions, the second masked out in image c) and their captions
IMAGES = {
    "a": (torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.2, 0.0]]), [True, True],
          ["a dog runs on grass", "a dog runs on the grass", "a brown dog runs on grass", "a cat sleeps"]),
    "b": (torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]), [True, True],
          ["a red bus on a street", "a cat sleeps"]),
    "c": (torch.tensor([[0.0, 0.0, 1.0], [9.0, 9.0, 9.0]]), [True, False],
          ["a cat sleeps", "two cats sleep on a bed"]),
}


def pairs() -> list[tuple[torch.Tensor, list[bool], str]]:
    return [(m, mk, c) for m, mk, caps in IMAGES.values() for c in caps]


def fitted(decoder):
    decoder.tokenizer.fit([c for *_, c in pairs()])
    return decoder


def train_epoch(decoder, items, batch: int = 3) -> None:
    """What the task does in one epoch: teacher-forced forward in train mode, then eval."""
    decoder.train()
    for i in range(0, len(items), batch):
        chunk = items[i: i + batch]
        memory = torch.stack([m for m, _, _ in chunk])
        memory_mask = torch.tensor([mk for _, mk, _ in chunk])
        ids, mask = decoder.tokenizer.encode([c for *_, c in chunk], decoder.max_length)
        decoder(memory, memory_mask, ids, mask)
    decoder.eval()


def captions(decoder, queries: torch.Tensor, options: GenerationOptions = OPTIONS) -> list[str]:
    mask = torch.ones(queries.shape[:2], dtype=torch.bool)
    return [decoder.tokenizer.decode(ids) for ids in decoder.generate(queries, mask, options)]


QUERIES = torch.tensor([[[0.9, 0.1, 0.0]], [[0.1, 2.0, 0.0]], [[0.0, 0.1, 5.0]]])  # nearest: a, b, c


def test_most_frequent_returns_the_most_frequent_training_caption():
    decoder = fitted(MostFrequentDecoder(3))
    train_epoch(decoder, pairs())
    assert captions(decoder, QUERIES) == ["a cat sleeps"] * 3  # 3 of the 8 training pairs


def test_most_frequent_ties_are_alphabetical_and_punctuation_case_normalised():
    decoder = MostFrequentDecoder(3)
    items = [(torch.ones(1, 3), [True], c) for c in ["Zebras graze.", "zebras GRAZE", "a bird", "A bird!", "a cat"]]
    decoder.tokenizer.fit([c for *_, c in items])
    train_epoch(decoder, items)
    assert captions(decoder, QUERIES) == ["a bird"] * 3  # "a bird" and "zebras graze" twice each


def test_nearest_returns_the_caption_of_the_nearest_training_image():
    decoder = fitted(NearestDecoder(3))
    train_epoch(decoder, pairs())
    # first caption of each image in sorted word-id order; image c's masked position (9, 9, 9) is ignored
    assert captions(decoder, QUERIES) == ["a cat sleeps", "a cat sleeps", "a cat sleeps"]
    order = [decoder.bank_captions[i] for i in decoder.neighbours(QUERIES[:, 0].double())[:, 0].tolist()]
    decode = decoder.tokenizer.decode
    assert [sorted(decode(list(c)) for c in cs) for cs in order] == [sorted(IMAGES[k][2]) for k in "abc"]
    # one bank row per image, its masked mean: image c's masked (9, 9, 9) left out
    rows = {tuple(round(x, 6) for x in v.tolist()) for v in decoder.bank_vectors}
    assert rows == {(1.0, 0.1, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)}


def test_nearest_without_the_shared_caption():
    items = [p for p in pairs() if p[2] != "a cat sleeps"]
    decoder = NearestDecoder(3, k=2)
    decoder.tokenizer.fit([c for *_, c in items])
    train_epoch(decoder, items)
    # per image, the captions sorted by word ids ("a" < "dog" < "on" ... by frequency): first of each
    assert captions(decoder, QUERIES) == ["a dog runs on grass", "a red bus on a street", "two cats sleep on a bed"]


def test_sentence_bleu_hand_values():
    assert sentence_bleu((1, 2, 3, 4), (1, 2, 3, 4)) == 1.0
    # p1 = 2/3, p2 = (1+1)/(2+1), p3 = (0+1)/(1+1), p4 = (0+1)/(0+1); BP = 1
    assert sentence_bleu((1, 2, 3), (1, 2, 4)) == pytest.approx((2 / 3 * 2 / 3 * 1 / 2) ** 0.25, abs=1e-12)
    # shorter candidate: BP = exp(1 - 4/2)
    assert sentence_bleu((1, 2), (1, 2, 3, 4)) == pytest.approx(math.exp(-1) * (1 * 1 * 1 * 1) ** 0.25)
    assert sentence_bleu((), (1,)) == 0.0 and sentence_bleu((5,), (1,)) == 0.0


def test_consensus_hand_example():
    dog, dog_the, brown, cat = (1, 2, 3, 4, 5), (1, 2, 3, 4, 6, 5), (1, 7, 2, 3, 4, 5), (1, 8, 9)
    assert consensus([cat, brown, dog_the, dog]) == dog  # the one closest to all the others
    assert consensus([cat]) == cat
    # BLEU's direction matters: the long caption holds both halves (mean BLEU 0.355 of it against the
    # others vs 0.273 for (1, 2, 3, 4)); scored the other way round (1, 2, 3, 4) would win (0.309 vs 0.289)
    long, half = (1, 2, 3, 4, 5, 6, 7, 8), (1, 2, 3, 4)
    assert consensus([long, half, (5, 6, 7, 8), (1, 2, 9)]) == long


def test_nearest_consensus_k1_and_k2():
    decoder = fitted(NearestDecoder(3, k=1, consensus=True))
    train_epoch(decoder, pairs())
    # image a's own references: "a dog runs on grass" agrees most with the other two dog captions
    assert captions(decoder, QUERIES[:1]) == ["a dog runs on grass"]
    # k=2 for image c's query (neighbours c, then b): pool {a cat sleeps x2, two cats.., a red bus..}
    decoder.k = 2
    assert captions(decoder, QUERIES[2:]) == ["a cat sleeps"]


def test_generation_is_cut_at_max_length_and_empty_before_training():
    decoder = fitted(NearestDecoder(3))
    assert captions(decoder, QUERIES) == ["", "", ""]  # the sanity validation before any training step
    train_epoch(decoder, pairs())
    assert captions(decoder, QUERIES[:1], GenerationOptions(max_length=2)) == ["a cat"]


def test_a_new_epoch_replaces_the_bank():
    decoder = fitted(MostFrequentDecoder(3))
    train_epoch(decoder, pairs())
    train_epoch(decoder, [p for p in pairs() if p[2] == "a red bus on a street"])
    assert captions(decoder, QUERIES[:1]) == ["a red bus on a street"]
    assert len(decoder.bank_captions) == 1 and decoder.bank_vectors.shape == (1, 3)


def test_forward_gives_a_finite_loss_with_a_gradient():
    decoder = fitted(NearestDecoder(3))
    decoder.train()
    ids, mask = decoder.tokenizer.encode(["a dog runs on grass"], decoder.max_length)
    logits = decoder(torch.ones(1, 1, 3), torch.ones(1, 1, dtype=torch.bool), ids, mask)
    assert logits.shape == (1, ids.shape[1], len(decoder.tokenizer.vocab))
    total, count = token_loss(logits, ids, mask)
    assert (total / count).item() == pytest.approx(math.log(len(decoder.tokenizer.vocab)))
    total.backward()
    assert decoder.anchor.grad is not None and decoder.anchor.grad.item() == 0.0


def test_the_bank_survives_a_state_dict_round_trip():
    decoder = fitted(NearestDecoder(3, k=2, consensus=True))
    train_epoch(decoder, pairs())
    expected = captions(decoder, QUERIES)
    state = decoder.state_dict()
    clone = NearestDecoder(3, k=2, consensus=True)
    clone.load_state_dict(state)
    clone.eval()
    assert clone.tokenizer.vocab == decoder.tokenizer.vocab
    assert torch.equal(clone.bank_vectors, decoder.bank_vectors)
    assert captions(clone, QUERIES) == expected
    with pytest.raises(Exception, match="width"):
        NearestDecoder(4).load_state_dict(state)


def test_unimodal_project_false_is_the_identity_without_parameters():
    x = torch.randn(4, 7)
    inputs = {"image": EncoderOutput(pooled=x, tokens=x[:, None], mask=torch.ones(4, 1, dtype=torch.bool)),
              "text": EncoderOutput(pooled=torch.randn(4, 5), tokens=None, mask=None)}
    fusion = ImageOnly({"image": 7, "text": 5}, project=False)
    assert torch.equal(fusion(inputs), x)
    assert fusion.out_dim == 7 and sum(p.numel() for p in fusion.parameters()) == 0
    assert ImageOnly.expected_params({"image": 7, "text": 5}, project=False) == 0
    assert ImageOnly.expected_params({"image": 7, "text": 5}) == 8 * 256
    projected = TextOnly({"image": 7, "text": 5}, dim=3)
    assert projected.out_dim == 3 and sum(p.numel() for p in projected.parameters()) == 6 * 3
    with pytest.raises(Exception, match="fusion.project"):
        ImageOnly({"image": 7}, project="no")


def test_experiment_configs_compose(make_cfg):
    cfg = make_cfg("experiment=coco_caption")
    assert cfg.task._target_ == "mmfuse.tasks.captioning.CaptioningTask"
    assert cfg.decoder._target_ == "mmfuse.decoders.transformer.TransformerDecoder"
    assert cfg.data._target_ == "mmfuse.data.coco.COCOCaptionsDataModule" and cfg.data.root.endswith("coco_mini")
    assert cfg.encoder.image.arch == "mobilenet_v2" and cfg.encoder.image.freeze is True
    assert cfg.encoder.text._target_ is None and cfg.lr_mult is None
    assert cfg.fusion._target_ == "mmfuse.fusion.baselines.ImageOnly" and cfg.fusion.project is False
    issue = make_cfg("task=captioning", "experiment=coco_caption", "decoder=hf_cross",
                     "decoder.name_or_path=../shared/weights/all-MiniLM-L6-v2", subdir="issue")
    assert issue.decoder._target_ == "mmfuse.decoders.hf_cross.HFCrossDecoder"
    assert issue.decoder.name_or_path.endswith("all-MiniLM-L6-v2")
    for name, target in (("nearest", "NearestDecoder"), ("most_frequent", "MostFrequentDecoder")):
        base = make_cfg(f"experiment=coco_caption_{name}", subdir=name)
        assert base.decoder._target_ == f"mmfuse.decoders.baselines.{target}"
        assert base.trainer.max_epochs == 1 and base.fusion.project is False
        assert base.encoder.image.arch == "mobilenet_v2"
