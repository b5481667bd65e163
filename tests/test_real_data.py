"""Real photos, real captions, real pretrained encoders: the bars of experiments/real_coco/README.md.

COCO mini (80 train / 79 val images, 5 official captions each), frozen ImageNet MobileNetV2 and frozen
all-MiniLM-L6-v2 from ../shared, through the experiment configs exactly as committed. The three runs
share one feature cache, so the encoders run once for the whole module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from conftest import needs_shared
from mmfuse.train import train

pytestmark = [pytest.mark.slow, pytest.mark.shared]


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    needs_shared("data", "coco_mini")
    needs_shared("weights", "torch_home", "hub", "checkpoints", "mobilenet_v2-b0353104.pth")
    needs_shared("weights", "all-MiniLM-L6-v2")
    return tmp_path_factory.mktemp("real_coco_cache")


def run(make_cfg, cache: Path, experiment: str, *overrides: str) -> dict:
    shared = needs_shared()
    cfg = make_cfg(f"experiment={experiment}", f"data.root={shared / 'data' / 'coco_mini'}",
                   f"encoder.image.weights_dir={shared / 'weights' / 'torch_home' / 'hub' / 'checkpoints'}",
                   f"encoder.text.name_or_path={shared / 'weights' / 'all-MiniLM-L6-v2'}",
                   "callbacks.progress_bar=null", *overrides)
    with open_dict(cfg):
        cfg.paths.cache_dir = str(cache)
    cached_before = any((cache / "features").glob("*/manifest.json"))
    results = train(cfg)
    assert json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["metrics"] == results["metrics"]
    statuses = {side["status"] for split in results["feature_cache"].values() for side in split.values()}
    if cached_before:  # an earlier test of this module encoded them: nothing is encoded again
        assert statuses == {"hit"} and results["encoded_samples"] == {"image": 0, "text": 0}
    else:  # every image and caption of both splits encoded exactly once
        assert statuses == {"built"} and results["encoded_samples"] == {"image": 80 + 79, "text": 400 + 395}
    assert results["data"]["train"]["images"] == 80 and results["data"]["val"]["images"] == 79
    assert results["data"]["val"]["captions"] == 395 and results["data"]["val"]["skipped"] == {"count": 0}
    return results


def test_dual_encoder_on_frozen_pretrained_features_retrieves(make_cfg, feature_cache):
    m = run(make_cfg, feature_cache, "coco_dual_encoder")["metrics"]
    assert m["val/t2i_r5"] >= 50 and m["val/i2t_r5"] >= 45, m
    assert m["val/rsum"] > 250  # chance: about 6 x 100 x K/79 summed over K = 1, 5, 10 -> 49


def test_itm_with_multiplicative_fusion_is_a_retriever(make_cfg, feature_cache):
    m = run(make_cfg, feature_cache, "coco_itm")["metrics"]
    assert m["val/t2i_r5"] >= 40, m
    assert m["val/auroc"] > 0.75, m


def test_the_seed_model_stays_at_chance_on_real_data(make_cfg, feature_cache):
    m = run(make_cfg, feature_cache, "coco_seed_model")["metrics"]
    assert 0.4 <= m["val/acc"] <= 0.6 and 0.4 <= m["val/auroc"] <= 0.6, m
    assert m["val/t2i_r1"] <= 5 and m["val/i2t_r1"] <= 5 and m["val/rsum"] < 100, m
