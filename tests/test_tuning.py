"""hparams_search=per_fusion: each fusion searched on val (never the test split), its best point retrained
with seeds and tested; compare reads the final runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import run_cli
from mmfuse.compare import main as compare_main
from mmfuse.errors import MMFuseError
from mmfuse.tuning import arm_name, check_no_overlap, flatten_grid, grid_points, resolve_direction, select

TINY = ("debug=fast", "data.num_train=48", "data.num_val=32", "data.num_test=32", "data.batch_size=16")


def test_the_grid_its_selection_and_the_names():
    grid = flatten_grid({"optimizer": {"lr": [1e-3, 1e-2], "weight_decay": [0.0, 0.1]}})
    assert grid == {"optimizer.lr": [1e-3, 1e-2], "optimizer.weight_decay": [0.0, 0.1]}
    assert grid_points(grid) == [["optimizer.lr=0.001", "optimizer.weight_decay=0.0"],
                                 ["optimizer.lr=0.001", "optimizer.weight_decay=0.1"],
                                 ["optimizer.lr=0.01", "optimizer.weight_decay=0.0"],
                                 ["optimizer.lr=0.01", "optimizer.weight_decay=0.1"]]
    assert select([0.6, None, 0.8, 0.8, math.nan], "max") == 2  # failed runs left out, ties to the first
    assert select([0.6, None, 0.8, 0.5], "min") == 3
    assert select([None, math.nan], "max") is None
    assert resolve_direction("auto", "val/loss") == "min" and resolve_direction("auto", "val/acc") == "max"
    assert arm_name(["fusion=add", "encoder.image=resnet18"]) == "add-resnet18"
    with pytest.raises(MMFuseError, match="must be a non-empty list"):
        grid_points({"optimizer.lr": 1e-3})
    with pytest.raises(MMFuseError, match="optimizer.lr is searched by hparams_search=per_fusion"):
        check_no_overlap(["optimizer.lr"], ["fusion=add", "optimizer.lr=1e-3"])
    with pytest.raises(MMFuseError, match="sets the seeds itself"):
        check_no_overlap(["optimizer.lr"], ["seed=1,2"])


@pytest.fixture(scope="module")
def tuned_sweep(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("tuning")
    sweep = out / "sweep"
    args = ("-m", *TINY, "fusion=add,mul", "hparams_search=per_fusion", "hydra.sweeper.grid.optimizer.lr=[0.0,1e-2]",
            "~hydra.sweeper.grid.optimizer.weight_decay", "hydra.sweeper.seeds=[3,4]", f"hydra.sweep.dir={sweep}",
            "callbacks.progress_bar=null")
    done = run_cli("train.py", *args, outputs=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep, done.stdout


@pytest.mark.slow  # one sweep of 8 tiny runs (~45 s on 2 cores), shared by the module's tests
def test_each_fusion_gets_the_best_val_point_retrained_with_seeds_and_tested(tuned_sweep):
    sweep, stdout = tuned_sweep
    tuning = json.loads((sweep / "tuning.json").read_text())
    assert tuning["grid"] == {"optimizer.lr": [0.0, 0.01]} and tuning["seeds"] == [3, 4]
    assert [a["name"] for a in tuning["arms"]] == ["add", "mul"]
    for arm in tuning["arms"]:
        scores = []
        for k, search in enumerate(arm["search"]):
            results = json.loads((sweep / "tune" / arm["name"] / str(k) / "results.json").read_text())
            assert search["score"] == results["metrics"]["val/acc"]
            assert search["ended_by"] == results["ended_by"] == "max_epochs"
            assert "seed=0" in results["overrides"] and "test=false" in results["overrides"]
            assert not any(m.startswith("test/") for m in results["metrics"])  # the test split is never evaluated
            assert not (sweep / "tune" / arm["name"] / str(k) / "predictions" / "test.npz").exists()
            scores.append(search["score"])
        best = select(scores, "max")
        assert arm["best"]["index"] == best and arm["best"]["overrides"] == arm["search"][best]["overrides"]
        assert arm["final"] == [f"final/{arm['name']}/seed3", f"final/{arm['name']}/seed4"]
        for seed, final in zip((3, 4), arm["final"]):
            results = json.loads((sweep / final / "results.json").read_text())
            assert set(arm["best"]["overrides"]) <= set(results["overrides"])
            assert f"seed={seed}" in results["overrides"] and "test=true" in results["overrides"]
            assert "test/acc" in results["metrics"] and results["predictions"]["test"] == "predictions/test.npz"
    assert f"python -m mmfuse.compare {sweep} --metric test/acc --ci 0.95" in stdout


@pytest.mark.slow  # one sweep of 8 tiny runs (~45 s on 2 cores), shared by the module's tests
def test_compare_reads_the_final_runs_grouped_by_fusion(tuned_sweep, capsys):
    sweep, _ = tuned_sweep
    assert compare_main([str(sweep), "--metric", "test/acc", "--ci", "0.95", "--test", "welch", "--baseline", "mul",
                         "--no-plot", "--out", str(sweep.parent / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "4 runs, 4 with test/acc" in printed and "optimizer.lr chosen on val per row" in printed
    stats = json.loads((sweep.parent / "cmp" / "compare_stats.json").read_text())
    assert sorted((r["group"]["fusion"], list(r["group"]), r["n"]) for r in stats["rows"]) == [
        ("add", ["fusion"], 2), ("mul", ["fusion"], 2)]


@pytest.mark.slow  # one sweep of 8 tiny runs (~45 s on 2 cores), shared by the module's tests
def test_a_key_set_twice_is_refused_and_a_rerun_skips_every_job(tuned_sweep):
    sweep, _ = tuned_sweep
    before = (sweep / "tuning.json").read_text()
    args = ("-m", *TINY, "fusion=add,mul", "hparams_search=per_fusion", "hydra.sweeper.grid.optimizer.lr=[0.0,1e-2]",
            "~hydra.sweeper.grid.optimizer.weight_decay", "hydra.sweeper.seeds=[3,4]", f"hydra.sweep.dir={sweep}",
            "callbacks.progress_bar=null")
    again = run_cli("train.py", *args, outputs=sweep.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skipped") >= 8 or again.stderr.count("skipped") >= 8
    assert json.loads((sweep / "tuning.json").read_text())["arms"] == json.loads(before)["arms"]
    bad = run_cli("train.py", "-m", *TINY, "fusion=add", "optimizer.lr=1e-3", "hparams_search=per_fusion",
                  f"hydra.sweep.dir={sweep.parent / 'bad'}", outputs=sweep.parent)
    assert bad.returncode != 0
    assert "optimizer.lr is searched by hparams_search=per_fusion" in bad.stderr


def test_the_command_line_wins_over_an_experiments_sweeper_params():
    from types import SimpleNamespace

    from hydra_plugins.mmfuse_sweepers.per_fusion import PerFusionSweeper

    sweeper = PerFusionSweeper(grid={"optimizer": {"lr": [1e-3, 1e-2]}}, params={"fusion": "add,mul,concat", "seed": "1,2"})
    sweeper.hydra_context = SimpleNamespace(config_loader=None)
    arms, fixed = sweeper._arms_and_fixed(["fusion=late,mul", "data.num_train=10"])
    assert arms == [["fusion=late"], ["fusion=mul"]] and fixed == ["data.num_train=10"] and sweeper.seeds == [1, 2]
    clash = PerFusionSweeper(grid={"optimizer": {"lr": [1e-3]}}, params={"optimizer.lr": "1e-3,1e-2"})
    clash.hydra_context = SimpleNamespace(config_loader=None)
    with pytest.raises(MMFuseError, match="optimizer.lr is searched by hparams_search=per_fusion"):
        clash._arms_and_fixed(["fusion=add"])


@pytest.mark.slow  # shares the module's sweep
def test_compare_finds_the_tuning_record_from_above_or_below_the_sweep(tuned_sweep):
    from mmfuse.compare.runs import collect

    sweep, _ = tuned_sweep
    for where in (sweep.parent, sweep / "final"):
        runs = collect([where])
        assert len(runs) == 4 and all(r.tuned == ("optimizer.lr",) for r in runs)
        assert all("/final/" in r.source for r in runs)
