"""Issue 13, entry points and run lifecycle: signals, wrapped user errors, corrupt and in-progress
``results.json``, file modes, validation, start-up imports, ``train.log``."""

from __future__ import annotations

import os

import pytest

from mmfuse.data.atomic import atomic_torch_save, atomic_write_json

# ---- file modes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_files_get_the_umasks_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json({"a": 1}, tmp_path / "results.json")
        atomic_torch_save({"a": 1}, tmp_path / "x.pt")
    finally:
        os.umask(old)
    assert oct((tmp_path / "results.json").stat().st_mode & 0o777) == oct(mode)
    assert oct((tmp_path / "x.pt").stat().st_mode & 0o777) == oct(mode)
