"""Checkpoint files on disk: written by temporary name and rename, checksummed, read without running code.

Every checkpoint that mmfuse writes (Lightning's ``ModelCheckpoint`` best and last, ``StepCheckpoint``,
``train.py``'s final ``last.ckpt``) goes through ``save_checkpoint_file``; every checkpoint it reads
(resume, ``eval.py ckpt_path``, ``init_from``, ``encoder.<side>.pretrained=<path>``) through
``read_checkpoint``. ``CheckpointIO`` is the Lightning plugin that routes the Trainer's saving and
loading (``trainer.fit(ckpt_path=...)`` included) through them.

Writing ``<dir>/last.ckpt``: ``torch.save`` into ``<dir>/.last.ckpt.<random>.tmp``, flushed and fsynced;
the old checksum file ``last.ckpt.sha256.json`` is removed, the temporary file renamed to
``last.ckpt``, and a new checksum file written (itself by temporary name and rename) with the file's
size and sha256 (hashed as ``torch.save`` writes, the file is not read back). A writer killed or out of
space at any point leaves the previous ``last.ckpt`` as it was: at worst without its checksum file (or a
stale ``.last.ckpt.<random>.tmp``, removed when the run is resumed: ``remove_temporaries``), never a
half-written file under the final name. Out of space is an ``MMFuseError`` "no space left on <dir>".

Reading: the file is opened once; its size and sha256 are checked against the checksum file (a
checkpoint without one, written before mmfuse checked checkpoints, loads with a warning) and the same
open file is loaded with ``torch.load(weights_only=True)``: tensors and plain containers only, so a
crafted file cannot run code. A ``last.ckpt`` replaced by a run still training while it is read is read
again (the new file with its new checksum file). A file is hashed once per process and version
(``(path, inode, size, mtime_ns)``): resuming checks it, then Lightning loads it; one this process wrote
is not hashed again. Every failure is one ``MMFuseError`` line naming the field, the file and the fix.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mmfuse.data.atomic import atomic_write_json, atomic_write_with
from mmfuse.errors import MMFuseError

log = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".sha256.json"
OTHER_FIX = "Fix: give another checkpoint written by python train.py (e.g. best.ckpt beside it)"
# what save_checkpoint_file's temporary files are named (tempfile.mkstemp: 8 random characters)
TEMPORARY = re.compile(r"\..+\.ckpt(\.sha256\.json)?\.[A-Za-z0-9_]{8}\.tmp")
_CHUNK = 1 << 22
_warned_unverified: set[str] = set()
_verified: set[tuple[str, int, int, int]] = set()  # versions (_version) whose sha256 matched, in this process


def resume_fix(path: str | Path) -> str:
    """The fix for a damaged checkpoint a run was to resume from: the other of ``best.ckpt`` /
    ``last.ckpt`` beside it when that exists, else starting afresh."""
    path = Path(path)
    other = path.with_name("last.ckpt" if path.name == "best.ckpt" else "best.ckpt")
    if other.is_file():
        return f"Fix: resume from the other checkpoint beside it (ckpt_path={other}), or delete it to start the run afresh"
    return f"Fix: delete it to start the run afresh (there is no {other.name} beside it to resume from)"


def _version(path: Path, st: os.stat_result) -> tuple[str, int, int, int]:
    return os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns


def _sha256_of(f: Any) -> str:
    """sha256 of an open binary file from its start; the file is left at its start."""
    f.seek(0)
    h = hashlib.sha256()
    while block := f.read(_CHUNK):
        h.update(block)
    f.seek(0)
    return h.hexdigest()


def checksum_path(path: str | Path) -> Path:
    """``<dir>/last.ckpt`` -> ``<dir>/last.ckpt.sha256.json``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


class _RecordingWriter:
    """A file for ``torch.save`` that hashes what is written (``torch.save`` writes a file-like object
    in order, without seeking) and keeps the ``OSError`` of a failed write: torch's zip writer turns it
    into a RuntimeError ("unexpected pos") that no longer says the disk was full."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.sha256 = hashlib.sha256()
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            n = self.f.write(data)
        except OSError as e:
            self.error = e
            raise
        self.sha256.update(memoryview(data)[:n] if n is not None else data)
        return n

    def flush(self) -> None:
        self.f.flush()


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested container (about the size of its ``torch.save``)."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint_file(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write ``checkpoint`` to ``path`` by temporary name and rename, then its checksum file (see above)."""
    path = Path(path)
    written: dict[str, Any] = {}

    def write(f: Any) -> None:
        writer = _RecordingWriter(f)
        try:
            torch.save(checkpoint, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise
        f.flush()
        os.fsync(f.fileno())
        written.update(sha256=writer.sha256.hexdigest(), stat=os.fstat(f.fileno()))
        checksum_path(path).unlink(missing_ok=True)  # until the new one is written, none (not a wrong one)

    try:
        atomic_write_with(path, write)
    except OSError as e:
        raise _disk_full(e, path, f"needs about {tensor_bytes(checkpoint) / 2**20:.0f} MB; the earlier "
                                  f"{path.name}, if any, is unchanged") from None
    try:
        atomic_write_json({"file": path.name, "bytes": written["stat"].st_size, "sha256": written["sha256"]},
                          checksum_path(path))
    except OSError as e:
        raise _disk_full(e, checksum_path(path), f"{path.name} itself is whole, but loads unverified") from None
    _verified.add(_version(path, written["stat"]))


def _disk_full(error: OSError, path: Path, detail: str) -> Exception:
    """An MMFuseError for a full disk (``ENOSPC``), else ``error`` itself."""
    if error.errno != errno.ENOSPC:
        return error
    return MMFuseError(f"no space left on {path.parent} writing {path.name} ({detail}). Fix: free space there "
                       "(or give the run another hydra.run.dir) and re-run the same command to resume")


def verify_checksum(f: Any, path: Path, field: str, fix: str) -> None:
    """Size and sha256 of ``f`` (``path`` opened) against ``path``'s checksum file; a warning when it has
    none. Not hashed again for a version of the file verified before in this process."""
    record_path = checksum_path(path)
    if not record_path.is_file():
        if str(path) in _warned_unverified:
            return
        _warned_unverified.add(str(path))  # once: resuming checks the file, then Lightning loads it
        log.warning("%s=%s has no checksum file %s (written before mmfuse checksummed checkpoints): "
                    "loaded unverified", field, path, record_path.name)
        return
    try:
        record = json.loads(record_path.read_text())
        expected_bytes, expected_sha = int(record["bytes"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MMFuseError(f"{field}={path}: its checksum file {record_path} is unreadable ({type(e).__name__}). "
                          f"Fix: delete {record_path.name} to load the checkpoint unverified") from None
    st = os.fstat(f.fileno())
    if st.st_size != expected_bytes:
        raise MMFuseError(f"{field}={path}: {st.st_size} bytes, {record_path.name} records {expected_bytes} "
                          f"(truncated or overwritten). {fix}")
    if _version(path, st) in _verified:
        return
    if _sha256_of(f) != expected_sha:
        raise MMFuseError(f"{field}={path}: sha256 differs from {record_path.name} (the file is corrupted). {fix}")
    _verified.add(_version(path, st))


def open_verified(path: Path, field: str, fix: str, attempts: int = 3) -> Any:
    """``path`` opened (binary) and checked by ``verify_checksum``. A failed check of a file that was
    replaced since it was opened (a run still training saved it anew) is tried again on the new file."""
    for attempt in range(attempts):
        f = open(path, "rb")  # noqa: SIM115 (the caller closes it)
        try:
            verify_checksum(f, path, field, fix)
            return f
        except MMFuseError:
            opened = os.fstat(f.fileno()).st_ino
            f.close()
            try:
                replaced = os.stat(path).st_ino != opened
            except OSError:
                replaced = False
            if not replaced or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def check_checkpoint_file(path: str | Path, field: str = "ckpt_path", fix: str | None = None) -> None:
    """What can be checked without loading: the checksum, and that the file is a whole zip archive
    (the format of ``torch.save``; a truncated file has lost the archive's directory at its end).
    ``fix`` defaults to ``resume_fix(path)``."""
    path = Path(path)
    fix = resume_fix(path) if fix is None else fix
    with open_verified(path, field, fix) as f:
        try:
            with zipfile.ZipFile(f):
                pass
        except (zipfile.BadZipFile, OSError) as e:
            raise MMFuseError(f"{field}={path}: not a whole checkpoint file, truncated or damaged ({e}). {fix}") from None


def read_checkpoint(path: str | Path, field: str = "ckpt_path", fix: str = OTHER_FIX) -> Any:
    """``torch.load(weights_only=True)`` on the CPU of the file that ``open_verified`` checked (the same
    open file, whatever replaces ``path`` meanwhile); MMFuseError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MMFuseError(f"{field}={path}: no such file. {fix}")
    with open_verified(path, field, fix) as f:
        return _load(f, path, field, fix)


def _load(f: Any, path: Path, field: str, fix: str) -> Any:
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        called = re.search(r"GLOBAL (\S+)", str(e))
        what = f" (it calls {called.group(1)})" if called else ""
        raise MMFuseError(f"{field}={path}: refused, it holds Python objects other than tensors and plain "
                          f"containers{what}, which could run code when loaded; nothing of it was run. "
                          f"{fix}") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError ... for damaged files
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise MMFuseError(f"{field}={path}: cannot be read as a checkpoint, truncated or damaged "
                          f"({type(e).__name__}: {first}). {fix}") from None


class CheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint plugin with mmfuse's writing and reading (see the module docstring).

    ``load_checkpoint`` is what ``trainer.fit(ckpt_path=...)`` calls to resume: always ``weights_only``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("mmfuse's CheckpointIO takes no storage_options")
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, field="ckpt_path", fix=resume_fix(path))

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        checksum_path(path).unlink(missing_ok=True)


def remove_temporaries(checkpoint_dir: str | Path) -> list[Path]:
    """Remove the temporary files (``TEMPORARY``) that a writer killed while saving left in
    ``checkpoint_dir``; nothing else. Only for a directory no process is writing to (a resumed run's)."""
    removed = []
    for p in sorted(Path(checkpoint_dir).glob(".*.tmp")):
        if TEMPORARY.fullmatch(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.warning("removed %d temporary file(s) of an interrupted checkpoint save: %s", len(removed),
                    ", ".join(p.name for p in removed))
    return removed


def run_disk_usage(run_dir: str | Path) -> dict[str, int]:
    """Bytes (file sizes) a run directory holds: ``checkpoints`` (``<run_dir>/checkpoints/``, checksum
    files included, temporary files of a save in progress or interrupted, ``TEMPORARY``, not) and
    ``other`` (the rest: logs, ``.hydra``, a feature cache placed inside it, those temporary files)."""
    run_dir = Path(run_dir)
    usage = {"checkpoints": 0, "other": 0}
    for root, _, files in os.walk(run_dir):
        in_checkpoints = Path(root).is_relative_to(run_dir / "checkpoints")
        for name in files:
            part = "checkpoints" if in_checkpoints and not TEMPORARY.fullmatch(name) else "other"
            try:
                usage[part] += os.lstat(Path(root) / name).st_size
            except OSError:  # removed while walking
                pass
    return usage
