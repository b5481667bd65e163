"""Issue 13, changes across the entry points: a run's disk usage in ``results.json``; SIGTERM to a DDP job
ends it interrupted (143, the resume command); eval records interruptions and wrapped user errors like
train and finds config groups of one's own folder; a sweep report counts corrupt records; the ranks'
clock starts with the job's."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from conftest import CONF_DIR, FAST
from mmfuse import distributed
from mmfuse import evaluate as evaluate_module
from mmfuse.cli import run_entry
from mmfuse.distributed import RankPlan, run_ranks
from mmfuse.errors import MMFuseError, RunInterrupted
from mmfuse.evaluate import _quoted, evaluate, searchpath_override
from mmfuse.results import JOB_STARTED_ENV, RunRecord, utc_time
from mmfuse.sweeps import SweepReport, job_statuses
from mmfuse.train import train

TESTS = str(Path(__file__).resolve().parent)
TINY = ("debug=fast", "data.num_train=48", "data.num_val=32", "data.num_test=16")


def val_metrics(results: dict) -> dict:
    return {k: v for k, v in results["metrics"].items() if k.startswith("val/")}


# -- results.json: disk ------------------------------------------------------------------------------------
def test_a_completed_run_records_the_bytes_of_its_checkpoints(make_cfg):
    results = train(make_cfg(*FAST))
    run_dir = Path(results["run_dir"])
    checkpoints = sum(p.lstat().st_size for p in (run_dir / "checkpoints").rglob("*") if p.is_file())
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert sorted(on_disk["disk"]) == ["checkpoints", "other"]
    assert on_disk["disk"]["checkpoints"] == results["disk"]["checkpoints"] == checkpoints
    assert checkpoints > (run_dir / "checkpoints" / "last.ckpt").stat().st_size  # with its sha256 file


# -- SIGTERM to a DDP job's supervisor ------------------------------------------------------------------------
def test_the_supervisors_sigterm_stops_the_ranks_then_raises_run_interrupted():
    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(RunInterrupted) as stopped, distributed._forward_sigterm([rank]):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises here
    finally:
        rank.kill()
        rank.wait()
    assert (stopped.value.signal_name, stopped.value.exit_code) == ("SIGTERM", 143)
    assert rank.returncode == -signal.SIGTERM  # passed on, not killed
    assert signal.getsignal(signal.SIGTERM) is previous


def stopped_by_sigterm(cfg) -> None:
    """A rank's job function that a SIGTERM stopped (``train`` raises this inside ``interrupt_on_signals``)."""
    raise RunInterrupted(signal.SIGTERM)


def test_a_rank_stopped_by_sigterm_exits_with_143(make_cfg):
    cfg = make_cfg(*TINY)
    payload = pickle.dumps({"fn": f"{__name__}:stopped_by_sigterm", "task": cfg, "hydra": HydraConfig.instance().cfg})
    env = {**distributed.rank_env(0, 1, 29500), "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "mmfuse.distributed"], input=payload, env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == 143, proc.stderr.decode()[-3000:]
    assert b"Traceback" not in proc.stderr + proc.stdout


class SignalSupervisorAt(L.Callback):
    """On rank 0, after optimizer step ``step``, send SIGTERM to the supervisor (the parent process), once."""

    def __init__(self, step: int) -> None:
        self.step, self.sent = int(step), False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero and not self.sent:
            self.sent = True
            os.kill(os.getppid(), signal.SIGTERM)
            time.sleep(30)  # the forwarded SIGTERM raises here


@pytest.mark.slow
def test_sigterm_to_a_ddp_job_records_it_interrupted_and_exits_143_with_the_resume_command(
        make_cfg, monkeypatch, capfd):
    overrides = ("trainer=ddp_cpu", *TINY, f"+callbacks.sig._target_={__name__}.SignalSupervisorAt",
                 "+callbacks.sig.step=1")
    cfg = make_cfg(*overrides)
    run = Path(cfg.paths.output_dir)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(sys, "argv", ["train.py", *overrides])
    with pytest.raises(SystemExit) as stopped:
        run_entry(train, cfg)
    assert stopped.value.code == 143
    results = json.loads((run / "results.json").read_text())
    assert (results["status"], results["error"], results["signal"]) == ("interrupted", "RunInterrupted: SIGTERM",
                                                                      "SIGTERM")
    err = capfd.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("mmfuse:")] == [
        f"mmfuse: interrupted by SIGTERM; {run}/results.json says interrupted (the run starts again: no checkpoint yet)",
        f"mmfuse: resume with: python train.py {shlex.join(overrides)} hydra.run.dir={run}",
    ]
    [rank0] = run.glob("*_rank0.log")
    assert "rank 0 failed" not in rank0.read_text() and "Traceback" not in rank0.read_text()


# -- the ranks' clock is the job's -----------------------------------------------------------------------------
def test_a_run_record_started_by_a_supervisor_times_the_whole_job(tmp_path, monkeypatch):
    started = time.time() - 30
    monkeypatch.setenv(JOB_STARTED_ENV, repr(started))
    record = RunRecord(tmp_path)
    assert record.data["started_at"] == utc_time(started)
    finished = record.finish("completed")
    assert 30 <= finished["wall_time_s"] < 40
    monkeypatch.delenv(JOB_STARTED_ENV)
    assert RunRecord(tmp_path / "alone").finish("completed")["wall_time_s"] < 10  # its own start


def test_run_ranks_gives_each_rank_the_jobs_start_time(make_cfg, monkeypatch):
    cfg = make_cfg("trainer=ddp_cpu", *TINY)
    envs = []

    class Started(Exception):
        pass

    def popen(*args, env, **kwargs):
        envs.append(env)
        raise Started

    monkeypatch.setattr(distributed.subprocess, "Popen", popen)
    before = time.time()
    with pytest.raises(Started):
        run_ranks(train, cfg, RankPlan(processes=2))
    assert before <= float(envs[0][JOB_STARTED_ENV]) <= time.time()


# -- eval.py: how a run ended -----------------------------------------------------------------------------------
def _eval_that_raises(make_cfg, monkeypatch, exc: BaseException) -> tuple[BaseException, dict]:
    def load_checkpoint(path, **kwargs):
        raise exc

    monkeypatch.setattr(evaluate_module, "load_checkpoint", load_checkpoint)
    cfg = make_cfg("ckpt_path=/nowhere/last.ckpt", config_name="eval")
    with pytest.raises(BaseException) as raised:
        evaluate(cfg)
    return raised.value, json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())


def test_an_interrupted_eval_is_recorded_interrupted_with_its_signal(make_cfg, monkeypatch):
    raised, results = _eval_that_raises(make_cfg, monkeypatch, RunInterrupted(signal.SIGINT))
    assert isinstance(raised, RunInterrupted)
    assert (results["status"], results["kind"], results["error"], results["signal"]) == (
        "interrupted", "eval", "RunInterrupted: SIGINT", "SIGINT")


def test_an_eval_user_error_wrapped_by_instantiate_is_recorded_as_the_user_error(make_cfg, monkeypatch):
    try:
        try:
            raise MMFuseError("data.root=/x: no such folder. Fix: data.root=<a folder>")
        except MMFuseError as e:
            raise InstantiationException("Error in call to target 'X'") from e
    except InstantiationException as e:
        wrapped = e
    _, results = _eval_that_raises(make_cfg, monkeypatch, wrapped)
    assert (results["status"], results["error"]) == (
        "failed", "MMFuseError: data.root=/x: no such folder. Fix: data.root=<a folder>")


# -- eval.py: config groups of one's own folder ------------------------------------------------------------------
@pytest.mark.parametrize("path", ["file:///my/conf", "/a b/it's", "end\\", "a\\'b", "x]y,z"])
def test_a_search_path_entry_is_quoted_for_hydras_override_grammar(path):
    (override,) = OverridesParser.create().parse_overrides([f"hydra.searchpath=[{_quoted(path)},{_quoted(path)}]"])
    assert override.value() == [path, path]


def test_the_eval_search_path_is_the_eval_commands_then_the_training_runs(make_cfg, tmp_path):
    (tmp_path / "eval_conf").mkdir()
    ours, theirs = f"file://{tmp_path}/eval_conf", f"file://{tmp_path}/train_conf"
    make_cfg(f"hydra.searchpath=[{ours}]", config_name="eval")
    assert searchpath_override([theirs, ours]) == [f"hydra.searchpath=['{ours}','{theirs}']"]
    make_cfg(subdir="plain", config_name="eval")
    assert searchpath_override([]) == []


def test_eval_finds_a_fusion_from_the_training_runs_own_config_folder(make_cfg, tmp_path):
    mine = tmp_path / "mine" / "conf" / "fusion"
    mine.mkdir(parents=True)
    (mine / "my_add.yaml").write_text((CONF_DIR / "fusion" / "add.yaml").read_text())
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'mine' / 'conf'}]"
    trained = train(make_cfg(*TINY, searchpath, "fusion=my_add", subdir="train"))
    assert trained["choices"]["fusion"] == "my_add"
    ckpt = Path(trained["run_dir"]) / "checkpoints" / "last.ckpt"
    evaluated = evaluate(make_cfg(f"ckpt_path={ckpt}", subdir="eval", config_name="eval"))  # no search path given
    assert val_metrics(evaluated) == val_metrics(trained)


# -- sweep report --------------------------------------------------------------------------------------------
def test_a_sweep_report_counts_a_corrupt_record_as_corrupt(tmp_path, capsys):
    for job, text in [("0", '{"status": "completed"}'), ("1", '{"status": "compl'), ("2", "[1]"), ("3", None)]:
        (tmp_path / job).mkdir()
        if text is not None:
            (tmp_path / job / "results.json").write_text(text)
    assert job_statuses(tmp_path) == Counter({"completed": 1, "corrupt": 2, "missing": 1})
    SweepReport().on_multirun_end(config=_sweep_config(tmp_path))
    assert capsys.readouterr().out.splitlines()[0] == f"[mmfuse] sweep {tmp_path}: 1 completed, 2 corrupt, 1 missing"


def _sweep_config(sweep_dir: Path):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})


def test_after_a_terminals_ctrl_c_the_supervisor_waits_before_signalling_the_ranks_again():
    """A terminal's Ctrl-C reaches the ranks too; the supervisor's own SIGINT to them would be their second
    (rank 0: "already stopping"; a third aborts it). Ranks that end within ``settle_s`` get no signal."""
    from mmfuse.distributed import _stop

    quick = subprocess.Popen(["sleep", "0.3"])
    _stop([quick], signal.SIGINT, grace_s=5, settle_s=5)
    assert quick.returncode == 0  # ended by itself: not signalled
    stuck = subprocess.Popen(["sleep", "60"])
    _stop([stuck], signal.SIGINT, grace_s=5, settle_s=0.2)
    assert stuck.returncode == -signal.SIGINT
