"""One cache entry on disk: a directory of ``.npy`` arrays and a ``manifest.json``, published atomically.

Layout: ``<root>/<key>/{manifest.json, pooled.npy[, tokens.npy, mask.npy]}``. An entry is written
into ``<root>/<key>.tmp-<pid>-<random>/``; ``publish`` flushes and fsyncs every array, records each
file's size and sha256 in the manifest, re-opens the files to check them against it (sizes, headers,
shapes, dtypes), and only then renames the directory to ``<root>/<key>``. A writer killed at any point leaves a ``.tmp-`` directory
that no reader looks at (and the next writer of that key deletes it), never a half-written entry.

Disk space: ``array`` checks, before it creates a file, that the folder's free space
(``shutil.disk_usage``) holds the new array and any earlier one of the entry whose blocks could not
be reserved, then reserves the file's blocks (Linux ``fallocate(fd, 0, 0, size)``, so that no other
writer can take them). Where the file system cannot reserve blocks (NFSv3, FUSE, older ZFS:
``EOPNOTSUPP`` / ``ENOSYS``) the file stays sparse and counts against the next check. glibc's
``posix_fallocate`` is not used on Linux: there it emulates the reservation by writing one byte into
every 4 KB block (65,536 writes for a 256 MB array); it is used only where libc has no ``fallocate``
(other systems). A full disk is thus
an ``MMFuseError`` ("no space left on <dir>, needs N MB (has M MB free)") before any row is written,
never a SIGBUS from writing into a sparse memory map.

``open_entry`` checks an entry before it is used: the manifest parses, every file exists with the
recorded size and, with ``verify="checksum"``, the recorded sha256; any mismatch raises
``CacheCorrupt`` with the reason. Arrays are returned memory-mapped (read-only).
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmfuse.errors import MMFuseError
from mmfuse.features.keys import FORMAT_VERSION, file_sha256

MANIFEST = "manifest.json"
VERIFY_MODES = ("checksum", "size")


class CacheCorrupt(Exception):
    """A cache entry that must not be trusted; the message says which file and why."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class EntryWriter:
    """Collects the arrays of one entry in a temporary directory, then ``publish``es it under ``key``."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = Path(root)
        self.key = key
        self.tmp = self.root / f"{key}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp.mkdir(parents=True)
        self.arrays: dict[str, np.memmap] = {}
        self.unreserved = 0  # bytes of arrays whose blocks the file system could not reserve (sparse)

    def array(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A zero-filled array backed by ``<tmp>/<name>.npy`` to write rows into (disk space checked
        and reserved first; see the module docstring)."""
        needs = math.prod(shape) * np.dtype(dtype).itemsize + self.unreserved
        free = shutil.disk_usage(self.tmp).free
        if needs > free:
            raise self.no_space(needs, free)
        path = self.tmp / f"{name}.npy"
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self.arrays[name] = arr
        if not _reserve(path, self, needs):
            self.unreserved += arr.nbytes
        return arr

    def no_space(self, needs: int, free: int) -> MMFuseError:
        return MMFuseError(
            f"feature cache: no space left on {self.root}, needs {math.ceil(needs / 1e6):,} MB (has "
            f"{free // 1_000_000:,} MB free). Fix: free space there, put the cache elsewhere "
            "(paths.cache_dir=<a folder with space> or cache.dir=...), or cache=off")

    def publish(self, manifest: dict[str, Any]) -> Path:
        files = {}
        for name, arr in self.arrays.items():
            arr.flush()
            path = self.tmp / f"{name}.npy"
            _fsync_file(path)
            files[name] = {"file": path.name, "shape": list(arr.shape), "dtype": str(arr.dtype),
                           "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        self.arrays.clear()
        manifest = {"format": FORMAT_VERSION, "key": self.key, "created_at": time.time(), **manifest,
                    "files": files}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync_file(self.tmp / MANIFEST)
        open_entry(self.tmp, verify="size")  # files, sizes, headers, shapes and dtypes as recorded
        final = self.root / self.key
        if final.exists():  # a corrupt entry or one being rebuilt: move it aside, then drop it
            aside = self.root / f"{self.key}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.rename(self.tmp, final)
        _fsync_dir(self.root)
        return final

    def abort(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _libc_fallocate() -> Any:
    """libc's Linux ``fallocate(fd, mode, offset, len)`` (64-bit offsets), or None where it has none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's symbols, libc's among them
    except (OSError, TypeError):  # TypeError: Windows has no such handle
        return None
    for name in ("fallocate64", "fallocate"):  # the same function where off_t is 64 bits
        fn = getattr(libc, name, None)
        if fn is not None:
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            fn.restype = ctypes.c_int
            return fn
    return None


_fallocate = _libc_fallocate()
_CANNOT_RESERVE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def _allocate(fd: int, length: int) -> int:
    """Reserve bytes ``[0, length)`` of ``fd``: 0, or the errno of the failure."""
    if _fallocate is not None:
        while _fallocate(fd, 0, 0, length) != 0:
            err = ctypes.get_errno()
            if err != errno.EINTR:
                return err
        return 0
    if not hasattr(os, "posix_fallocate"):  # macOS: nothing reserves blocks
        return errno.ENOSYS
    try:
        os.posix_fallocate(fd, 0, length)
    except OSError as e:
        return errno.EOPNOTSUPP if e.errno == errno.EINVAL else e.errno  # FreeBSD's ZFS says EINVAL
    return 0


def _reserve(path: Path, writer: EntryWriter, needs: int) -> bool:
    """Allocate the blocks of ``path`` (a sparse file until rows are written); False where the file
    system cannot (the file stays sparse), ``writer.no_space`` when the disk is full."""
    fd = os.open(path, os.O_RDWR)
    try:
        err = _allocate(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    if err in _CANNOT_RESERVE:
        return False
    if err in _NO_SPACE:
        raise writer.no_space(needs, shutil.disk_usage(writer.root).free)
    if err:  # EFBIG (a file system's size limit), EIO, ...
        raise MMFuseError(f"feature cache: cannot reserve {math.ceil(needs / 1e6):,} MB for {path} "
                          f"({os.strerror(err)}). Fix: put the cache elsewhere (paths.cache_dir=<another "
                          "folder> or cache.dir=...), or cache=off")
    return True


def remove_stale(root: Path, key: str) -> list[Path]:
    """Delete leftovers of killed writers of ``key`` (call only while holding the key's lock)."""
    removed = []
    for path in list(root.glob(f"{key}.tmp-*")) + list(root.glob(f"{key}.old-*")):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def read_manifest(entry: Path) -> dict[str, Any]:
    path = Path(entry) / MANIFEST
    if not path.is_file():
        raise CacheCorrupt(f"{path} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CacheCorrupt(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or "files" not in manifest:
        raise CacheCorrupt(f"{path} is not a format-{FORMAT_VERSION} manifest")
    return manifest


def check_files(entry: Path, manifest: dict[str, Any], verify: str) -> None:
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify={verify!r}: expected one of {VERIFY_MODES}")
    for name, info in manifest["files"].items():
        path = Path(entry) / info["file"]
        if not path.is_file():
            raise CacheCorrupt(f"{path} ({name}) is missing")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise CacheCorrupt(f"{path} has {size} bytes, the manifest records {info['bytes']} (truncated or overwritten)")
        if verify == "checksum" and file_sha256(path) != info["sha256"]:
            raise CacheCorrupt(f"{path}: sha256 differs from the manifest (the file is corrupted)")


def load_arrays(entry: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The entry's arrays, memory-mapped read-only (shape and dtype checked against the manifest)."""
    arrays = {}
    for name, info in manifest["files"].items():
        path = Path(entry) / info["file"]
        try:
            arr = np.load(path, mmap_mode="r") if int(np.prod(info["shape"])) else np.load(path)
        except (OSError, ValueError) as e:
            raise CacheCorrupt(f"{path} cannot be read as an array ({type(e).__name__}: {e})") from None
        if list(arr.shape) != info["shape"] or str(arr.dtype) != info["dtype"]:
            raise CacheCorrupt(f"{path} holds {arr.dtype}{list(arr.shape)}, the manifest records "
                               f"{info['dtype']}{info['shape']}")
        arrays[name] = arr
    return arrays


def open_entry(entry: Path, verify: str = "checksum") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(manifest, arrays)`` of a checked entry; raises ``CacheCorrupt`` when it must not be used."""
    manifest = read_manifest(entry)
    check_files(entry, manifest, verify)
    return manifest, load_arrays(entry, manifest)
