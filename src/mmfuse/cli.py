"""What the entry points do around ``train`` / ``evaluate``: rank processes, one-line errors, sweep-safe failures."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mmfuse.distributed import RankPlan, rank_plan, run_ranks
from mmfuse.errors import MMFuseError
from mmfuse.results import RunRecord
from mmfuse.runinfo import group_choices, is_multirun, task_overrides, versions

log = logging.getLogger("mmfuse")


def run_entry(fn: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run ``fn(cfg)`` and return the value of ``cfg.optimized_metric`` from its results (for sweepers).

    A multi-process trainer (``trainer=ddp``, ``ddp_cpu``) runs ``fn`` on one process per rank, supervised
    from here (``mmfuse.distributed``), so that a job is one directory and one run whatever the ranks.

    A user error (``MMFuseError``) ends a single run with one line on stderr and exit code 2. In a
    multirun, a failing job is recorded as failed in its ``results.json``, the sweep goes on, and the
    sweeper gets ``None``: the Optuna sweeper records that trial as failed (``conf/hparams_search/optuna.yaml``
    sets ``max_failure_rate`` so that failed trials do not stop the study).
    """
    try:
        plan = _rank_plan_or_record_failure(cfg)
        results = run_ranks(fn, cfg, plan) if plan is not None else fn(cfg)
    except MMFuseError as e:
        if is_multirun():
            log.error("job failed: %s (recorded in its results.json; the sweep goes on)", e)
            return None
        print(f"mmfuse: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        if is_multirun():
            log.exception("job failed (recorded in its results.json; the sweep goes on)")
            return None
        raise
    return optimized_value(results, cfg.get("optimized_metric"))


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
        record.finish("failed", error=f"{type(e).__name__}: {e}")
        raise
