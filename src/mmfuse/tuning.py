"""Per-arm tuning inside one sweep (``hparams_search=per_fusion``, run by
``hydra_plugins.mmfuse_sweepers.per_fusion.PerFusionSweeper``).

The command line's sweeps (``fusion=glob(*)``, ``fusion=add,mul``, any other swept key) make the *arms*.
For each arm:

1. **search**: every point of ``grid`` (the cartesian product of its values, e.g. learning rate × weight
   decay) is trained once with ``seed=search_seed`` and ``test=false``, into
   ``<sweep>/tune/<arm>/<k>``; its score is ``optimized_metric`` (or the task's monitor, a ``val/``
   metric), read from the run's results. The test split is never evaluated in this stage.
2. **selection**: the point with the best score (``direction``: ``max``, or ``min``; ``auto`` is ``min``
   for a loss, else ``max``; ties go to the first point in grid order; failed runs are left out).
3. **final**: the selected point retrained with each of ``seeds`` and ``test=true``, into
   ``<sweep>/final/<arm>/seed<s>``; these runs are the ones to report (``python -m mmfuse.compare
   <sweep> --metric test/acc``: compare reads ``final/`` and groups by the arms).

``<sweep>/tuning.json`` records the grid, every search run's score and ``ended_by`` (the step / epoch budget
or early stopping), the selected point and the final runs' directories. Re-running the same command in
the same ``hydra.sweep.dir`` skips the completed runs (their results are read back) and selects the
same points.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfuse.errors import MMFuseError

FILENAME = "tuning.json"
TUNE, FINAL = "tune", "final"


@dataclass
class Arm:
    overrides: list[str]  # the swept keys' values, e.g. ["fusion=add"]
    name: str  # the directory name: "add"
    search: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    final: list[str] = field(default_factory=list)
    final_status: list[str] = field(default_factory=list)


def flatten_grid(grid: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": [...], "weight_decay": [...]}}`` → ``{"optimizer.lr": [...], ...}`` (a config
    key per list of values; the grid is nested in the config so that each key can be overridden)."""
    flat: dict[str, Any] = {}
    for k, v in grid.items():
        if isinstance(v, Mapping):
            flat.update(flatten_grid(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[list[str]]:
    """``{"optimizer.lr": [1e-3, 3e-3], "optimizer.weight_decay": [0, 0.01]}`` → the 4 override lists, the
    last key varying fastest."""
    if not grid:
        raise MMFuseError("hparams_search=per_fusion: hydra.sweeper.grid is empty; give at least one key, e.g. "
                          "hydra.sweeper.grid.optimizer.lr=[3e-4,1e-3,3e-3]")
    keys = list(grid)
    for k in keys:
        if isinstance(grid[k], (str, bytes)) or not isinstance(grid[k], Sequence) or not grid[k]:
            raise MMFuseError(f"hparams_search=per_fusion: hydra.sweeper.grid.{k} must be a non-empty list, "
                              f"got {grid[k]!r}")
    return [[f"{k}={v}" for k, v in zip(keys, values)] for values in itertools.product(*(grid[k] for k in keys))]


def arm_name(overrides: Sequence[str]) -> str:
    """A directory name from the arm's values: ``["fusion=add", "encoder.image=resnet18"]`` → ``add-resnet18``."""
    values = [o.split("=", 1)[1] if "=" in o else o for o in overrides]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(values)) or "all"


def resolve_direction(direction: str, metric: str | None) -> str:
    if direction == "auto":
        return "min" if (metric or "").split("/")[-1].endswith("loss") else "max"
    if direction not in ("max", "min"):
        raise MMFuseError(f"hparams_search=per_fusion: hydra.sweeper.direction={direction!r}: expected auto, max or min")
    return direction


def select(scores: Sequence[float | None], direction: str) -> int | None:
    """The index of the best finite score (the first of equal ones); None when no run gave one."""
    best = None
    for i, s in enumerate(scores):
        if s is None or not math.isfinite(s):
            continue
        if best is None or (s > scores[best] if direction == "max" else s < scores[best]):
            best = i
    return best


def check_no_overlap(grid_keys: Sequence[str], arguments: Sequence[str]) -> None:
    """A key searched by the grid may not also be set on the command line or in the config's sweeper params
    (the grid would silently win); ``arguments`` are overrides or bare keys."""
    for a in arguments:
        key = a.split("=", 1)[0].lstrip("+~")
        if key in grid_keys:
            raise MMFuseError(f"{a}: {key} is searched by hparams_search=per_fusion (hydra.sweeper.grid.{key}); "
                              "remove it from the command line, or set the grid: "
                              f"hydra.sweeper.grid.{key}=[...]")
        if key == "seed":
            raise MMFuseError(f"{a}: hparams_search=per_fusion sets the seeds itself (hydra.sweeper.search_seed for "
                              "the search, hydra.sweeper.seeds for the final runs); remove it from the command line")
        if key == "test":
            raise MMFuseError(f"{a}: hparams_search=per_fusion sets test itself (false while searching, true for the "
                              "final runs); remove it from the command line")


def search_job(arm: Arm, point: list[str], k: int, search_seed: int) -> list[str]:
    return [*arm.overrides, *point, f"seed={search_seed}", "test=false", f"hydra.sweep.subdir={TUNE}/{arm.name}/{k}"]


def final_job(arm: Arm, point: list[str], seed: int) -> list[str]:
    return [*arm.overrides, *point, f"seed={seed}", "test=true", f"hydra.sweep.subdir={FINAL}/{arm.name}/seed{seed}"]


def run_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_summary(sweep_dir: Path, grid: Mapping[str, Sequence[Any]], metric: str | None, direction: str,
                  seeds: Sequence[int], search_seed: int, fixed: Sequence[str], arms: Sequence[Arm]) -> Path:
    path = sweep_dir / FILENAME
    path.write_text(json.dumps({
        "grid": {k: list(v) for k, v in grid.items()}, "metric": metric, "direction": direction,
        "search_seed": search_seed, "seeds": list(seeds), "fixed_overrides": list(fixed),
        "arms": [{"overrides": a.overrides, "name": a.name, "search": a.search, "best": a.best, "final": a.final,
                  "final_status": a.final_status}
                 for a in arms],
    }, indent=2) + "\n")
    return path


def read_tuning(sweep_dir: Path) -> dict[str, Any] | None:
    """The ``tuning.json`` of a per-fusion sweep directory, or None for any other directory."""
    path = Path(sweep_dir) / FILENAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MMFuseError(f"{path}: cannot be read as JSON ({e}); re-run the sweep command to write it again") from None
