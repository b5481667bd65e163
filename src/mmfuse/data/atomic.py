"""Write files so that a crash never leaves a half-written file under the final name.

The data goes to a temporary file beside the target, is flushed to disk and renamed over it. The file
gets the mode any new file of this process gets, ``0o666 & ~umask`` (``0644`` for umask 022, ``0664``
for 002: a sweep directory shared by a group stays writable for it), not ``mkstemp``'s ``0600``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mmfuse.errors import MMFuseError


def _umask_now() -> int | None:
    """The process's umask from ``/proc/self/status`` (Linux 4.7+), read without changing it; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return None


def _umask_at_import() -> int:
    umask = os.umask(0)  # the only portable way to read it is to set it: once, at import, not per write
    os.umask(umask)
    return umask


_UMASK_AT_IMPORT = _umask_at_import()


def new_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open(path, "w")`` gives a new file. The umask is read from
    ``/proc/self/status`` where there is one, else it is the one at import: it is never set (setting it,
    even for a moment, gives a file another thread creates meanwhile mode 0666)."""
    umask = _umask_now()
    return 0o666 & ~(_UMASK_AT_IMPORT if umask is None else umask)


def atomic_write_with(path: Path, write: Any) -> None:
    """``write(f)`` into a temporary file beside ``path`` (the mode a new file gets), synced, then renamed
    onto ``path``: a reader sees the old file or the whole new one; on failure nothing is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # not on Windows, where files have no such mode
            os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    atomic_write_with(Path(path), lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()
    atomic_write_with(Path(path), lambda f: f.write(data))


def load_plain(path: Path, field: str = "data.cache_dir") -> Any:
    """A cache file written by ``atomic_torch_save`` of plain data (tensors, lists, dicts, strings,
    numbers), read with ``weights_only=True``; None when it is damaged (truncated, not a torch file: to
    be made again). A file that names other Python objects (which could run code when loaded) is refused
    with one line, not loaded."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # garbage bytes fail in the unpickler too, without naming any object
            return None
        raise MMFuseError(f"{field}: {path} holds Python objects other than tensors and plain containers, which "
                          "could run code when loaded; it was not loaded. Fix: delete it (it is drawn again)") from None
    except Exception:  # a damaged cache file is simply made again
        return None
