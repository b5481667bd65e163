"""Issue 13 (audit): eval.py carries the training run's data settings."""

from __future__ import annotations

from pathlib import Path

from conftest import FAST
from mmfuse.evaluate import carried_section, evaluate
from mmfuse.train import train


# -- eval.py: the training run's data settings -----------------------------------------------------------
def test_eval_of_a_debug_fast_run_evaluates_the_runs_data_and_gets_its_metrics(make_cfg):
    trained = train(make_cfg(*FAST, subdir="train"))
    ckpt = Path(trained["run_dir"]) / "checkpoints" / "last.ckpt"
    evaluated = evaluate(make_cfg(f"ckpt_path={ckpt}", subdir="eval", config_name="eval"))
    assert evaluated["data"]["val"] == trained["data"]["val"]
    assert evaluated["data"]["val"]["images"] == 128  # debug=fast's data.num_val, not the default 2,000
    val = {k: v for k, v in trained["metrics"].items() if k.startswith("val/")}
    assert {k: v for k, v in evaluated["metrics"].items() if k.startswith("val/")} == val
    # the user's data overrides still win: other scenes of the same kind and size
    other = evaluate(make_cfg(f"ckpt_path={ckpt}", "data.seed=5", "data.num_val=64", subdir="eval2",
                              config_name="eval"))
    assert other["data"]["val"]["images"] == 64 and other["data"]["train"]["images"] == 256  # debug=fast's
    assert other["metrics"]["val/loss"] != trained["metrics"]["val/loss"]


def test_carried_section_keeps_saved_values_under_the_users_keys_and_rederives_interpolations():
    saved = {"num_val": 128, "seed": 0, "cache_dir": "/train/cache/shapes", "negatives": {"color": 1.0, "shape": 1.0},
             "extra": 3}
    composed = {"num_val": 2000, "seed": 5, "cache_dir": "${paths.cache_dir}/shapes",
                "negatives": {"color": 0.0, "shape": 1.0}, "extra": 3}
    out = carried_section("data", composed, saved, ["data.seed=5", "data.negatives.color=0", "~data.extra",
                                                    "fusion=add"])
    assert out == {"num_val": 128, "seed": 5, "cache_dir": "${paths.cache_dir}/shapes",
                   "negatives": {"color": 0.0, "shape": 1.0}}
    assert saved["negatives"]["color"] == 1.0  # the checkpoint's config is not modified
