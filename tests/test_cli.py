"""The entry points as users run them: sweeps, the user's command, eval.py, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import assert_itm_metrics_add_up, assert_wall_time_is_the_runs, run_cli

TINY = ("debug=fast", "data.num_train=48", "data.num_val=32", "data.num_test=16", "data.batch_size=16")


def sweep_dirs(outputs: Path) -> list[Path]:
    return sorted((outputs / "multirun").glob("*/*"))


@pytest.mark.slow
def test_multirun_writes_one_complete_directory_per_job(tmp_path):
    proc = run_cli("train.py", "-m", "fusion=add,mul,concat,attention", "optimizer.lr=1e-3,1e-2", *TINY,
                   outputs=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = sweep_dirs(tmp_path)
    assert len(sweeps) == 1, sweeps
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert [p.name for p in jobs] == [str(i) for i in range(8)]
    combos = set()
    for job in jobs:
        for f in (".hydra/config.yaml", ".hydra/overrides.yaml", "csv/metrics.csv", "checkpoints/last.ckpt",
                  "results.json"):
            assert (job / f).is_file(), job / f
        results = json.loads((job / "results.json").read_text())
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert results["status"] == "completed" and results["steps"] == 6  # 96 pairs / 16
        assert_wall_time_is_the_runs(results)
        assert results["overrides"] == overrides
        assert results["data"]["val"]["pairs"] == 64 and sum(results["data"]["val"]["pair_types"].values()) == 64
        for split in ("val", "test"):
            assert_itm_metrics_add_up(results["metrics"], results["data"][split]["pair_types"], split)
        combos.add((results["choices"]["fusion"], next(o for o in overrides if o.startswith("optimizer.lr"))))
    assert len(combos) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "multirun"]


@pytest.mark.slow
def test_users_command_selects_groups_in_a_sweep_and_eval_reproduces_a_job(tmp_path):
    proc = run_cli("train.py", "-m", "fusion=attention", "encoder.image=resnet18,resnet50", *TINY, outputs=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep_dirs(tmp_path)[0].iterdir() if p.is_dir())
    for job, arch in zip(jobs, ("resnet18", "resnet50")):
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert config["encoder"]["image"]["arch"] == arch
        assert config["fusion"]["_target_"].endswith("AttentionFusion")
        assert config["encoder"]["text"]["_target_"].endswith("TinyTextTransformer")

    job = jobs[1]
    trained = json.loads((job / "results.json").read_text())
    proc = run_cli("eval.py", f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}", outputs=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = dict(line.split() for line in proc.stdout.splitlines() if line.startswith("  val/"))
    assert printed and set(printed) == {k for k in trained["metrics"] if k.startswith("val/")}
    for key, value in printed.items():
        assert value == f"{trained['metrics'][key]:.4f}", key
    evaluated = json.loads(next((tmp_path / "eval").glob("*/*/results.json")).read_text())
    assert evaluated["metrics"]["val/acc"] == pytest.approx(trained["metrics"]["val/acc"], abs=1e-6)


def test_misspelt_option_fails_at_once_with_the_options(tmp_path):
    proc = run_cli("train.py", "fusion=atention", outputs=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "Could not find 'fusion/atention'" in proc.stderr and "\tattention" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_values_end_with_one_clear_line(tmp_path):
    proc = run_cli("train.py", "optimizer.lr=abc", *TINY, outputs=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "mmfuse: error: optimizer.lr='abc' is not a number: give a number, e.g. optimizer.lr=1e-3" in proc.stderr

    proc = run_cli("eval.py", "ckpt_path=/no/such/last.ckpt", outputs=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "mmfuse: error: ckpt_path=/no/such/last.ckpt: no such file" in proc.stderr
