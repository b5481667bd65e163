"""Checkpoint files on disk: written by temporary name and rename, checksummed, read without running code.

Every checkpoint that mmfuse writes (Lightning's ``ModelCheckpoint`` best and last, ``StepCheckpoint``,
``train.py``'s final ``last.ckpt``) goes through ``save_checkpoint_file``; every checkpoint it reads
(resume, ``eval.py ckpt_path``, ``init_from``, ``encoder.<side>.pretrained=<path>``) through
``read_checkpoint``. ``CheckpointIO`` is the Lightning plugin that routes the Trainer's saving and
loading (``trainer.fit(ckpt_path=...)`` included) through them.

Writing ``<dir>/last.ckpt``: ``torch.save`` into ``<dir>/.last.ckpt.<random>.tmp``, flushed and fsynced;
the old checksum file ``last.ckpt.sha256.json`` is removed, the temporary file renamed to
``last.ckpt``, and a new checksum file written (itself by temporary name and rename) with the file's
size and sha256 (``mmfuse.features.keys.file_sha256``, as the feature cache records its arrays). A
writer killed or out of space at any point leaves the previous ``last.ckpt`` as it was: at worst
without its checksum file, never a half-written file under the final name. Out of space is an
``MMFuseError`` "no space left on <dir>".

Reading: the size and sha256 are checked against the checksum file (a checkpoint without one, written
before mmfuse checked checkpoints, loads with a warning), then the file is loaded with
``torch.load(weights_only=True)``: tensors and plain containers only, so a crafted file cannot run code.
Every failure is one ``MMFuseError`` line naming the field, the file and the fix.
"""

from __future__ import annotations

import errno
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

from mmfuse.data.atomic import _replace_from_temp, atomic_write_json
from mmfuse.errors import MMFuseError
from mmfuse.features.keys import file_sha256

log = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".sha256.json"
RESUME_FIX = ("Fix: resume from the other checkpoint beside it (ckpt_path=<run dir>/checkpoints/best.ckpt), "
              "or delete it to start the run afresh")
OTHER_FIX = "Fix: give another checkpoint written by python train.py (e.g. best.ckpt beside it)"
_warned_unverified: set[str] = set()


def checksum_path(path: str | Path) -> Path:
    """``<dir>/last.ckpt`` -> ``<dir>/last.ckpt.sha256.json``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


class _RecordingWriter:
    """A file for ``torch.save`` that keeps the ``OSError`` of a failed write: torch's zip writer turns
    it into a RuntimeError ("unexpected pos") that no longer says the disk was full."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

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
        checksum_path(path).unlink(missing_ok=True)  # until the new one is written, none (not a wrong one)

    try:
        _replace_from_temp(path, write)
    except OSError as e:
        raise _disk_full(e, path, f"needs about {tensor_bytes(checkpoint) / 2**20:.0f} MB; the earlier "
                                  f"{path.name}, if any, is unchanged") from None
    try:
        atomic_write_json({"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)},
                          checksum_path(path))
    except OSError as e:
        raise _disk_full(e, checksum_path(path), f"{path.name} itself is whole, but loads unverified") from None


def _disk_full(error: OSError, path: Path, detail: str) -> Exception:
    """An MMFuseError for a full disk (``ENOSPC``), else ``error`` itself."""
    if error.errno != errno.ENOSPC:
        return error
    return MMFuseError(f"no space left on {path.parent} writing {path.name} ({detail}). Fix: free space there "
                       "(or give the run another hydra.run.dir) and re-run the same command to resume")


def verify_checksum(path: Path, field: str, fix: str) -> None:
    """Size and sha256 of ``path`` against its checksum file; a warning when it has none."""
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
    size = path.stat().st_size
    if size != expected_bytes:
        raise MMFuseError(f"{field}={path}: {size} bytes, {record_path.name} records {expected_bytes} "
                          f"(truncated or overwritten). {fix}")
    if file_sha256(path) != expected_sha:
        raise MMFuseError(f"{field}={path}: sha256 differs from {record_path.name} (the file is corrupted). {fix}")


def check_checkpoint_file(path: str | Path, field: str = "ckpt_path", fix: str = RESUME_FIX) -> None:
    """What can be checked without loading: the checksum, and that the file is a whole zip archive
    (the format of ``torch.save``; a truncated file has lost the archive's directory at its end)."""
    path = Path(path)
    verify_checksum(path, field, fix)
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as e:
        raise MMFuseError(f"{field}={path}: not a whole checkpoint file, truncated or damaged ({e}). {fix}") from None


def read_checkpoint(path: str | Path, field: str = "ckpt_path", fix: str = OTHER_FIX) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU after ``verify_checksum``; MMFuseError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MMFuseError(f"{field}={path}: no such file. {fix}")
    verify_checksum(path, field, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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
        return read_checkpoint(path, field="ckpt_path", fix=RESUME_FIX)

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        checksum_path(path).unlink(missing_ok=True)


def run_disk_usage(run_dir: str | Path) -> dict[str, int]:
    """Bytes (file sizes) a run directory holds: ``checkpoints`` (``<run_dir>/checkpoints/``, checksum
    files included) and ``other`` (the rest: logs, ``.hydra``, a feature cache placed inside it)."""
    run_dir = Path(run_dir)
    usage = {"checkpoints": 0, "other": 0}
    for root, _, files in os.walk(run_dir):
        part = "checkpoints" if Path(root).is_relative_to(run_dir / "checkpoints") else "other"
        for name in files:
            try:
                usage[part] += os.lstat(Path(root) / name).st_size
            except OSError:  # removed while walking
                pass
    return usage
