"""Issue 13, entry points and run lifecycle: signals, wrapped user errors, corrupt and in-progress
``results.json``, file modes, validation, start-up imports, ``train.log``."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import lightning as L
import pytest
from hydra.errors import InstantiationException

from conftest import CONF_DIR, FAST, ROOT, run_cli
from mmfuse.cli import run_entry
from mmfuse.data.atomic import atomic_torch_save, atomic_write_json
from mmfuse.errors import MMFuseError, RunInterrupted, user_error
from mmfuse.interrupts import rerun_command
from mmfuse.results import CorruptRecord, read_results
from mmfuse.train import train
from mmfuse.validate import validate_train_config

TESTS = str(Path(__file__).resolve().parent)


class SignalAt(L.Callback):
    """Send ``signum`` to this process after optimizer step ``step`` (as ``kill`` or Ctrl-C would); with a
    ``marker`` file, only once (the marker is created)."""

    def __init__(self, signum: int, step: int, marker: str | None = None) -> None:
        self.signum, self.step, self.marker = int(signum), int(step), marker and Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not (self.marker and self.marker.exists()):
            if self.marker:
                self.marker.touch()
            os.kill(os.getpid(), self.signum)
            time.sleep(5)  # the handler raises here, as soon as the signal is delivered


class PauseOnce(L.Callback):
    """After optimizer step ``step``, create ``marker`` and wait (for a signal); not again once it exists."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = int(step), Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.touch()
            for _ in range(600):
                time.sleep(0.5)


# ---- signals ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_run_interrupted_with_128_plus_its_number_and_the_resume_command(
        make_cfg, monkeypatch, capsys, signum):
    name = signal.Signals(signum).name
    overrides = (*FAST, "+callbacks.sig._target_=test_audit_entry.SignalAt", f"+callbacks.sig.signum={int(signum)}",
                 "+callbacks.sig.step=2")
    cfg = make_cfg(*overrides)
    run = Path(cfg.paths.output_dir)
    monkeypatch.setattr(sys, "argv", ["train.py", *overrides])
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(SystemExit) as stopped:
        run_entry(train, cfg)
    assert stopped.value.code == 128 + signum  # 143 / 130
    results = json.loads((run / "results.json").read_text())
    assert (results["status"], results["error"], results["signal"]) == ("interrupted", f"RunInterrupted: {name}", name)
    assert results["finished_at"] is not None and results["metrics"] == {}
    assert capsys.readouterr().err.splitlines() == [
        f"mmfuse: interrupted by {name}; {run}/results.json says interrupted (the run starts again: no checkpoint yet)",
        f"mmfuse: resume with: python train.py {shlex.join(overrides)} hydra.run.dir={run}",
    ]
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # restored


def test_train_in_process_raises_run_interrupted(make_cfg):
    cfg = make_cfg(*FAST, "+callbacks.sig._target_=test_audit_entry.SignalAt", f"+callbacks.sig.signum={int(signal.SIGTERM)}",
                   "+callbacks.sig.step=1")
    with pytest.raises(RunInterrupted) as stopped:
        train(cfg)
    assert (stopped.value.signal_name, stopped.value.exit_code) == ("SIGTERM", 143)


def test_the_rerun_command_pins_the_run_or_sweep_directory_and_quotes_for_the_shell():
    argv = ["train.py", "fusion=add", "hydra.run.dir=outputs/old", "+data.name=a b", "++hydra.sweep.dir=x"]
    assert rerun_command("/runs/r 1", argv=argv) == \
        "python train.py fusion=add '+data.name=a b' 'hydra.run.dir=/runs/r 1'"
    sweep = ["/src/train.py", "-m", "fusion=add,mul", "hydra.sweep.dir=outputs/multirun/x"]
    assert rerun_command("/s/1", sweep_dir="/s", argv=sweep) == "python /src/train.py -m fusion=add,mul hydra.sweep.dir=/s"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended ({proc.returncode}) before {path}: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_cli_run_records_it_and_its_printed_command_resumes_it(tmp_path, signum):
    """While it runs, ``results.json`` says so (exactly); a signal from outside ends it with 128 + signum and
    the command that resumes it; that command resumes from the step checkpoint and completes the run."""
    name = signal.Signals(signum).name
    run, marker = tmp_path / "run", tmp_path / "paused"
    overrides = [*FAST, "callbacks=resumable", "callbacks.step_checkpoint.every_n_train_steps=2",
                 "+callbacks.pause._target_=test_audit_entry.PauseOnce", "+callbacks.pause.step=3",
                 f"+callbacks.pause.marker={marker}"]
    env = {**os.environ, "MMFUSE_OUTPUTS": str(tmp_path), "HYDRA_FULL_ERROR": "0",
           "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    before = datetime.now(timezone.utc).replace(microsecond=0)
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run}"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(marker, proc)

    running = json.loads((run / "results.json").read_text())
    started = datetime.fromisoformat(running["started_at"])
    assert started.tzinfo == timezone.utc and before <= started <= datetime.now(timezone.utc) + timedelta(seconds=1)
    assert {k: running[k] for k in ("status", "kind", "finished_at", "wall_time_s", "metrics", "error", "run_dir",
                                    "overrides", "attempt")} == {
        "status": "running", "kind": "train", "finished_at": None, "wall_time_s": None, "metrics": {},
        "error": None, "run_dir": str(run), "overrides": overrides, "attempt": 1}
    assert "signal" not in running and "checkpoint" not in running

    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]
    interrupted = json.loads((run / "results.json").read_text())
    assert (interrupted["status"], interrupted["error"], interrupted["signal"]) == (
        "interrupted", f"RunInterrupted: {name}", name)
    lines = [ln for ln in err.splitlines() if ln.startswith("mmfuse:")]
    command = f"python {ROOT / 'train.py'} {shlex.join(overrides)} hydra.run.dir={run}"
    assert lines == [f"mmfuse: interrupted by {name}; {run}/results.json says interrupted (the run resumes from "
                     "checkpoints/last.ckpt)", f"mmfuse: resume with: {command}"], err[-3000:]
    assert "Traceback" not in err
    assert (run / "train.log").read_text().endswith("\n".join(lines) + "\n")

    argv = shlex.split(command)
    resumed = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads((run / "results.json").read_text())
    assert (final["status"], final["attempt"], final["resumed_from"], final["steps"], final["error"]) == (
        "completed", 2, "checkpoints/last.ckpt", 8, None)


@pytest.mark.slow
def test_a_signal_stops_a_sweep_and_the_printed_command_resumes_it(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = ["-m", "fusion=add,mul", *FAST, "test=false", "+callbacks.sig._target_=test_audit_entry.SignalAt",
                 f"+callbacks.sig.signum={int(signal.SIGTERM)}", "+callbacks.sig.step=2",
                 f"+callbacks.sig.marker={tmp_path / 'signalled'}"]
    env = {"PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    stopped = run_cli("train.py", *overrides, f"hydra.sweep.dir={sweep}", outputs=tmp_path, env=env)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    command = f"python {ROOT / 'train.py'} {shlex.join(overrides)} hydra.sweep.dir={sweep}"
    assert [ln for ln in stopped.stderr.splitlines() if ln.startswith("mmfuse:")] == [
        "mmfuse: interrupted by SIGTERM: the sweep stops; job 0's results.json says interrupted (it starts again: "
        "no checkpoint yet; completed jobs are skipped)", f"mmfuse: resume the sweep with: {command}"]
    assert json.loads((sweep / "0" / "results.json").read_text())["status"] == "interrupted"
    assert not (sweep / "1").exists()

    resumed = run_cli(*shlex.split(command)[1:], outputs=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    jobs = [json.loads((sweep / j / "results.json").read_text()) for j in ("0", "1")]
    assert [(r["status"], r["attempt"], r["choices"]["fusion"]) for r in jobs] == [("completed", 2, "add"),
                                                                                  ("completed", 1, "mul")]


# ---- user errors raised inside constructors -----------------------------------------------------------

def test_user_error_finds_the_mmfuse_error_a_wrapper_was_raised_from():
    inner = MMFuseError("data.root='/x': /x is not a folder. Fix: ...")
    try:
        try:
            raise inner
        except MMFuseError as e:
            raise InstantiationException("Error in call to target 'X':\nMMFuseError(...)") from e
    except InstantiationException as wrapped:
        assert user_error(wrapped) is inner
    try:
        try:
            raise inner
        except MMFuseError:
            raise RuntimeError("a bug in the handler") from None
    except RuntimeError as other:
        assert user_error(other) is None  # only a deliberate `raise ... from`, not "during handling of"
    assert user_error(ValueError("x")) is None


@pytest.mark.slow
@pytest.mark.parametrize("overrides, field", [
    (("data=coco_captions", "data.root=/no/such/coco"), "data.root='/no/such/coco'"),
    (("encoder.text=minilm", "encoder.text.name_or_path=/no/such/model"), "encoder.text.name_or_path='/no/such/model'"),
])
def test_a_user_error_in_a_constructor_is_one_line_with_exit_code_2(tmp_path, overrides, field):
    run = tmp_path / "run"
    proc = run_cli("train.py", *FAST, *overrides, f"hydra.run.dir={run}", outputs=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"mmfuse: error: {field}"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    assert json.loads((run / "results.json").read_text())["error"] == "MMFuseError: " + errors[0][len("mmfuse: error: "):]


# ---- a corrupt results.json in a reused run directory -------------------------------------------------

def test_read_results_names_a_corrupt_file(tmp_path):
    (tmp_path / "results.json").write_text('{"status": "running", "metr')
    with pytest.raises(CorruptRecord) as bad:
        read_results(tmp_path)
    assert str(bad.value) == (f"{tmp_path}/results.json is not a valid run record (not JSON: Unterminated string "
                              "starting at: line 1 column 23 (char 22))")
    (tmp_path / "results.json").write_text("[1, 2]\n")
    with pytest.raises(CorruptRecord, match=r"results.json is not a valid run record \(a JSON list, not an object\)$"):
        read_results(tmp_path)


def test_a_corrupt_results_json_is_an_error_with_the_fix_and_ckpt_path_last_resumes_keeping_it(make_cfg):
    cfg = make_cfg(*FAST, "test=false")
    run = Path(cfg.paths.output_dir)
    damaged = b'{"status": "running", "attempt": 1, "ove'
    (run / "results.json").write_bytes(damaged)
    with pytest.raises(MMFuseError) as refused:  # no checkpoint: nothing to resume
        train(cfg)
    assert str(refused.value) == (
        f"{run}/results.json is not a valid run record (not JSON: Unterminated string starting at: line 1 column 37 "
        f"(char 36)), so this directory's run cannot be resumed or skipped. Fix: move it aside (mv {run}/results.json "
        f"{run}/results.json.corrupt) to train this directory from the start, or use a new hydra.run.dir")
    assert (run / "results.json").read_bytes() == damaged and sorted(p.name for p in run.iterdir()) == ["results.json"]

    (run / "results.json").unlink()
    first = train(cfg)
    (run / "results.json").write_bytes(damaged)
    with pytest.raises(MMFuseError, match=r"Fix: add ckpt_path=last to resume from .*/checkpoints/last.ckpt \(the file "
                                          r"is then kept as results.json.corrupt-<time>\), or use a new hydra.run.dir$"):
        train(cfg)
    assert (run / "results.json").read_bytes() == damaged

    again = train(make_cfg(*FAST, "test=false", "ckpt_path=last"))
    kept = sorted(run.glob("results.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged
    assert (again["status"], again["attempt"], again["resumed_from"]) == ("completed", 2, "checkpoints/last.ckpt")
    assert again["metrics"] == first["metrics"]  # resumed after its only epoch: nothing left to train
    assert (run / "csv" / "metrics.attempt1.csv").is_file()


# ---- file modes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_files_get_the_umasks_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json({"a": 1}, tmp_path / "results.json")
        atomic_torch_save({"a": 1}, tmp_path / "x.pt")
    finally:
        os.umask(old)
    assert oct((tmp_path / "results.json").stat().st_mode & 0o777) == oct(mode)
    assert oct((tmp_path / "x.pt").stat().st_mode & 0o777) == oct(mode)


# ---- validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (("fusion.dim=0",), "fusion.dim=0 must be >= 1, e.g. fusion.dim=256"),
    (("fusion=co_attention", "fusion.heads=0"), "fusion.heads=0 must be >= 1, e.g. fusion.heads=4"),
    (("fusion=block", "fusion.rank=2.5"), "fusion.rank=2.5 is not an integer: give an integer, e.g. fusion.rank=4"),
    (("fusion=mfh", "fusion.order=-1"), "fusion.order=-1 must be >= 1, e.g. fusion.order=2"),
    (("fusion=concat", "++fusion.hidden=[64,0]"),
     "fusion.hidden=[64, 0]: item 1 (0) is not a width >= 1, e.g. fusion.hidden=[32] (or [] for none)"),
    (("fusion=tfn", "fusion.hidden=0"), "fusion.hidden=0 must be >= 1, e.g. fusion.hidden=32"),
    (("fusion.dropout=1.5",), "fusion.dropout=1.5 must be <= 1, e.g. fusion.dropout=0.1"),
    (("optimizer.lr=nan",), "optimizer.lr=nan is not a finite number: give one, e.g. optimizer.lr=1e-3"),
    (("optimizer.lr=inf",), "optimizer.lr=inf is not a finite number: give one, e.g. optimizer.lr=1e-3"),
    (("optimizer.weight_decay=nan",),
     "optimizer.weight_decay=nan is not a finite number: give one, e.g. optimizer.weight_decay=0.01"),
    (("lr_mult.text_encoder=nan",), "lr_mult.text_encoder=nan is not a finite number: give one, e.g. lr_mult.text_encoder=0.1"),
    (("scheduler.warmup_fraction=2",), "scheduler.warmup_fraction=2 must be <= 1, e.g. scheduler.warmup_fraction=0.05"),
    (("trainer.max_epochs=-1",),
     "trainer.max_epochs=-1 (Lightning's 'no limit') gives the run no end, and the learning-rate schedule is laid out "
     "over its length. Fix: give a number of epochs, e.g. trainer.max_epochs=10, or of optimizer steps, e.g. "
     "+trainer.max_steps=1000"),
    (("+trainer.max_steps=-2",), "trainer.max_steps=-2 must be >= -1, e.g. trainer.max_steps=1000"),
    (("+trainer.max_steps=0",), "trainer.max_steps=0 trains nothing (the run would stop before its first step and "
     "report completed). Fix: give at least 1, e.g. trainer.max_steps=1000, or trainer.max_epochs=0 to evaluate the "
     "starting weights on purpose"),
    (("fusion=mult", "fusion.self_layers=-1"), "fusion.self_layers=-1 must be >= 0, e.g. fusion.self_layers=1"),
])
def test_bad_values_are_refused_with_one_line(make_cfg, overrides, message):
    with pytest.raises(MMFuseError) as refused:
        validate_train_config(make_cfg(*overrides))
    assert str(refused.value) == message


def test_no_epochs_evaluates_the_starting_weights_and_says_so(make_cfg, caplog):
    """``trainer.max_epochs=0`` is how a run evaluates its starting weights (``init_from`` or a fresh model,
    tests/test_train.py): allowed, but never silently."""
    with caplog.at_level(logging.WARNING, logger="mmfuse.validate"):
        validate_train_config(make_cfg("trainer.max_epochs=0"))
    assert [r.getMessage() for r in caplog.records] == [
        "trainer.max_epochs=0: nothing is trained; the run evaluates its starting weights (results.json: steps 0)"]


@pytest.mark.parametrize("group", ["fusion", "experiment", "debug"])
def test_every_shipped_config_passes_validation(make_cfg, group):
    for option in sorted((CONF_DIR / group).glob("*.yaml")):
        validate_train_config(make_cfg(f"{group}={option.stem}"))


def test_mult_without_self_attention_layers_validates_and_builds(make_cfg):
    from mmfuse.builder import build_fusion
    cfg = make_cfg("fusion=mult", "fusion.self_layers=0")
    validate_train_config(cfg)
    fusion = build_fusion(cfg, {"image": 8, "text": 8})
    assert (len(fusion.self_text), len(fusion.self_image)) == (0, 0)


def test_no_epoch_limit_with_a_step_limit_trains_exactly_those_steps(make_cfg):
    results = train(make_cfg(*FAST, "trainer.max_epochs=-1", "+trainer.max_steps=3", "test=false"))
    assert (results["status"], results["steps"]) == ("completed", 3)


# ---- start-up: no torch or Lightning before a run starts ------------------------------------------------

def _imported(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    modules = {ln.rsplit("|", 1)[1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
    return proc, modules


@pytest.mark.parametrize("args, code, says", [
    (("train.py", "--help"), 0, "== Configuration groups =="),
    (("eval.py", "--help"), 0, "== Configuration groups =="),
    (("train.py", "fusion=atention"), 1, "Could not find 'fusion/atention'"),
])
def test_help_and_a_misspelt_option_import_neither_torch_nor_lightning(args, code, says):
    proc, modules = _imported(*args)
    assert proc.returncode == code and says in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert "omegaconf" in modules  # the import log was read
    assert not {m for m in modules if m.split(".")[0] in ("torch", "lightning", "transformers", "torchvision")}


# ---- train.log ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_log_holds_what_the_run_printed_and_logged(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train.py", *FAST, f"hydra.run.dir={run}", outputs=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert log == proc.stdout  # every log line (mmfuse, Lightning) and every printed line, once, in order
    results = json.loads((run / "results.json").read_text())
    assert f"[mmfuse] train completed in {results['wall_time_s']:.1f} s\n" in log
    assert f"  val/acc            {results['metrics']['val/acc']:.4f}\n" in log
    assert "[lightning.pytorch.utilities.rank_zero][INFO] - `Trainer.fit` stopped: `max_epochs=1` reached.\n" in log
    assert "Trainer.fit" not in proc.stderr  # not printed a second time by Lightning's own handler


# -- a second and third signal ----------------------------------------------------------------------------------
STUCK_CLEANUP = """
import time
from mmfuse.errors import RunInterrupted
from mmfuse.interrupts import interrupt_on_signals
with interrupt_on_signals():  # as cli.run_entry: train records how the run ended inside it
    try:
        print("running", flush=True)
        time.sleep(60)
    except RunInterrupted:
        print("recording", flush=True)
        time.sleep(60)  # a clean-up that hangs
"""


def test_a_second_signal_says_already_stopping_and_a_third_aborts_with_128_plus_its_number():
    proc = subprocess.Popen([sys.executable, "-c", STUCK_CLEANUP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "running\n"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline() == "recording\n"
        proc.send_signal(signal.SIGINT)
        assert proc.stderr.readline() == (
            "mmfuse: already stopping (recording results.json); press Ctrl-C again to abort now\n")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert proc.stderr.read() == "" and proc.stdout.read() == ""
    finally:
        proc.kill()
        proc.wait()


# -- train.log: a progress bar's redraws ------------------------------------------------------------------------
def test_the_job_log_gets_complete_lines_and_a_progress_bars_last_state_only(tmp_path):
    import io
    import logging

    from mmfuse.joblog import _Tee

    handler = logging.FileHandler(tmp_path / "train.log")
    out = io.StringIO()
    tee = _Tee(out, handler)
    writes = ["\r", "Epoch 0:   0%|     | 0/4", "\r", "Epoch 0:  50%|##   | 2/4", "\rEpoch 0: 100%|#####| 4/4",
              "\n", "[mmfuse] train ", "completed in 2.5 s\n", "\rValidation: 1/2\rValidation: 2/2",
              "\r               \r", "  val/acc 0.6250\n  val/loss 0.5", "000\n", "\rTesting: 1/1", "\rTest", "ing: 1/1",
              "\r\n", "not ended"]
    for text in writes:
        tee.write(text)
    assert (tmp_path / "train.log").read_text() == (
        "Epoch 0: 100%|#####| 4/4\n[mmfuse] train completed in 2.5 s\n  val/acc 0.6250\n  val/loss 0.5000\n"
        "Testing: 1/1\n")
    tee.close()
    handler.close()
    assert (tmp_path / "train.log").read_text().endswith("Testing: 1/1\nnot ended")
    assert out.getvalue() == "".join(writes)  # the console gets everything
