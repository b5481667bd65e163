"""A Hydra callback (``conf/hydra/default.yaml``) that reports on a sweep from its jobs' ``results.json``.

At the start of a multirun into an existing sweep directory it says how many jobs are already complete
(they will be skipped) and how many will be resumed; at the end it counts the jobs by status and
prints the ``python -m mmfuse.compare`` command for the sweep. A job whose ``results.json`` cannot be read
counts as ``corrupt`` (with a warning naming the file) instead of ending the report.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mmfuse.results import CorruptRecord, read_results

log = logging.getLogger("mmfuse")


def job_statuses(sweep_dir: str | Path) -> Counter:
    """Status of every job directory (a numbered sub-directory) of a sweep; ``missing`` without results,
    ``corrupt`` for a ``results.json`` that is no run record."""
    root = Path(sweep_dir)
    jobs = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []
    return Counter(_status(p) for p in jobs)


def _status(job_dir: Path) -> str:
    try:
        return (read_results(job_dir) or {}).get("status", "missing")
    except CorruptRecord as e:
        log.warning("%s; counted as corrupt", e)
        return "corrupt"


def _describe(counts: Counter) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


class SweepReport(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        counts = job_statuses(config.hydra.sweep.dir)
        if counts:
            log.info("sweep directory %s already holds %d jobs (%s): completed ones are skipped, the others "
                     "resumed", config.hydra.sweep.dir, sum(counts.values()), _describe(counts))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        counts = job_statuses(sweep_dir)
        if counts:
            print(f"[mmfuse] sweep {sweep_dir}: {_describe(counts)}\n"
                  f"[mmfuse] compare the runs: python -m mmfuse.compare {sweep_dir}")
