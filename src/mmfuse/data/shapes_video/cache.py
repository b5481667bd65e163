"""An on-disk cache for procedurally rendered splits (written for shapes_video; nothing in it is video).

``cached(cache_dir, split, key, render, decode)``: the file ``<cache_dir>/<split>-<h>.pt`` with
``h = sha256(json(key))[:16]`` holds ``render()``, a dict of plain lists, numbers, strings and tensors,
saved atomically. A later call reads it with ``torch.load(weights_only=True)`` and returns
``decode(data)``. A damaged file (unreadable, or ``decode`` raises ``KeyError`` / ``TypeError`` /
``ValueError``) is rendered and written again; a file holding other Python objects, which could run
code when loaded, is refused with an MMFuseError and left for the user to delete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mmfuse.data.atomic import atomic_torch_save, load_plain

T = TypeVar("T")


def cached(cache_dir: Path | None, split: str, key: list[Any], render: Callable[[], dict[str, Any]],
           decode: Callable[[dict[str, Any]], T]) -> T:
    if cache_dir is None:
        return decode(render())
    path = cache_dir / f"{split}-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]}.pt"
    if path.exists():
        data = load_plain(path)
        if data is not None:
            try:
                return decode(data)
            except (KeyError, TypeError, ValueError):
                pass
    data = render()
    atomic_torch_save(data, path)
    return decode(data)
