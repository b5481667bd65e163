"""Robustness (``eval.py +robustness=<name>``): the perturbations, the scores, Shapley values and the
evaluation loop, with exact values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST
from mmfuse.errors import MMFuseError
from mmfuse.evaluate import evaluate
from mmfuse.robustness.image_noise import IMAGE_NOISE, perturb_images
from mmfuse.robustness.missing import SplitMean, recording, removed, replace_output
from mmfuse.robustness.run import NoisyTokenizer, NoisyTransform
from mmfuse.robustness.scores import effective_robustness, relative_robustness
from mmfuse.robustness.seeding import item_rng
from mmfuse.robustness.shapley import all_subsets, shapley, subset_key
from mmfuse.robustness.text_noise import TEXT_NOISE, perturb_texts, swap, word_dropout
from mmfuse.train import train
from mmfuse.types import EncoderOutput


def noisy_image(seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, size=(3, size, size), dtype=np.uint8))


@pytest.mark.parametrize("kind", sorted(IMAGE_NOISE))
def test_every_image_perturbation_is_the_identity_at_level_0_and_changes_the_image_above(kind):
    image = noisy_image()
    assert torch.equal(perturb_images(image, kind, 0.0, seed=0), image)
    assert not torch.equal(perturb_images(image, kind, 0.3, seed=0), image)


@pytest.mark.parametrize("kind", sorted(TEXT_NOISE))
def test_every_text_perturbation_is_the_identity_at_level_0(kind):
    texts = ["a red circle to the left of a blue square", "two dogs"]
    assert perturb_texts(texts, kind, 0.0, seed=3) == texts
    assert perturb_texts(texts, kind, 0.5, seed=3) == perturb_texts(texts, kind, 0.5, seed=3)
    assert perturb_texts(texts, kind, 0.5, seed=3) != texts


def test_gaussian_noise_has_the_stated_standard_deviation():
    grey = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    diff = perturb_images(grey, "gaussian", 0.1, seed=0).double() - 128
    assert float(diff.std()) == pytest.approx(25.5, abs=0.6)  # 255 x 0.1, no clipping at 128 +- 4 sigma
    assert abs(float(diff.mean())) < 0.8


def test_occlusion_covers_the_level_of_the_area_with_grey():
    black = torch.zeros((3, 32, 32), dtype=torch.uint8)
    out = perturb_images(black, "occlusion", 0.25, seed=1)
    assert int((out == 128).sum()) == 3 * 16 * 16
    rows = (out[0] == 128).any(1).nonzero().flatten()
    assert len(rows) == 16 and int(rows[-1] - rows[0]) == 15  # one contiguous square


def test_blur_keeps_a_flat_image_and_spreads_a_point_keeping_its_mass():
    flat = torch.full((3, 16, 16), 77, dtype=torch.uint8)
    assert torch.equal(perturb_images(flat, "blur", 0.1, seed=0), flat)
    point = torch.zeros((3, 33, 33), dtype=torch.uint8)
    point[:, 16, 16] = 255
    out = perturb_images(point, "blur", 0.05, seed=0).double()  # sigma 1.65 px
    assert out[0, 16, 16] < 255 and out[0, 16, 17] > 0
    assert float(out[0].sum()) == pytest.approx(255, abs=40)  # rounding of the spread values


def test_noise_is_per_image_whatever_the_batch():
    a, b = noisy_image(1), noisy_image(2)
    batch = perturb_images(torch.stack([a, b]), "gaussian", 0.2, seed=0)
    assert torch.equal(batch[1], perturb_images(b, "gaussian", 0.2, seed=0))
    assert not torch.equal(perturb_images(b, "gaussian", 0.2, seed=1), batch[1])


def test_text_noise_depends_on_the_seed_and_the_text_not_the_batch():
    texts = [f"the {c} circle is left of the square" for c in ("red", "blue", "green")]
    one = perturb_texts(texts, "typo", 0.3, seed=0)
    assert perturb_texts(texts[1:], "typo", 0.3, seed=0) == one[1:]
    assert perturb_texts(texts, "typo", 0.3, seed=1) != one


def test_the_wrappers_perturb_each_frame_and_keep_the_transforms_attributes():
    class VideoTransform:
        frames, fps = 4, 2.0

        def __call__(self, clip):
            return clip.float() / 255

    clip = torch.stack([noisy_image(i, 16) for i in range(4)])  # uint8 [T, 3, H, W]
    noisy = NoisyTransform(VideoTransform(), "occlusion", 0.25, seed=0)
    assert noisy.frames == 4 and noisy.fps == 2.0
    out = noisy(clip)
    for t in range(4):  # each frame as the image perturbation of that frame alone
        assert torch.equal(out[t], perturb_images(clip[t], "occlusion", 0.25, seed=0).float() / 255)
    tokenizer = NoisyTokenizer(lambda texts: texts, "word_dropout", 1.0, seed=0)
    tokenizer.max_length = 7
    assert tokenizer(["a b c"]) == [""] and tokenizer.max_length == 7


def test_word_dropout_and_swap_exact():
    assert word_dropout("a b c d", 1.0, item_rng(0, 1.0, b"x")) == ""
    assert swap("a b c d e", 1.0, item_rng(0, 1.0, b"x")) == "b a d c e"
    words = " ".join(f"w{i}" for i in range(2000))
    kept = perturb_texts([words], "word_dropout", 0.5, seed=0)[0].split()
    assert 900 < len(kept) < 1100 and kept == sorted(kept, key=lambda w: int(w[1:]))  # order kept


def test_typo_changes_only_letters():
    out = perturb_texts(["ab, cd! 12"], "typo", 1.0, seed=0)[0]
    assert out != "ab, cd! 12"
    assert [c for c in out if not c.isalpha()] == list(", ! 12")


def test_relative_and_effective_robustness_exact():
    assert relative_robustness([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert relative_robustness([1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert relative_robustness([0.9, 0.5, 0.5, 0.1]) == pytest.approx((0.7 + 0.5 + 0.3) / 3)
    assert effective_robustness([0.9, 0.8, 0.7], [0.8, 0.6, 0.4]) == pytest.approx(0.3)
    assert effective_robustness([0.8, 0.6, 0.4], [0.8, 0.6, 0.4]) == 0


def test_shapley_values_exact_and_sum_to_full_minus_empty():
    v = {frozenset(): 0.0, frozenset("a"): 1.0, frozenset("b"): 2.0, frozenset("ab"): 5.0}
    assert shapley(["a", "b"], v.__getitem__) == pytest.approx({"a": 2.0, "b": 3.0})
    phi = shapley(["x", "y", "z"], lambda s: len(s) ** 2 + (4.0 if "x" in s else 0.0))
    assert phi == pytest.approx({"x": 7.0, "y": 3.0, "z": 3.0})
    assert sum(phi.values()) == pytest.approx(9 + 4)
    assert all_subsets(["a", "b"]) == [("a", "b"), ("a",), ("b",), ()]
    assert subset_key(("text", "image"), ["image", "text"]) == "image+text"


def test_removed_modalities_exact():
    pooled = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    tokens = torch.tensor([[[1.0], [5.0]], [[3.0], [9.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    out = EncoderOutput(pooled, tokens, mask)
    g = torch.Generator().manual_seed(0)
    zeros = replace_output(out, "zeros", g)
    assert zeros.pooled.abs().sum() == 0 and torch.equal(zeros.mask, mask)
    split = SplitMean()
    split.add(out)
    split.add(EncoderOutput(torch.tensor([[5.0, 1.0]]), torch.tensor([[[7.0], [2.0], [4.0]]]),
                            torch.tensor([[True, False, True]])))  # a later batch, longer: positions grow
    assert torch.equal(split.pooled, torch.tensor([3.0, 3.0]))  # (1+3+5)/3, (2+6+1)/3
    assert torch.equal(split.tokens[:, 0], torch.tensor([11 / 3, 5.0, 4.0], dtype=torch.float64))  # masked: 9 and 2 left out
    mean = replace_output(out, "mean", g, split)
    assert torch.equal(mean.pooled, torch.tensor([[3.0, 3.0], [3.0, 3.0]]))
    assert torch.allclose(mean.tokens[:, :, 0], torch.tensor([[11 / 3, 5.0], [11 / 3, 5.0]]))
    assert torch.equal(mean.mask, mask)
    longer = EncoderOutput(torch.zeros(1, 2), torch.ones(1, 4, 1), torch.ones(1, 4, dtype=torch.bool))
    assert replace_output(longer, "mean", g, split).tokens[0, 3, 0] == 0  # a position never seen: 0
    with pytest.raises(MMFuseError, match="robustness.mode=mean"):
        replace_output(out, "mean", g)
    shuffled = replace_output(out, "shuffle", torch.Generator().manual_seed(3))
    perm = [int(torch.nonzero((pooled == row).all(1))[0]) for row in shuffled.pooled]
    assert sorted(perm) == [0, 1] and torch.equal(shuffled.mask, mask[perm])


def test_removed_restores_the_models_encode():
    class Model(torch.nn.Module):
        modalities = ("image", "text")

        def encode(self, modality, batch):
            return EncoderOutput(torch.ones(2, 3), torch.ones(2, 1, 3), torch.ones(2, 1, dtype=torch.bool))

    model = Model()
    with removed(model, ["image"], "zeros"):
        assert model.encode("image", {}).pooled.sum() == 0
        assert model.encode("text", {}).pooled.sum() == 6
    assert model.encode("image", {}).pooled.sum() == 6 and "encode" not in model.__dict__
    with recording(model, ["text"]) as means:
        model.encode("text", {})
        model.encode("image", {})
    assert means["text"].n == 2 and torch.equal(means["text"].pooled, torch.ones(3, dtype=torch.float64)) and list(means) == ["text"]
    with removed(model, ["text"], "mean", means=means):
        assert torch.equal(model.encode("text", {}).pooled, torch.ones(2, 3))
    assert "encode" not in model.__dict__
    with pytest.raises(MMFuseError, match="robustness.mode=mean"):
        with removed(model, ["image"], "mean", means=means):  # no image means recorded
            pass
    with pytest.raises(MMFuseError, match="robustness.mode='nothing'"):
        with removed(model, ["image"], "nothing"):
            pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny mul run with a frozen image encoder: its features go through the feature cache."""
    from conftest import compose_config

    out = tmp_path_factory.mktemp("robust")
    cfg = compose_config(out / "train", [*FAST, "fusion=mul", "data.num_val=200", "trainer.max_epochs=4",
                                         "encoder.image.freeze=true"])
    results = train(cfg)
    return out, Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", results


def _eval(out: Path, ckpt: Path, name: str, *extra: str) -> dict:
    from conftest import compose_config

    cfg = compose_config(out / f"eval_{name}_{len(extra)}", [f"ckpt_path={ckpt}", f"+robustness={name}", *extra],
                         "eval")
    return evaluate(cfg)


def test_image_noise_curve_starts_at_the_clean_metrics_and_bypasses_the_feature_cache(trained, monkeypatch):
    import mmfuse.robustness.run as run

    out, ckpt, results = trained
    batches, original = [], run.perturbed_datamodule

    def perturbed(*args):
        dm = original(*args)
        dm.setup("validate")
        batches.append(set(next(iter(dm.val_dataloader()))))
        return dm

    monkeypatch.setattr(run, "perturbed_datamodule", perturbed)
    ev = _eval(out, ckpt, "image_noise", "robustness.levels=[0.0,0.1,1.0]", "robustness.metric=val/loss")
    assert len(batches) == 3 and all("image" in b and "image_features" not in b for b in batches)  # pixels
    rob = ev["robustness"]
    assert rob["levels"] == [0.0, 0.1, 1.0] and rob["metric"] == "val/loss"
    for key, values in rob["curve"].items():
        assert len(values) == 3 and values[0] == ev["metrics"][key]  # level 0: exactly the clean pass
    loss = rob["curve"]["val/loss"]
    assert loss[2] != loss[0]  # a cached (clean) image feature would give the same loss
    assert rob["relative_robustness"] == pytest.approx(relative_robustness(loss))
    saved = json.loads((Path(out) / "eval_image_noise_2" / "results.json").read_text())
    assert saved["robustness"]["curve"]["val/loss"] == loss


def test_missing_gives_every_subset_and_shapley_sums_to_full_minus_empty(trained):
    out, ckpt, _ = trained
    rob = _eval(out, ckpt, "missing", "robustness.metric=val/loss")["robustness"]
    assert set(rob["subsets"]) == {"image+text", "image", "text", ""}
    v = rob["subsets"]
    assert sum(rob["shapley"].values()) == pytest.approx(v["image+text"] - v[""], abs=1e-9)
    assert rob["drop"] == pytest.approx({"image": v["image+text"] - v["text"], "text": v["image+text"] - v["image"]})
    assert v["image+text"] != v["text"]
    mean = _eval(out, ckpt, "missing", "robustness.metric=val/loss", "robustness.mode=mean")["robustness"]
    w = mean["subsets"]
    assert mean["mode"] == "mean" and w["image+text"] == v["image+text"]  # nothing removed: the clean pass
    assert w["text"] != v["text"] and w[""] != v[""]  # the split's mean, not zeros
    assert sum(mean["shapley"].values()) == pytest.approx(w["image+text"] - w[""], abs=1e-9)


def test_text_noise_on_a_model_and_bad_settings(trained):
    out, ckpt, _ = trained
    rob = _eval(out, ckpt, "text_dropout", "robustness.levels=[0.0,1.0]", "robustness.metric=val/loss")["robustness"]
    assert rob["curve"]["val/loss"][1] != rob["curve"]["val/loss"][0]
    with pytest.raises(MMFuseError, match="robustness.modality='audio'"):
        _eval(out, ckpt, "image_noise", "robustness.modality=audio")
    with pytest.raises(MMFuseError, match="robustness.levels"):
        _eval(out, ckpt, "image_blur", "robustness.levels=[0.0,2.0]")
    with pytest.raises(MMFuseError, match="robustness.kind='snow'"):
        _eval(out, ckpt, "image_noise", "robustness.kind=snow")


def test_a_text_only_models_image_noise_curve_is_flat(tmp_path):
    from conftest import compose_config

    cfg = compose_config(tmp_path / "train", [*FAST, "fusion=text_only", "data.num_val=200"])
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    rob = _eval(tmp_path, ckpt, "image_occlusion", "robustness.levels=[0.0,0.5,1.0]")["robustness"]
    assert all(len(set(values)) == 1 for values in rob["curve"].values())


def test_missing_fraction_runs_from_the_clean_model_to_the_modality_removed(trained):
    out, ckpt, _ = trained
    ev = _eval(out, ckpt, "missing_image", "robustness.levels=[0.0,0.5,1.0]", "robustness.metric=val/loss")
    loss = ev["robustness"]["curve"]["val/loss"]
    assert ev["robustness"]["kind"] == "missing_fraction" and ev["robustness"]["modality"] == "image"
    assert loss[0] == ev["metrics"]["val/loss"]
    whole = _eval(out, ckpt, "missing", "robustness.metric=val/loss", "seed=0")["robustness"]["subsets"]
    assert loss[2] == pytest.approx(whole["text"], abs=1e-6)  # every sample without its image
    assert loss[1] not in (loss[0], loss[2])
    with pytest.raises(MMFuseError, match="robustness.modality='audio'"):
        _eval(out, ckpt, "missing_image", "robustness.modality=audio")


def test_a_fraction_of_the_rows_is_removed():
    class Model(torch.nn.Module):
        modalities = ("image", "text")

        def encode(self, modality, batch):
            return EncoderOutput(torch.ones(1000, 2), torch.ones(1000, 1, 2), torch.ones(1000, 1, dtype=torch.bool))

    model = Model()
    with removed(model, ["image"], "zeros", fraction=0.3):
        kept = model.encode("image", {}).pooled[:, 0]
    assert 250 < int((kept == 0).sum()) < 350 and set(kept.tolist()) == {0.0, 1.0}
