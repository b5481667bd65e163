"""What the entry points do around ``train`` / ``evaluate``: rank processes, one-line errors, signals,
sweep-safe failures, the job log."""

from __future__ import annotations

import logging
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mmfuse.distributed import RankPlan, rank_plan, run_ranks
from mmfuse.errors import RunInterrupted, user_error
from mmfuse.interrupts import interrupt_on_signals, interruption, rerun_command
from mmfuse.joblog import lightning_logs_to_root, tee_stdout_to_job_log, to_job_log
from mmfuse.results import FILENAME, RunRecord, failure_fields
from mmfuse.runinfo import group_choices, hydra_runtime, is_multirun, task_overrides, versions

log = logging.getLogger("mmfuse")


def run_entry(fn: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run ``fn(cfg)`` and return the value of ``cfg.optimized_metric`` from its results (for sweepers).

    A multi-process trainer (``trainer=ddp``, ``ddp_cpu``) runs ``fn`` on one process per rank, supervised
    from here (``mmfuse.distributed``), so that a job is one directory and one run whatever the ranks.

    A user error (``MMFuseError``, also when raised inside a constructor that Hydra's ``instantiate``
    called) ends a single run with one line on stderr and exit code 2. In a multirun, a failing job is
    recorded as failed in its ``results.json``, the sweep goes on, and the sweeper gets ``None``: the
    Optuna sweeper records that trial as failed (``conf/hparams_search/optuna.yaml`` sets
    ``max_failure_rate`` so that failed trials do not stop the study).

    SIGINT / SIGTERM end the run (and a sweep) as ``interrupted`` with exit code 128 + signal number
    (130 / 143) and print the command that resumes it. What the run prints also goes to its job log.
    """
    lightning_logs_to_root()
    with tee_stdout_to_job_log():
        try:
            plan = _rank_plan_or_record_failure(cfg)
            if plan is not None:  # the ranks handle the signals; SIGINT reaches this supervisor as KeyboardInterrupt
                results = run_ranks(fn, cfg, plan)
            else:
                with interrupt_on_signals():
                    results = fn(cfg)
        except BaseException as e:
            stop = interruption(e)
            if stop is not None:
                _exit_interrupted(stop, cfg)
            error = user_error(e) if isinstance(e, Exception) else None
            if error is None:
                if isinstance(e, Exception) and is_multirun():
                    log.exception("job failed (recorded in its results.json; the sweep goes on)")
                    return None
                raise
            if is_multirun():
                log.error("job failed: %s (recorded in its results.json; the sweep goes on)", error)
                return None
            _say(f"mmfuse: error: {error}")
            sys.exit(2)
    return optimized_value(results, optimized_metric(cfg))


def optimized_metric(cfg: DictConfig) -> str | None:
    """``cfg.optimized_metric``, or when it is null the task's ``monitor`` (the metric that picks the best
    checkpoint: ``val/acc`` for itm, ``val/cider`` for captioning, ``val/rsum`` for retrieval)."""
    metric = cfg.get("optimized_metric")
    if metric is None and (cfg.get("task") or {}).get("_target_"):
        from hydra._internal.utils import _locate

        metric = getattr(_locate(cfg.task._target_), "monitor", "val/acc")
    return metric


def _say(line: str) -> None:
    """One line on stderr, and in the job log."""
    print(line, file=sys.stderr)
    to_job_log(line + "\n")


def _exit_interrupted(stop: RunInterrupted, cfg: DictConfig) -> None:
    """Say how the run was stopped and how to go on; exit with 128 + the signal's number."""
    run_dir = Path(cfg.paths.output_dir)
    if cfg.get("job_name", "train") != "train":
        _say(f"mmfuse: interrupted by {stop.signal_name}; run it again with: {shlex.join(['python', *sys.argv])}")
        sys.exit(stop.exit_code)
    last = run_dir / "checkpoints" / "last.ckpt"
    how = "resumes from checkpoints/last.ckpt" if last.is_file() else "starts again: no checkpoint yet"
    if is_multirun():
        hc = hydra_runtime()
        sweep_dir = run_dir.parents[len(Path(str(hc.sweep.subdir)).parts) - 1]
        _say(f"mmfuse: interrupted by {stop.signal_name}: the sweep stops; job {run_dir.name}'s {FILENAME} says "
             f"interrupted (it {how}; completed jobs are skipped)")
        _say(f"mmfuse: resume the sweep with: {rerun_command(run_dir, sweep_dir=sweep_dir)}")
    else:
        _say(f"mmfuse: interrupted by {stop.signal_name}; {run_dir / FILENAME} says interrupted (the run {how})")
        _say(f"mmfuse: resume with: {rerun_command(run_dir)}")
    sys.exit(stop.exit_code)


def optimized_value(results: dict[str, Any], metric: str | None) -> float | None:
    """``results["metrics"][metric]`` as a float; None (with a warning naming the metrics there are) when
    the run has no such metric, or it is not finite."""
    if not metric:
        return None
    metrics = results.get("metrics") or {}
    if metric not in metrics:
        log.warning("optimized_metric=%s is not among this run's metrics %s; the sweeper gets None. Fix: set "
                    "optimized_metric to one of them", metric, sorted(metrics))
        return None
    value = float(metrics[metric])
    return value if math.isfinite(value) else None


def _rank_plan_or_record_failure(cfg: DictConfig) -> RankPlan | None:
    """``rank_plan(cfg)``; if the trainer config cannot even be built, the job's ``results.json`` says so."""
    try:
        return rank_plan(cfg)
    except BaseException as e:
        record = RunRecord(Path(cfg.paths.output_dir), kind=cfg.get("job_name", "train"), overrides=task_overrides(),
                           choices=group_choices(), seed=cfg.get("seed"), versions=versions())
        record.finish(**failure_fields(e))
        raise
