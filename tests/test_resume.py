"""Resuming: a killed run ends as if never stopped; reused directories are skipped, resumed or refused."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli
from mmfuse.compare import main as compare_main
from mmfuse.errors import MMFuseError
from mmfuse.resume import compared_overrides
from mmfuse.train import train

TINY = ("debug=fast", "data.num_train=48", "data.num_val=32", "data.num_test=16", "data.batch_size=16")
HELPERS = {"PYTHONPATH": str(ROOT / "tests")}  # sweep_helpers.KillAt / RaiseAt


def read(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_compared_overrides_leave_out_what_does_not_change_the_run():
    overrides = ["fusion=add", "+callbacks.kill._target_=x.KillAt", "logger=wandb", "ckpt_path=last",
                 "data.num_workers=4", "optimizer.lr=1e-3", "callbacks=resumable"]
    assert compared_overrides(overrides) == ["fusion=add", "optimizer.lr=1e-3"]
    assert compared_overrides(["b=1", "a=2"]) == compared_overrides(["a=2", "b=1"])


def test_a_completed_run_is_skipped_an_unfinished_one_resumed_another_refused(make_cfg):
    cfg = make_cfg(*TINY, "fusion=concat")
    run_dir = Path(cfg.paths.output_dir)
    first = train(cfg)
    assert first["status"] == "completed" and first["attempt"] == 1 and "resumed_from" not in first
    on_disk = (run_dir / "results.json").read_bytes()
    mtime = os.stat(run_dir / "checkpoints" / "last.ckpt").st_mtime_ns

    again = train(make_cfg(*TINY, "fusion=concat"))  # same directory, same overrides: skipped
    assert again == first
    assert (run_dir / "results.json").read_bytes() == on_disk
    assert os.stat(run_dir / "checkpoints" / "last.ckpt").st_mtime_ns == mtime

    unfinished = {**first, "status": "running"}  # what a run killed after its last checkpoint leaves
    (run_dir / "results.json").write_text(json.dumps(unfinished))
    resumed = train(make_cfg(*TINY, "fusion=concat"))
    assert resumed["status"] == "completed" and resumed["attempt"] == 2
    assert resumed["resumed_from"] == "checkpoints/last.ckpt" and resumed["steps"] == first["steps"]
    assert resumed["metrics"] == pytest.approx(first["metrics"], abs=1e-6)
    with open(run_dir / "csv" / "metrics.attempt1.csv") as f:  # the first attempt's log, kept
        kept = list(csv.DictReader(f))
    assert [int(r["step"]) for r in kept if r.get("train/loss")] == list(range(first["steps"])) == list(range(6))

    before = (run_dir / "results.json").read_bytes()
    with pytest.raises(MMFuseError, match=r"already holds a run with overrides .*fusion=concat.* but this job's are "
                                          r".*fusion=add.* It is left as it is"):
        train(make_cfg(*TINY, "fusion=add"))
    assert (run_dir / "results.json").read_bytes() == before


def _last_step(run_dir: Path) -> tuple[int, int]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["global_step"], ckpt["epoch"]


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    """SIGKILL after step 9 of 12 (epoch 2 of 2, 6 steps per epoch); the last checkpoint is step 8,
    two batches into epoch 2. Dropout is on, so the random streams must be restored too."""
    args = [*TINY, "trainer.max_epochs=2", "trainer.deterministic=true", "seed=3", "task.dropout=0.3",
            "callbacks=resumable", "callbacks.step_checkpoint.every_n_train_steps=2"]
    ref = run_cli("train.py", *args, f"hydra.run.dir={tmp_path / 'ref'}", outputs=tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]

    run = tmp_path / "run"
    killed = run_cli("train.py", *args, f"hydra.run.dir={run}", "+callbacks.kill._target_=sweep_helpers.KillAt",
                     "+callbacks.kill.step=9", outputs=tmp_path, env=HELPERS)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert read(run)["status"] == "running"
    assert _last_step(run) == (8, 1)  # mid-epoch: 2 of the 6 batches of epoch 1 (0-based) done

    resumed = run_cli("train.py", *args, f"hydra.run.dir={run}", outputs=tmp_path)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = read(tmp_path / "ref"), read(run)
    assert got["status"] == "completed" and got["attempt"] == 2 and got["resumed_from"] == "checkpoints/last.ckpt"
    assert got["steps"] == expected["steps"] == 12
    assert got["metrics"] == expected["metrics"]  # bit for bit: deterministic mode on CPU


@pytest.mark.slow
def test_an_interrupted_sweep_rerun_skips_completed_jobs_and_resumes_the_rest(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    args = ["-m", "fusion=add,mul", "optimizer.lr=1e-2,abc", *TINY, "callbacks=resumable",
            "callbacks.step_checkpoint.every_n_train_steps=2", f"hydra.sweep.dir={sweep}"]
    # jobs: 0 add 1e-2 | 1 add abc (fails) | 2 mul 1e-2 (the sweep is killed at its step 3) | 3 never started
    first = run_cli("train.py", *args, "+callbacks.kill._target_=sweep_helpers.KillAt", "+callbacks.kill.step=3",
                    "+callbacks.kill.job=2", outputs=tmp_path, env=HELPERS)
    assert first.returncode == -9
    assert [read(sweep / j)["status"] for j in "012"] == ["completed", "failed", "running"]
    assert not (sweep / "3").exists()
    done = (sweep / "0" / "results.json").read_bytes()

    second = run_cli("train.py", *args, outputs=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "2", "3", "multirun.yaml"]
    assert (sweep / "0" / "results.json").read_bytes() == done  # skipped, untouched
    job1, job2, job3 = (read(sweep / j) for j in "123")
    assert job1["status"] == "failed" and job1["attempt"] == 2 and "optimizer.lr='abc'" in job1["error"]
    assert job2["status"] == "completed" and job2["attempt"] == 2 and job2["resumed_from"] == "checkpoints/last.ckpt"
    assert job2["steps"] == 6
    assert job3["status"] == "failed" and job3["attempt"] == 1
    assert f"[mmfuse] sweep {sweep}: 2 completed, 2 failed" in second.stdout

    assert compare_main([str(sweep)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + 4
    failed = [ln for ln in lines if "| failed |" in ln]
    assert len(failed) == 2 and all("optimizer.lr='abc' is not a number" in ln for ln in failed)
    assert lines[-1].endswith("|") and "| completed |" not in lines[-1]  # failed runs after the completed ones
