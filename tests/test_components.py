"""Unit tests of the small parts: tokenizer, transform, metrics, schedule, heads, pooled fusions."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse.encoders.tiny_cnn import TinyCNN
from mmfuse.encoders.tiny_text import TinyTextTransformer
from mmfuse.encoders.transforms import ImageTransform
from mmfuse.encoders.word_tokenizer import WordTokenizer
from mmfuse.errors import MMFuseError
from mmfuse.optim import warmup_cosine
from mmfuse.tasks.heads import build_head
from mmfuse.tasks.metrics import GroupedAccuracy


def test_word_tokenizer_vocab_by_frequency_and_padding():
    tok = WordTokenizer(max_vocab=6, max_length=4)
    tok.fit(["a red circle", "a blue circle", "a red square"])
    # specials, then by count: a(3), circle(2), red(2) -> ties alphabetical; 'blue'/'square' do not fit
    assert tok.vocab == ["[PAD]", "[UNK]", "[CLS]", "a", "circle", "red"]
    out = tok(["A red, SQUARE!", "a red circle above a thing"])
    assert out["input_ids"].tolist() == [[2, 3, 5, 1], [2, 3, 5, 4]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    short = tok(["a", "a red"])
    assert short["input_ids"].tolist() == [[2, 3, 0], [2, 3, 5]]
    assert short["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


def test_tokenizer_vocab_travels_in_the_state_dict():
    enc = TinyTextTransformer(width=16, layers=1, heads=2, max_vocab=32)
    enc.tokenizer.fit(["a red circle left of a blue square"])
    state = enc.state_dict()
    fresh = TinyTextTransformer(width=16, layers=1, heads=2, max_vocab=32)
    assert not fresh.tokenizer.fitted
    fresh.load_state_dict(state)
    assert fresh.tokenizer.vocab == enc.tokenizer.vocab


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_text_knows_word_order_from_the_start(seed):
    """Same words, other order (the binding negative): the pooled encodings differ at initialisation by
    5 % of their norm with positions at the words' scale, by 0.2 % with positions at 0.02 (a bag of
    words, with which no fusion learned relation or binding)."""
    captions = ["a red circle to the left of a blue square", "a blue circle to the left of a red square"]

    def relative_change(**kwargs):
        torch.manual_seed(seed)
        enc = TinyTextTransformer(**kwargs)
        enc.tokenizer.fit(captions)
        with torch.no_grad():
            pooled = enc(**enc.tokenizer(captions)).pooled
        return float((pooled[0] - pooled[1]).norm() / pooled[0].norm())

    assert relative_change() > 0.03
    assert relative_change(position_std=0.02) < 0.01
    with pytest.raises(MMFuseError, match=r"encoder.text.position_std=0: expected a positive number"):
        TinyTextTransformer(position_std=0)


def test_image_transform_normalises_and_resizes():
    t = ImageTransform(size=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    assert torch.allclose(t(x), torch.full((2, 3, 8, 8), 2.0))
    r = ImageTransform(size=4, mean=(0, 0, 0), std=(1, 1, 1))(torch.zeros(3, 8, 8, dtype=torch.uint8))
    assert r.shape == (3, 4, 4)


def test_grouped_accuracy_matches_a_hand_count():
    m = GroupedAccuracy(("pos", "a", "b"))
    m.update(torch.tensor([1, 0, 1, 1, 0]), torch.tensor([0, 0, 1, 1, 1]))
    m.update(torch.tensor([1]), torch.tensor([0]))
    out = {k: float(v) for k, v in m.compute().items()}
    assert out == pytest.approx({"pos": 2 / 3, "a": 2 / 3})  # group "b" absent: no samples


def test_warmup_cosine_schedule_values():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_fraction=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10 + 45] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))  # one step before the end: 3e-4


def test_heads():
    assert sum(p.numel() for p in build_head("linear", 8, 1).parameters()) == 9
    assert sum(p.numel() for p in build_head("mlp", 8, 1, hidden_dim=4).parameters()) == 8 * 4 + 4 + 4 + 1
    with pytest.raises(MMFuseError, match="not a head"):
        build_head("deep", 8, 1)


def test_tiny_encoders_shapes_and_masks():
    img = TinyCNN(width=32, image_size=32)
    out = img(torch.randn(3, 3, 32, 32))
    assert out.pooled.shape == (3, 32) and out.tokens.shape == (3, 64, 32) and out.mask.all()
    assert torch.allclose(out.pooled, (out.tokens - img.position).amax(1), atol=1e-5)
    txt = TinyTextTransformer(width=32, layers=1, heads=2)
    txt.tokenizer.fit(["a red circle"])
    batch = txt.tokenizer(["a red circle", "a"])
    t = txt(batch["input_ids"], batch["attention_mask"])
    assert t.tokens.shape == (2, 4, 32) and t.mask.tolist() == [[True] * 4, [True, True, False, False]]
    # padding does not change a caption's encoding
    alone = txt(*txt.tokenizer(["a"]).values())
    assert torch.allclose(alone.pooled[0], t.pooled[1], atol=1e-5)


def test_frozen_encoder_has_no_gradients_and_keeps_batchnorm_statistics():
    enc = TinyCNN(width=16, freeze=True)
    enc.train()
    assert not enc.training and enc.fully_frozen
    before = enc.stages[0][1].running_mean.clone()
    enc(torch.randn(4, 3, 32, 32))
    assert torch.equal(before, enc.stages[0][1].running_mean)
    partial = TinyCNN(width=16, freeze=True, trainable_last=1)
    partial.train()
    trainable = {n.split(".")[1] for n, p in partial.named_parameters() if p.requires_grad}
    assert trainable == {"2"} and partial.stages[2].training and not partial.stages[0].training


def test_tiny_encoder_rejects_published_weights_and_missing_files(tmp_path):
    with pytest.raises(MMFuseError, match="no published weights"):
        TinyCNN(pretrained=True)
    with pytest.raises(MMFuseError, match="is not a file"):
        TinyCNN(pretrained=str(tmp_path / "nope.pt"))
    enc = TinyCNN(width=16)
    torch.save(enc.state_dict(), tmp_path / "w.pt")
    again = TinyCNN(width=16, pretrained=str(tmp_path / "w.pt"))
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), again.state_dict().values()))


def test_pair_dataset_gathers_pairs_and_trims_padding():
    from mmfuse.data.pairs import PairDataset, TensorImages, unique_texts

    texts, text_index = unique_texts(["b", "a", "b", "c"])
    assert texts == ["b", "a", "c"] and text_index.tolist() == [0, 1, 0, 2]
    images = torch.arange(3 * 3 * 2 * 2, dtype=torch.uint8).view(3, 3, 2, 2)
    tokens = {"input_ids": torch.tensor([[5, 6, 0], [7, 0, 0], [8, 9, 10]]),
              "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])}
    ds = PairDataset(TensorImages(images), tokens, image_index=torch.tensor([2, 0, 1, 1]), text_index=text_index,
                     fields={"label": torch.tensor([1.0, 0.0, 1.0, 0.0])}, transform=lambda x: x.float())
    batch = ds.__getitems__([1, 0])
    assert torch.equal(batch["image"], images[[0, 2]].float())
    assert batch["input_ids"].tolist() == [[7, 0], [5, 6]]  # third column was padding for both
    assert batch["image_id"].tolist() == [0, 2] and batch["text_id"].tolist() == [1, 0]
    assert batch["label"].tolist() == [0.0, 1.0]
    assert ds[3]["input_ids"].tolist() == [8, 9, 10]
    with pytest.raises(ValueError, match="one per pair"):
        PairDataset(TensorImages(images), tokens, torch.tensor([0]), torch.tensor([0, 1]))
