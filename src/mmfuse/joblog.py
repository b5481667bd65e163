"""What a run prints also goes to its Hydra job log, ``<run dir>/<job name>.log`` (``train.log``, ``eval.log``).

Hydra's job logging writes log records to that file, but what a run prints (its summary: final metrics,
run directory, checkpoint) is no log record. While ``tee_stdout_to_job_log()`` is active, everything
written to ``sys.stdout`` is also written to the file, through the stream of Hydra's file handler, so
that prints and log records stay in the order they happened. ``to_job_log`` writes a line to the file
alone (for what the entry point prints to stderr). ``lightning_logs_to_root()`` sends Lightning's log
lines through the root logger's handlers (Hydra's console and job log) instead of its own.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO


def job_log_handler() -> logging.FileHandler | None:
    """The root logger's file handler (Hydra's ``file`` handler of ``hydra/job_logging``), if there is one."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler.stream is not None:
            return handler
    return None


def to_job_log(text: str, handler: logging.FileHandler | None = None) -> None:
    handler = handler or job_log_handler()
    if handler is None:
        return
    handler.acquire()
    try:
        handler.stream.write(text)
        handler.flush()
    finally:
        handler.release()


LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def lightning_logs_to_root() -> None:
    """Lightning's lines to Hydra's console and job log, once each.

    On import, ``lightning.pytorch`` (and ``lightning.fabric``) print through a console handler of their own
    and stop there unless the root logger already has handlers, and the umbrella ``lightning`` package
    always adds one: imported before Hydra set up the job's logging, Lightning never reached
    ``train.log``; imported after, it printed every line twice. Only under Hydra's job logging (a job log
    exists); elsewhere (a notebook, pytest) Lightning keeps its own handlers. The rank processes of a
    multi-process job call it too (``distributed.use_job_log_handlers``).
    """
    if job_log_handler() is None:
        return
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's console handlers, not a file
                logger.removeHandler(handler)
        logger.propagate = True


def last_state(line: str) -> str:
    """What a terminal shows of ``line`` (no ``\\n``): the text after its last ``\\r`` (a progress bar
    redraws itself with ``\\r``), a trailing ``\\r`` aside."""
    return line.rstrip("\r").rsplit("\r", 1)[-1]


def _kept(line: str) -> bool:
    """Whether the job log gets ``line``: all but a redrawn line whose last state is blank."""
    return "\r" not in line or bool(last_state(line).strip())


class _Tee:
    """A text stream that writes to ``out`` and to the job log; anything else (``isatty``, ``encoding``,
    ``fileno``) is ``out``'s.

    The job log gets complete lines only, each as a terminal shows it in the end (``last_state``): a progress
    bar's ``\\r`` redraws are not copied, only its last state once its line ends, and a blank last state
    (a bar that erased itself) not at all. A line not ended yet is written by ``close``.
    """

    def __init__(self, out: TextIO, handler: logging.FileHandler) -> None:
        self._out, self._handler = out, handler
        self._pending = ""  # the current line, since its last \r but one

    def write(self, text: str) -> int:
        n = self._out.write(text)
        *lines, rest = (self._pending + text).split("\n")
        shown = [last_state(ln) for ln in lines if _kept(ln)]
        if shown:
            to_job_log("".join(ln + "\n" for ln in shown), self._handler)
        self._pending = rest[rest.rfind("\r", 0, len(rest) - 1) + 1:]
        return n

    def close(self) -> None:
        """Write the line not ended yet (not ``out``'s ``close``: ``out`` stays open)."""
        if self._pending and _kept(self._pending):
            to_job_log(last_state(self._pending), self._handler)
        self._pending = ""

    def flush(self) -> None:
        self._out.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)


@contextlib.contextmanager
def tee_stdout_to_job_log() -> Iterator[None]:
    handler = job_log_handler()
    if handler is None:  # no job log (hydra/job_logging=disabled, or not under Hydra)
        yield
        return
    out = sys.stdout
    sys.stdout = tee = _Tee(out, handler)
    try:
        yield
    finally:
        sys.stdout = out
        tee.close()
