"""W&B: one offline run per job, grouped by sweep, tagged, with the resolved config, finished even on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from wandb_files import read_run

from conftest import ROOT
from mmfuse.builder import build_loggers

TINY = ("debug=fast", "data.num_train=48", "data.num_val=32", "data.num_test=16", "data.batch_size=16")
NO_CREDENTIALS = {"WANDB_API_KEY": "", "NETRC": "/nonexistent/netrc", "WANDB_MODE": "offline"}


def test_auto_mode_is_offline_without_credentials(make_cfg, monkeypatch):
    for key, value in NO_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_MODE")
    cfg = make_cfg("logger=wandb", "fusion=add", "encoder.image=resnet18")
    (logger,) = build_loggers(cfg)
    init = logger._wandb_init
    assert init["mode"] == "offline" and init["project"] == "mmfuse" and init["job_type"] == "train"
    assert init["dir"] == cfg.paths.output_dir and init["group"] == "runs"
    assert {"fusion:add", "image:resnet18", "text:tiny_text", "data:shapes", "task:itm"} <= set(init["tags"])
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    (logger,) = build_loggers(make_cfg("logger=wandb"))
    assert logger._wandb_init["mode"] == "online"


@pytest.mark.slow
def test_a_sweep_logs_one_finished_offline_run_per_job(tmp_path):
    sweep = tmp_path / "multirun" / "s1"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}  # mode auto must choose offline by itself
    env.update(NO_CREDENTIALS, MMFUSE_OUTPUTS=str(tmp_path), PYTHONPATH=str(ROOT / "tests"))
    del env["WANDB_MODE"]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "fusion=add,mul", "logger=wandb", *TINY,
                           f"hydra.sweep.dir={sweep}", "+callbacks.boom._target_=sweep_helpers.RaiseAt",
                           "+callbacks.boom.step=2", "+callbacks.boom.job=1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [line.split("wandb sync ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("[mmfuse] W&B")]
    for job, fusion, exit_code in (("0", "add", 0), ("1", "mul", 1)):
        results = json.loads((sweep / job / "results.json").read_text())
        (run_dir,) = (sweep / job / "wandb").glob("offline-run-*")  # one run per job, under the job's directory
        assert str(run_dir) in printed  # the sync command names this run
        run = read_run(run_dir)
        assert run["exit_code"] == exit_code  # finished, also the job that failed
        assert run["run"]["project"] == "mmfuse" and run["run"]["job_type"] == "train"
        assert run["run"]["group"] == "multirun/s1"  # the sweep
        assert run["run"]["name"] == f"{job}|fusion={fusion}"  # job number and the swept values
        assert {f"fusion:{fusion}", "image:tiny_cnn", "text:tiny_text", "data:shapes", "task:itm"} <= set(run["run"]["tags"])
        config = run["config"]
        assert config["fusion"]["_target_"].endswith({"add": "AddFusion", "mul": "MulFusion"}[fusion])
        assert config["optimizer"]["lr"] == 1e-3 and config["data"]["num_train"] == 48  # resolved values
        assert config["mmfuse"]["overrides"] == results["overrides"]
        assert config["mmfuse"]["run_dir"] == str((sweep / job).resolve())
        assert run["summary"]["status"] == results["status"]
        if exit_code == 0:
            logged = {k: v for row in run["history"] for k, v in row.items() if k.startswith(("val/", "test/"))}
            assert logged == pytest.approx(results["metrics"], abs=1e-6)  # the last logged values = results.json
            assert {k: run["summary"][k] for k in results["metrics"]} == pytest.approx(results["metrics"], abs=1e-6)
        else:
            assert results["status"] == "failed" and "planted failure" in results["error"]
            assert any("train/loss" in row for row in run["history"])
