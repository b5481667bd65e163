"""Training and evaluation in-process: learning, reproducibility, results.json, checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from conftest import FAST, assert_itm_metrics_add_up, assert_wall_time_is_the_runs
from mmfuse.evaluate import evaluate, merge_overrides
from mmfuse.train import train

SMALL = (*FAST, "data.num_train=1500", "data.num_val=300", "trainer.max_epochs=3")


def read_csv(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_short_run_improves_the_loss_and_writes_a_complete_run_dir(make_cfg):
    cfg = make_cfg(*SMALL)
    results = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    losses = [float(r["train/loss"]) for r in read_csv(run_dir) if r.get("train/loss")]
    assert len(losses) == results["steps"] == 3 * 47  # 3000 pairs / 64 per step, logged every step
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.05, (first, last)
    assert results["metrics"]["val/loss"] < 0.68  # chance is ln 2 = 0.693
    # chance is 0.5 for both; on the CPU at seed 42: acc 0.690 / 0.693, auroc 0.750 (1 / 2 threads)
    assert results["metrics"]["val/acc"] > 0.6 and results["metrics"]["val/auroc"] > 0.7
    # run directory contract
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["kind"] == "train"
    assert on_disk["overrides"] == list(SMALL)
    assert on_disk["choices"]["fusion"] == "mul" and on_disk["choices"]["encoder.image"] == "tiny_cnn"
    assert on_disk["checkpoint"] == "checkpoints/last.ckpt"
    assert_wall_time_is_the_runs(on_disk)
    assert sorted(on_disk["metrics"]) == sorted(f"{split}/{name}" for split in ("val", "test") for name in (
        "loss", "acc", "auroc", "f1", "acc_positive", "acc_other", "acc_color", "acc_shape",
        "j_other", "j_color", "j_shape"))
    m = on_disk["metrics"]
    for t in ("other", "color", "shape"):  # Youden's J of each negative type
        assert m[f"val/j_{t}"] == pytest.approx(m["val/acc_positive"] + m[f"val/acc_{t}"] - 1, abs=1e-6)
    # the exact values move with the thread count (3 epochs of float32 sums): their consistency does not
    assert on_disk["data"]["val"]["pair_types"] == {"positive": 300, "other": 99, "color": 101, "shape": 100}
    for split in ("val", "test"):
        assert_itm_metrics_add_up(on_disk["metrics"], on_disk["data"][split]["pair_types"], split)
    assert on_disk["data"]["train"]["pairs"] == 3000
    params = on_disk["params"]
    assert params["fusion"] == 2 * (64 * 256 + 256)  # mul: two 64 -> 256 projections
    assert params["head"] == 256 * 256 + 256 + 256 + 1  # mlp: 256 -> 256 -> 1
    assert (params["image_encoder"], params["text_encoder"]) == (61152, 330752)  # tiny_cnn, tiny_text
    assert params["trainable"] == params["total"] == sum(params[k] for k in ("fusion", "head", "image_encoder",
                                                                               "text_encoder")) == 491233


def test_same_seed_same_metrics_other_seed_other_metrics(make_cfg):
    a = train(make_cfg(*FAST, "seed=7", subdir="a"))["metrics"]
    b = train(make_cfg(*FAST, "seed=7", subdir="b"))["metrics"]
    c = train(make_cfg(*FAST, "seed=8", subdir="c"))["metrics"]
    assert a == b
    assert a != c


def test_last_checkpoint_holds_the_final_weights(make_cfg):
    """Not the last epoch that improved the monitored metric: the final one (Lightning's save_last
    alone rewrites last.ckpt only in epochs that save a top-k checkpoint)."""
    import torch

    cfg = make_cfg(*FAST, "trainer.max_epochs=4", "test=false", "optimizer.lr=0.3")  # lr too high: no steady gains
    results = train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / results["checkpoint"], map_location="cpu", weights_only=True)
    assert results["checkpoint"] == "checkpoints/last.ckpt"
    assert ckpt["global_step"] == results["steps"] == 4 * 8 and ckpt["epoch"] == 3  # 512 pairs / 64
    assert results["best_checkpoint"] == "checkpoints/best.ckpt"


def test_eval_rebuilds_the_model_from_the_checkpoint_alone(make_cfg):
    cfg = make_cfg(*FAST, "fusion=concat", "data.num_val=200", "trainer.max_epochs=3", subdir="train")
    trained = train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    # the eval command knows nothing of fusion=concat: the checkpoint does
    ecfg = make_cfg(f"ckpt_path={ckpt}", subdir="eval", config_name="eval")
    evaluated = evaluate(ecfg)
    val = {k: v for k, v in trained["metrics"].items() if k.startswith("val/")}
    assert {k: v for k, v in evaluated["metrics"].items() if k.startswith("val/")} == pytest.approx(val, abs=1e-6)
    assert json.loads((Path(ecfg.paths.output_dir) / "results.json").read_text())["kind"] == "eval"
    # other data of the same kind: same model, another set of scenes
    other = evaluate(make_cfg(f"ckpt_path={ckpt}", "data.seed=5", subdir="eval2", config_name="eval"))
    # (the loss: after 8 steps the model's accuracy can sit at the same count on both sets)
    assert other["metrics"]["val/loss"] != trained["metrics"]["val/loss"]
    assert other["data"]["val"]["images"] == 200  # data.num_val=200 inherited from training


def test_merge_overrides_user_wins_and_group_switch_drops_its_keys():
    saved = ["fusion=concat", "data.num_val=200", "hydra.run.dir=x", "debug=fast", "optimizer.lr=0.1"]
    assert merge_overrides(saved, ["data.seed=5"]) == ["fusion=concat", "data.num_val=200", "optimizer.lr=0.1", "data.seed=5"]
    assert merge_overrides(saved, ["data.num_val=10"]) == ["fusion=concat", "optimizer.lr=0.1", "data.num_val=10"]
    assert merge_overrides(saved, ["data=shapes"]) == ["fusion=concat", "optimizer.lr=0.1", "data=shapes"]


def test_resume_from_a_missing_checkpoint_is_a_clear_error(make_cfg):
    from mmfuse.errors import MMFuseError

    cfg = make_cfg(*FAST, "ckpt_path=/does/not/exist.ckpt")
    with pytest.raises(MMFuseError, match="does not exist"):
        train(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["status"] == "failed" and "does not exist" in results["error"]


def test_non_numeric_learning_rate_fails_before_training(make_cfg):
    from mmfuse.errors import MMFuseError

    cfg = make_cfg(*FAST)
    with open_dict(cfg):
        cfg.optimizer.lr = "abc"
    with pytest.raises(MMFuseError, match=r"optimizer.lr='abc' is not a number"):
        train(cfg)


def test_init_from_starts_from_the_checkpoint_weights_and_nothing_else(make_cfg):
    source_cfg = make_cfg(*FAST, "trainer.max_epochs=3", "test=false", subdir="source")
    source = train(source_cfg)
    ckpt = Path(source_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    # no training step: the validation of the loaded weights is the source's final validation
    started = train(make_cfg(*FAST, f"init_from={ckpt}", "trainer.max_epochs=0", "test=false", subdir="init"))
    fresh = train(make_cfg(*FAST, "trainer.max_epochs=0", "test=false", subdir="fresh"))
    assert started["metrics"]["val/loss"] == pytest.approx(source["metrics"]["val/loss"], abs=1e-6)
    assert started["metrics"]["val/acc"] == pytest.approx(source["metrics"]["val/acc"], abs=1e-6)
    assert abs(fresh["metrics"]["val/loss"] - source["metrics"]["val/loss"]) > 1e-3
    assert started["init_from"] == str(ckpt) and started["steps"] == 0  # counters start afresh


def test_init_from_a_checkpoint_of_another_model_names_the_difference(make_cfg):
    from mmfuse.errors import MMFuseError

    source_cfg = make_cfg(*FAST, "fusion=concat", "trainer.max_epochs=1", "test=false", subdir="source")
    train(source_cfg)
    ckpt = Path(source_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(MMFuseError, match=r"init_from=.*do not fit this model.*fusion=concat"):
        train(make_cfg(*FAST, f"init_from={ckpt}", subdir="other"))
    with pytest.raises(MMFuseError, match=r"init_from=/no/such.ckpt: no such file"):
        train(make_cfg(*FAST, "init_from=/no/such.ckpt", subdir="missing"))
