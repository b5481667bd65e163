"""A run stopped by a signal: SIGINT / SIGTERM as ``RunInterrupted``, its status, and the command that resumes it.

Python's defaults would not let a run say that it was stopped: SIGTERM ends the process at once (or,
during ``Trainer.fit``, Lightning raises ``SIGTERMException``, a ``SystemExit`` with code 0), and Lightning
turns SIGINT's ``KeyboardInterrupt`` into ``SystemExit(1)``. Inside ``interrupt_on_signals()`` both raise
``RunInterrupted`` instead, which ``train`` records as ``status: interrupted`` and the entry point turns
into exit code 128 + signal number and the command that resumes the run.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmfuse.errors import RunInterrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
ALREADY_STOPPING = "mmfuse: already stopping (recording results.json); press Ctrl-C again to abort now\n"
_installed = False


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """While inside, the first SIGINT or SIGTERM raises ``RunInterrupted`` in the main thread, wherever it is
    (building the data, training, validating). The second only says so on stderr (``ALREADY_STOPPING``), so
    that the run can record how it ended; the third ends the process at once (``os._exit(128 + n)``: a stuck
    clean-up). Lightning's SIGTERM handler, installed during ``fit``,
    calls this one after its own.

    Re-entrant (an inner use is a no-op); outside the main thread nothing is installed. Processes forked
    from this one (DataLoader workers) inherit the handler; there it does what the default would.
    """
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    owner, received = os.getpid(), []

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            _default_action(signum)
            return
        received.append(signum)
        if len(received) == 1:
            raise RunInterrupted(signum)
        if len(received) == 2:
            os.write(2, ALREADY_STOPPING.encode())  # not sys.stderr: this may interrupt a write to it
            return
        signal.signal(signum, signal.SIG_DFL)
        os._exit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    _installed = True
    try:
        yield
    finally:
        _installed = False
        for s, h in previous.items():
            signal.signal(s, h)


def _default_action(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def interruption(exc: BaseException) -> RunInterrupted | None:
    """``exc`` as the signal that stopped the run, if it is one: ``RunInterrupted``, a ``KeyboardInterrupt``
    (SIGINT), or Lightning's ``SIGTERMException`` (SIGTERM, where no handler of ours was installed)."""
    if isinstance(exc, RunInterrupted):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return RunInterrupted(signal.SIGINT)
    if type(exc).__name__ == "SIGTERMException":  # lightning.pytorch.utilities.exceptions, not imported here
        return RunInterrupted(signal.SIGTERM)
    return None


def rerun_command(run_dir: str | Path, sweep_dir: str | Path | None = None,
                  argv: list[str] | None = None) -> str:
    """The command line of this process (``sys.argv``) with the run's directory pinned: ``hydra.run.dir=<run_dir>``,
    or for a sweep ``hydra.sweep.dir=<sweep_dir>`` (any earlier value of either dropped). Re-running it
    resumes the run, or the sweep's unfinished jobs (``mmfuse.resume``)."""
    argv = list(sys.argv if argv is None else argv)
    kept = [a for a in argv[1:] if a.split("=", 1)[0].lstrip("+~") not in ("hydra.run.dir", "hydra.sweep.dir")]
    pin = f"hydra.sweep.dir={sweep_dir}" if sweep_dir is not None else f"hydra.run.dir={run_dir}"
    return shlex.join(["python", argv[0], *kept, pin])
