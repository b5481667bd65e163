"""Errors that the entry points turn into one clear line instead of a traceback."""

from __future__ import annotations

import signal


class MMFuseError(Exception):
    """A problem the user can fix (bad config value, missing file, unavailable weights).

    The message names what is wrong (file / field / value) and how to fix it.
    """


class RunInterrupted(BaseException):  # noqa: N818 (a signal, not an error: like KeyboardInterrupt)
    """The run was stopped by a signal (SIGINT: Ctrl-C, SIGTERM: a scheduler, ``kill``).

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` swallows it, but not a
    ``KeyboardInterrupt``: Lightning turns those into ``SystemExit(1)``, which would lose the signal.
    The process ends with ``exit_code`` = 128 + signal number (130 for SIGINT, 143 for SIGTERM), as a shell
    reports a process killed by that signal.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def user_error(exc: BaseException | None) -> MMFuseError | None:
    """The ``MMFuseError`` that ``exc`` is or was raised from (``raise ... from``: its ``__cause__`` chain), else None.

    Hydra's ``instantiate`` wraps what a constructor raises (``raise InstantiationException(...) from e``);
    the user's problem is the ``MMFuseError`` inside. An exception that merely occurred while another was
    being handled (``__context__`` only) is a failure of its own, so that chain is not followed.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MMFuseError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__
    return None
