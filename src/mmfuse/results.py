"""``results.json``: the record of one run that every tool reads (compare, resume, sweeps).

Fields: ``status`` (running | completed | failed), ``kind`` (train | eval), ``metrics`` (final
``val/...`` and ``test/...``), ``overrides`` (the command-line overrides of this job), ``choices``
(the config group options), ``wall_time_s``, ``started_at`` / ``finished_at`` (UTC ISO 8601),
``run_dir``, ``checkpoint`` / ``best_checkpoint``, ``seed``, ``params``, ``data``, ``error``, ``versions``.
The file is rewritten atomically, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmfuse.data.atomic import atomic_write_json

FILENAME = "results.json"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """Keeps a run's ``results.json`` up to date from start to finish."""

    def __init__(self, run_dir: str | Path, **fields: Any) -> None:
        self.path = Path(run_dir) / FILENAME
        self._t0 = time.perf_counter()
        self.data: dict[str, Any] = {
            "status": "running", "started_at": utc_now(), "finished_at": None, "wall_time_s": None,
            "run_dir": str(Path(run_dir).resolve()), "metrics": {}, "error": None, **fields,
        }
        self.write()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def finish(self, status: str, error: str | None = None, **fields: Any) -> dict[str, Any]:
        self.data.update(fields, status=status, error=error, finished_at=utc_now(),
                         wall_time_s=round(time.perf_counter() - self._t0, 3))
        self.write()
        return self.data

    def write(self) -> None:
        atomic_write_json(self.data, self.path)


def read_results(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def mark_failed(run_dir: str | Path, error: str, wall_time_s: float | None = None) -> dict[str, Any]:
    """Record from outside the run (its process died) that it failed: ``status: failed`` with ``error``,
    keeping every other field of its ``results.json`` (or starting one)."""
    data = read_results(run_dir) or {"run_dir": str(Path(run_dir).resolve()), "metrics": {}}
    data.update(status="failed", error=error, finished_at=utc_now())
    if wall_time_s is not None:
        data["wall_time_s"] = round(wall_time_s, 3)
    atomic_write_json(data, Path(run_dir) / FILENAME)
    return data
