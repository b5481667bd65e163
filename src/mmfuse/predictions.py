"""Per-sample scores of an evaluation pass, ``<run dir>/predictions/<split>.npz``, for paired tests.

A task's ``per_sample`` (``mmfuse.tasks.base``) gives, per evaluated sample, its score on the metrics that
are means over samples (``acc``, ``vqa_acc``) and what identifies it (``label``, ``pair_type``). The file
holds those columns in evaluation order (the split's loader does not shuffle, so position ``i`` is the same
sample in every run on the same data) and ``index`` = ``0 … n−1``. ``numpy.savez`` of plain arrays, read
with ``allow_pickle=False``: a file of another run never runs code.

Runs under several processes (DDP) write no file: each rank holds a share of the split, and the sampler
pads the shares with repeated samples; evaluate such a run's checkpoint with ``eval.py`` on one device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmfuse.errors import MMFuseError

FOLDER = "predictions"


def path_for(run_dir: str | Path, split: str) -> Path:
    return Path(run_dir) / FOLDER / f"{split}.npz"


class PredictionLog:
    """The per-sample columns of one evaluation pass per stage, collected batch by batch where they were
    computed (no device-to-host copy per batch) and moved to the CPU once, by ``columns``."""

    def __init__(self) -> None:
        self._parts: dict[str, list[dict[str, torch.Tensor]]] = {}

    def reset(self, stage: str) -> None:
        self._parts[stage] = []

    def add(self, stage: str, columns: dict[str, torch.Tensor] | None) -> None:
        if columns is not None:
            self._parts.setdefault(stage, []).append({k: v.detach() for k, v in columns.items()})

    def columns(self, stage: str) -> dict[str, np.ndarray]:
        parts = self._parts.get(stage) or []
        if not parts:
            return {}
        names = list(parts[0])
        out = {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in names}
        out["index"] = np.arange(len(out[names[0]]), dtype=np.int64)
        return out

    def write(self, stage: str, path: Path) -> Path | None:
        """Write ``stage``'s columns to ``path`` (atomically); None (nothing written) when there are none."""
        columns = self.columns(stage)
        if not columns:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **columns)
        tmp.replace(path)
        return path


def read(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a predictions file; an ``MMFuseError`` that names the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise MMFuseError(f"{path}: no such file. Per-sample predictions are written by training runs (val, test) "
                          "and eval.py on one device; re-run eval.py ckpt_path=<its checkpoint> to write them")
    try:
        with np.load(path, allow_pickle=False) as data:
            columns = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise MMFuseError(f"{path}: not a predictions file ({e}); delete it and re-run eval.py on that run") from None
    lengths = {k: v.shape for k, v in columns.items()}
    if "index" not in columns or any(v.ndim != 1 or len(v) != len(columns["index"]) for v in columns.values()):
        raise MMFuseError(f"{path}: expected 1-d columns of one length with an 'index', got {lengths}; delete it "
                          "and re-run eval.py on that run")
    return columns
