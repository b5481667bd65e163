"""Shared fixtures: compose the real config (like lightning-hydra-template) and shrink it for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SHARED = ROOT.parent / "shared"

FAST = ("debug=fast",)


def compose_config(tmp_path: Path, overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The real composed config, with outputs under ``tmp_path`` and Hydra's runtime info set."""
    GlobalHydra.instance().clear()
    initialize_config_dir(str(CONF_DIR), version_base="1.3")  # stays initialised: eval composes again
    cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
        cfg.paths.cache_dir = str(tmp_path / "cache")
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str, subdir: str = "run", config_name: str = "train") -> DictConfig:
        out = tmp_path / subdir
        out.mkdir(parents=True, exist_ok=True)
        return compose_config(out, overrides, config_name)

    yield make
    GlobalHydra.instance().clear()


def run_cli(script: str, *args: str, outputs: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python <script> args`` from the repository root with outputs under ``outputs``."""
    full_env = {**os.environ, "MMFUSE_OUTPUTS": str(outputs), "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


class Items(torch.utils.data.Dataset):
    """A dataset whose sample ``i`` is ``i`` (for samplers and loaders)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def needs_shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test asset {path} is absent (../shared sits beside the clone in CI)")
    return path


def assert_wall_time_is_the_runs(results: dict) -> None:
    """``wall_time_s`` is the time from ``started_at`` to ``finished_at`` (ISO 8601 to the second: ±1 s)."""
    from datetime import datetime

    started, finished = (datetime.fromisoformat(results[k]) for k in ("started_at", "finished_at"))
    elapsed = (finished - started).total_seconds()
    assert elapsed - 1 <= results["wall_time_s"] <= elapsed + 1, (results["wall_time_s"], elapsed)


def assert_itm_metrics_add_up(metrics: dict, pair_types: dict[str, int], split: str = "val") -> None:
    """A split's ITM metrics agree with each other and with its pair counts ``{"positive": n, "<type>": m}``:
    ``acc_<type> · count`` is a whole number of pairs, ``acc`` is those numbers over all pairs, and
    ``f1 = 2TP / (2TP + FP + FN)`` from the same numbers (TP: positives accepted, TN: negatives rejected).
    Two metrics that apply the decision rule differently, or a metric over other pairs, break it."""
    correct = {}
    for kind, count in pair_types.items():
        hits = metrics[f"{split}/acc_{kind}"] * count
        assert hits == pytest.approx(round(hits), abs=1e-3), (split, kind, metrics[f"{split}/acc_{kind}"], count)
        correct[kind] = round(hits)
    n, positives = sum(pair_types.values()), pair_types["positive"]
    tp = correct["positive"]
    tn = sum(v for kind, v in correct.items() if kind != "positive")
    fp, fn = n - positives - tn, positives - tp
    assert metrics[f"{split}/acc"] == pytest.approx((tp + tn) / n, abs=1e-6), split
    assert metrics[f"{split}/f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6), split


def assert_recalls_add_up(metrics: dict, images: int, texts: int, split: str = "val") -> None:
    """Retrieval recalls of a split: each is a whole number of queries in percent (``images`` i2t queries,
    ``texts`` t2i queries), R@1 <= R@5 <= R@10, R@K = 100 once K reaches the candidates (t2i: ``images``),
    and rsum is the sum of the six."""
    for direction, queries in (("i2t", images), ("t2i", texts)):
        recalls = [metrics[f"{split}/{direction}_r{k}"] for k in (1, 5, 10)]
        for r in recalls:
            assert r * queries / 100 == pytest.approx(round(r * queries / 100), abs=1e-3), (direction, r, queries)
        assert recalls == sorted(recalls), (direction, recalls)
    for k in (1, 5, 10):
        if k >= images:
            assert metrics[f"{split}/t2i_r{k}"] == 100.0, k
    six = [metrics[f"{split}/{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert metrics[f"{split}/rsum"] == pytest.approx(sum(six), abs=1e-4)
