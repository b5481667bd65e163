"""Write files so that a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _replace_from_temp(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    _replace_from_temp(Path(path), lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()
    _replace_from_temp(Path(path), lambda f: f.write(data))
