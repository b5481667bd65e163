"""``results.json``: the record of one run that every tool reads (compare, resume, sweeps).

Fields: ``status`` (running | completed | failed | interrupted), ``kind`` (train | eval), ``metrics``
(final ``val/...`` and ``test/...``), ``overrides`` (the command-line overrides of this job), ``choices``
(the config group options), ``wall_time_s``, ``started_at`` / ``finished_at`` (UTC ISO 8601),
``run_dir``, ``checkpoint`` / ``best_checkpoint``, ``seed``, ``params``, ``data``, ``error``, ``signal``
(of an interrupted run: ``SIGINT`` | ``SIGTERM``), ``versions``, ``disk`` (of a completed training run:
what its directory holds, in bytes: ``{"checkpoints": <checkpoints/, checksum files included>, "other": <the
rest, as it was just before this file's final write>}``, ``checkpoint_io.run_disk_usage``).
The file is rewritten atomically, so a reader never sees half of it.

The clock of a run starts when its process starts the run, or, in the rank processes of a multi-process job,
at the time the supervisor wrote into ``MMFUSE_JOB_STARTED`` (seconds since the epoch) when it started them:
``started_at`` and ``wall_time_s`` (also the one the run prints) are then the whole job's.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmfuse.data.atomic import atomic_write_json
from mmfuse.errors import MMFuseError, user_error
from mmfuse.interrupts import interruption

FILENAME = "results.json"
JOB_STARTED_ENV = "MMFUSE_JOB_STARTED"  # time.time() of the job's start, set by mmfuse.distributed for its ranks


def utc_now() -> str:
    return utc_time(time.time())


def utc_time(seconds: float) -> str:
    """``seconds`` since the epoch as UTC ISO 8601, to the second."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """Keeps a run's ``results.json`` up to date from start to finish."""

    def __init__(self, run_dir: str | Path, **fields: Any) -> None:
        self.path = Path(run_dir) / FILENAME
        started = float(os.environ.get(JOB_STARTED_ENV) or time.time())
        self._t0 = time.perf_counter() - (time.time() - started)
        self.data: dict[str, Any] = {
            "status": "running", "started_at": utc_time(started), "finished_at": None, "wall_time_s": None,
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


def failure_fields(exc: BaseException) -> dict[str, Any]:
    """How ``exc`` ended a run, as arguments of ``RunRecord.finish``: ``status: interrupted`` with the
    ``signal``, else ``status: failed``; ``error`` is ``"<type>: <message>"``, for a user error that Hydra's
    ``instantiate`` wrapped the ``MMFuseError`` itself."""
    stop = interruption(exc)
    if stop is not None:
        return {"status": "interrupted", "error": f"{type(stop).__name__}: {stop}", "signal": stop.signal_name}
    shown = (user_error(exc) if isinstance(exc, Exception) else None) or exc
    return {"status": "failed", "error": f"{type(shown).__name__}: {shown}"}


class CorruptRecord(MMFuseError):
    """A ``results.json`` that is not a JSON object (cut off, edited by hand, another file)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} is not a valid run record ({problem})")
        self.path = path

    def move_aside(self) -> Path:
        """Rename the file to ``results.json.corrupt-<UTC time>`` beside it (kept, not deleted); return that."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        kept = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        self.path.replace(kept)
        return kept


def read_results(run_dir: str | Path) -> dict[str, Any] | None:
    """The run record in ``run_dir``, None if there is none. Raises ``CorruptRecord`` for a file that is
    not a JSON object."""
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptRecord(path, f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise CorruptRecord(path, f"a JSON {type(data).__name__}, not an object")
    return data


def mark_failed(run_dir: str | Path, error: str, wall_time_s: float | None = None) -> dict[str, Any]:
    """Record from outside the run (its process died) that it failed: ``status: failed`` with ``error``,
    keeping every other field of its ``results.json`` (or starting one; a corrupt one is moved aside)."""
    try:
        data = read_results(run_dir)
    except CorruptRecord as e:
        e.move_aside()
        data = None
    data = data or {"run_dir": str(Path(run_dir).resolve()), "metrics": {}}
    data.update(status="failed", error=error, finished_at=utc_now())
    if wall_time_s is not None:
        data["wall_time_s"] = round(wall_time_s, 3)
    atomic_write_json(data, Path(run_dir) / FILENAME)
    return data
