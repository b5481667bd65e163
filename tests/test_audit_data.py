"""Issue 13, data loading: image paths confined to their folder, duplicate ids, one-line errors for
bad ids and bytes, the pixel limit checked from the header, free disk space for the feature cache."""

from __future__ import annotations

import errno
from collections import namedtuple
from pathlib import Path

import pytest

from conftest import FAST
from mmfuse.builder import build_datamodule, build_module
from mmfuse.errors import MMFuseError
from mmfuse.features import storage
from mmfuse.features.storage import EntryWriter

# -- 5. free disk space for a cache entry -----------------------------------------------------------------

Usage = namedtuple("Usage", "total used free")


def fake_free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - free, free))


def no_space_message(root: Path, needs_mb: int, free_mb: int) -> str:
    return (f"feature cache: no space left on {root}, needs {needs_mb:,} MB (has {free_mb:,} MB free). Fix: free space "
            "there, put the cache elsewhere (paths.cache_dir=<a folder with space> or cache.dir=...), or cache=off")


def test_a_cache_entry_larger_than_the_free_space_is_refused_before_any_file(tmp_path, monkeypatch):
    fake_free(monkeypatch, 3_500_000)
    writer = EntryWriter(tmp_path, "k")
    with pytest.raises(MMFuseError) as err:
        writer.array("pooled", (1000, 1000), "float32")  # 4,000,000 bytes
    assert str(err.value) == no_space_message(tmp_path, 4, 3)
    assert list(writer.tmp.iterdir()) == []  # no sparse file that a later write could SIGBUS on
    assert writer.array("pooled", (1000, 500), "float32").shape == (1000, 500)  # 2 MB fit


def test_arrays_whose_blocks_cannot_be_reserved_count_against_the_next(tmp_path, monkeypatch):
    fake_free(monkeypatch, 5_000_000)

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(storage.os, "posix_fallocate", unsupported)
    writer = EntryWriter(tmp_path, "k")
    writer.array("pooled", (1000, 1000), "float32")  # 4 MB, sparse: the free space has not changed
    with pytest.raises(MMFuseError) as err:
        writer.array("tokens", (1000, 500), "float32")
    assert str(err.value) == no_space_message(tmp_path, 6, 5)


def test_a_full_disk_at_reservation_is_the_same_error(tmp_path, monkeypatch):
    fake_free(monkeypatch, 10**9)  # the check passes; the file system then has no blocks to give

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "posix_fallocate", full)
    with pytest.raises(MMFuseError) as err:
        EntryWriter(tmp_path, "k").array("pooled", (10, 100), "float16")
    assert str(err.value) == no_space_message(tmp_path, 1, 1000)


def test_a_full_cache_disk_stops_setup_with_the_message_and_leaves_no_entry(make_cfg, tmp_path, monkeypatch):
    cache_dir = tmp_path / "features"
    cfg = make_cfg(*FAST, "encoder.image.freeze=true", "encoder.text.freeze=true", f"cache.dir={cache_dir}")
    module = build_module(cfg)
    datamodule = build_datamodule(cfg, module)
    fake_free(monkeypatch, 0)
    with pytest.raises(MMFuseError, match=r"^feature cache: no space left on .*features, needs 1 MB \(has 0 MB "
                                          r"free\)\. Fix: .*or cache=off$"):
        datamodule.setup("fit")
    assert [p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")] == []
