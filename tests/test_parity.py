"""mmfuse trains the seed's model exactly like a hand-written PyTorch loop (losses of the first 50 steps).

The hand-written loop is ``experiments/benchmarks/handloop.py`` (also timed there by ``overhead.py``).
Same seed, data order, batch size, optimizer and schedule; the losses must agree within 1e-5, end to
end (encoders trained in the loop) and on cached features (frozen encoders, fusion and head only).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from mmfuse.train import train

sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))
from handloop import hand_train  # noqa: E402

STEPS = 50
PARITY = ("experiment=seed_model", "data.num_train=400", "data.num_val=64", "data.num_test=0",
          "data.batch_size=16", "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "test=false",
          "callbacks.progress_bar=null")  # 800 pairs / 16 = 50 steps


def logged_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


@pytest.mark.parametrize("regime", ["end_to_end", "cached_features"])
def test_first_50_losses_equal_a_hand_written_loop(make_cfg, regime):
    frozen = ("encoder.image.freeze=true", "encoder.text.freeze=true") if regime == "cached_features" else ()
    cfg = make_cfg(*PARITY, *frozen)
    results = train(cfg)
    ours = logged_losses(Path(cfg.paths.output_dir))
    theirs, _ = hand_train(cfg, STEPS, cached=bool(frozen))
    assert len(ours) == len(theirs) == STEPS
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-5, list(zip(ours, theirs))[:5]
    assert ours[0] != ours[-1]  # it trained
    if frozen:  # mmfuse read cached features: its encoders ran once per unique sample, not per step
        assert results["feature_cache"]["train"]["image"]["status"] == "built"
        assert results["encoded_samples"]["image"] == 400 + 64
