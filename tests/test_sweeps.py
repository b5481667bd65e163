"""Launchers and sweepers: parallel jobs pinned to their own GPUs, SLURM submission, an Optuna study."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from filelock import FileLock
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.types import HydraContext

from conftest import ROOT, compose_config, run_cli
from mmfuse import gpu_slots

TINY = ("debug=fast", "data.num_train=48", "data.num_val=32", "data.num_test=16", "data.batch_size=16")
HELPERS = {"PYTHONPATH": str(ROOT / "tests")}


def read(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_gpus_are_cut_into_slots_and_each_worker_claims_a_free_one(tmp_path, monkeypatch):
    assert gpu_slots.device_slots(["0", "1", "2", "3"], 1) == ["0", "1", "2", "3"]
    assert gpu_slots.device_slots(["0", "1", "2", "3"], 2) == ["0,1", "2,3"]
    with pytest.raises(ValueError, match="gpus_per_job=3 does not divide the 4 GPUs"):
        gpu_slots.device_slots(["0", "1", "2", "3"], 3)
    assert gpu_slots.visible_gpus([4, 5]) == ["4", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu_slots.visible_gpus() == ["2", "3"]

    monkeypatch.setattr(gpu_slots, "_held", {})
    other_worker = FileLock(str(tmp_path / "slot0.lock"))
    other_worker.acquire()  # another process holds slot 0
    try:
        assert gpu_slots.claim_slot(["0,1", "2,3"], tmp_path) == "2,3"
        assert gpu_slots.claim_slot(["0,1", "2,3"], tmp_path) == "2,3"  # kept for the worker's life
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
        monkeypatch.setattr(gpu_slots, "_held", {})
        with pytest.raises(RuntimeError, match="all 1 GPU slots"):
            gpu_slots.claim_slot(["0,1"], tmp_path)
    finally:
        other_worker.release()


def _launcher(cfg):
    context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)
    return Plugins.instance().instantiate_launcher(hydra_context=context, task_function=lambda c: None, config=cfg)


def test_parallel_launcher_config_composes_and_sizes_its_pool(tmp_path):
    cfg = compose_config(tmp_path, ["hydra/launcher=parallel", "hydra.launcher.devices=[0,1,2,3]",
                                    "hydra.launcher.gpus_per_job=2"])
    launcher = _launcher(cfg)
    assert launcher.slots == ["0,1", "2,3"] and launcher.joblib["n_jobs"] == 2
    cfg = compose_config(tmp_path, ["hydra/launcher=parallel", "hydra.launcher.devices=[]"])
    with pytest.raises(Exception, match="found no GPUs: set hydra.launcher.n_jobs"):
        _launcher(cfg)
    GlobalHydra.instance().clear()


def test_slurm_launcher_renders_the_submission(tmp_path, monkeypatch):
    """The real hydra-submitit launcher and submitit up to sbatch: sbatch itself is replaced by a fake."""
    import submitit
    import submitit.core.core
    import submitit.core.utils

    submitted = []

    class FakeSbatch:
        def __init__(self, command, **kwargs):
            self.command = command

        def __call__(self):
            submitted.append(self.command)
            return "Submitted batch job 4242"

    monkeypatch.setattr(submitit.slurm.slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    monkeypatch.setattr(submitit.core.utils, "CommandFunction", FakeSbatch)
    monkeypatch.setattr(submitit.core.core.Job, "results", lambda self: [JobReturn()])
    cfg = compose_config(tmp_path, ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2",
                                    "hydra.launcher.timeout_min=90", "hydra.launcher.account=lab",
                                    f"hydra.sweep.dir={tmp_path / 'sweep'}", "trainer=ddp", "trainer.num_nodes=2"])
    assert cfg.trainer.num_nodes == cfg.hydra.launcher.nodes == 2
    launcher = _launcher(cfg)
    returns = launcher.launch([["fusion=add"], ["fusion=mul"]], initial_job_idx=0)
    assert len(returns) == 2 and len(submitted) == 1 and submitted[0][0] == "sbatch"
    (script,) = (tmp_path / "sweep" / ".submitit").rglob("*submission.sh")
    lines = script.read_text().splitlines()
    for expected in ("#SBATCH --partition=gpu", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8",
                     "#SBATCH --ntasks-per-node=8", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB",
                     "#SBATCH --time=90", "#SBATCH --account=lab",
                     "#SBATCH --array=0-1%2"):  # 2 jobs at once: array_parallelism 64, capped by the 2 jobs
        assert expected in lines, (expected, lines)
    assert any(line.startswith("#SBATCH --signal=USR2@") for line in lines)  # preemption -> requeue


@pytest.mark.slow
def test_parallel_launcher_runs_jobs_at_once_each_on_its_own_device(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("train.py", "-m", "hydra/launcher=parallel", "hydra.launcher.devices=[0,1]",
                   "fusion=add,mul,concat,attention", *TINY, f"hydra.sweep.dir={sweep}", outputs=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [read(sweep / str(i)) for i in range(4)]
    assert all(j["status"] == "completed" for j in jobs)
    devices = [j["host"]["cuda_visible_devices"] for j in jobs]
    assert set(devices) == {"0", "1"}  # both slots used, nothing else
    for a in jobs:  # jobs that ran at the same time never shared a device
        for b in jobs:
            if a is not b and a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]:
                assert a["host"]["cuda_visible_devices"] != b["host"]["cuda_visible_devices"]


@pytest.mark.slow
def test_optuna_study_optimises_the_results_metric_and_survives_a_failed_trial(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("train.py", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "optimized_metric=val/auroc",
                   *TINY, f"hydra.sweep.dir={sweep}", "+callbacks.boom._target_=sweep_helpers.RaiseAt",
                   "+callbacks.boom.step=1", "+callbacks.boom.job=1", outputs=tmp_path, env=HELPERS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = [read(sweep / str(i)) for i in range(3)]
    assert [t["status"] for t in trials] == ["completed", "failed", "completed"]
    assert "planted failure" in trials[1]["error"]
    # the sweeper's own log line for a trial it records as FAIL (the study went on: trial 2 ran)
    assert (proc.stdout + proc.stderr).count("Failed experiment: Return value must be float-castable. Got 'None'") == 1
    params = []
    for t in trials:
        overrides = dict(o.split("=", 1) for o in t["overrides"])
        assert 1e-4 <= float(overrides["optimizer.lr"]) <= 1e-2 and 0 <= float(overrides["optimizer.weight_decay"]) <= 0.1
        assert overrides["fusion"] in ("add", "mul", "concat", "attention")
        params.append({k: overrides[k] for k in ("optimizer.lr", "optimizer.weight_decay", "fusion")})
    # the study's best is the configured metric read from results.json, and its parameters are that job's
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    scores = [t["metrics"]["val/auroc"] if t["status"] == "completed" else None for t in trials]
    top = max((s, i) for i, s in enumerate(scores) if s is not None)
    assert best["best_value"] == top[0]
    assert {k: str(v) for k, v in best["best_params"].items()} == params[top[1]]
