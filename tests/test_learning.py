"""What the default data and model learn: the accuracy bar, and no one-modality shortcut."""

from __future__ import annotations

from dataclasses import replace

import pytest

from conftest import FAST
from mmfuse.data.shapes import datamodule as shapes_dm
from mmfuse.train import train

ALL_NEGATIVES = tuple(f"data.negatives.{t}=1.0" for t in ("other", "color", "shape", "relation", "binding"))
UNIMODAL = (*FAST, "data.num_train=3000", "data.num_val=1000", "trainer.max_epochs=3", "test=false",
            *ALL_NEGATIVES)


def test_image_alone_cannot_beat_chance(make_cfg):
    """Each image appears once with its caption and once with a negative: acc is exactly 0.5."""
    metrics = train(make_cfg(*UNIMODAL, "fusion=image_only"))["metrics"]
    assert metrics["val/acc"] == pytest.approx(0.5, abs=1e-6)


def test_text_alone_stays_at_chance(make_cfg):
    metrics = train(make_cfg(*UNIMODAL, "fusion=text_only", "lr_mult.text_encoder=1.0"))["metrics"]
    assert abs(metrics["val/acc"] - 0.5) < 0.04, metrics
    assert metrics["val/auroc"] < 0.56


def test_the_text_only_check_catches_a_caption_leak(make_cfg, monkeypatch):
    """The prototype's leak (a changed colour that repeats the other object's colour) is found."""
    honest = shapes_dm.make_negative

    def leaky(kind, scene, caption, others, rng):
        if kind == "color":
            return replace(caption, color_a=caption.color_b)
        return honest(kind, scene, caption, others, rng)

    monkeypatch.setattr(shapes_dm, "make_negative", leaky)
    metrics = train(make_cfg(*UNIMODAL, "fusion=text_only", "lr_mult.text_encoder=1.0",
                             "data.negatives.relation=0", "data.negatives.binding=0",
                             "data.cache_dir=null"))["metrics"]
    assert metrics["val/acc"] > 0.6, metrics


@pytest.mark.slow
def test_default_run_reaches_its_accuracy_bar(make_cfg):
    """``python train.py`` as shipped: val ITM accuracy >= 0.85 on the default negative mix."""
    results = train(make_cfg())
    m = results["metrics"]
    assert m["val/acc"] >= 0.85, m
    assert {"val/acc_positive", "val/acc_other", "val/acc_color", "val/acc_shape"} <= set(m)
    assert m["val/acc_color"] > 0.9 and m["val/acc_other"] > 0.9
