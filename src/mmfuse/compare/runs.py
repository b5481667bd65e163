"""Runs to compare, read from ``results.json`` files (or the W&B API, see ``wandb_source``).

A ``Run`` holds what the table and the plot need: its overrides as ``{key: value}``, group choices,
final metrics, wall time, status and error. ``varying_keys`` are the override keys whose value is not
the same in every run (the table's columns); the others are common to the sweep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

from mmfuse.errors import MMFuseError
from mmfuse.results import FILENAME
from mmfuse.tuning import FINAL, read_tuning


@dataclass
class Run:
    name: str
    status: str
    overrides: dict[str, str] = field(default_factory=dict)
    choices: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    wall_time_s: float | None = None
    error: str | None = None
    source: str = ""
    monitor: str | None = None
    tuned: tuple[str, ...] = ()  # keys tuned per arm (hparams_search=per_fusion): shown, but not rows of their own

    def value(self, key: str) -> str | None:
        """An override's value, else the group option (``fusion`` is ``mul`` when not overridden)."""
        return self.overrides.get(key, self.choices.get(key))


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """``["fusion=add", "+x.y=1"]`` -> ``{"fusion": "add", "x.y": "1"}`` (deletions ``~key`` left out)."""
    out = {}
    for text, o in zip(overrides, OverridesParser.create().parse_overrides(list(overrides)), strict=True):
        if o.is_delete():
            continue
        out[o.key_or_group.lstrip("+")] = text.split("=", 1)[1] if "=" in text else ""
    return out


def _job_order(path: Path) -> tuple:
    """Sort key: numeric path parts as numbers (job 10 after job 9)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def run_from_results(results: dict[str, Any], name: str, source: str) -> Run:
    return Run(name=name, status=str(results.get("status", "unknown")),
               overrides=parse_overrides(results.get("overrides") or []), choices=dict(results.get("choices") or {}),
               metrics={k: float(v) for k, v in (results.get("metrics") or {}).items() if v is not None},
               wall_time_s=results.get("wall_time_s"), error=results.get("error"), source=source,
               monitor=results.get("monitor"))


def collect(dirs: list[str | Path], kind: str = "train") -> list[Run]:
    """Every ``results.json`` of ``kind`` in or under ``dirs`` (a run directory, a sweep, or any folder).
    A per-fusion tuning sweep (``tuning.json``, ``mmfuse.tuning``) gives its final runs only, with the grid's
    keys marked as ``tuned``."""
    runs: list[Run] = []
    for d in dirs:
        root = Path(d)
        tunings: dict[Path, dict[str, Any] | None] = {}
        if not root.exists():
            raise MMFuseError(f"{root}: no such directory. Fix: give a sweep or run directory, e.g. "
                              "outputs/multirun/<date>/<time>")
        files = [root / FILENAME] if (root / FILENAME).is_file() else sorted(
            (p for p in root.rglob(FILENAME) if "wandb" not in p.relative_to(root).parts),
            key=lambda p: _job_order(p.relative_to(root)))
        for f in files:
            try:
                results = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise MMFuseError(f"{f}: cannot be read as JSON ({e}); delete it or re-run that job") from None
            if results.get("kind", "train") != kind:
                continue
            rel = f.parent.relative_to(root)
            sweep, tuning = tuning_sweep(f.parent, tunings)
            if tuning is not None and f.parent.resolve().relative_to(sweep).parts[:1] != (FINAL,):
                continue  # a search run: it saw no test split and is not one of the reported seeds
            name = str(Path(root.name) / rel) if len(dirs) > 1 else (str(rel) if str(rel) != "." else root.name)
            run = run_from_results(results, name, str(f.parent))
            if tuning is not None:
                run.tuned = tuple(tuning.get("grid") or ())
            runs.append(run)
    if not runs:
        raise MMFuseError(f"no {kind} results.json in or under {', '.join(map(str, dirs))}. Fix: give the directory "
                          "of a sweep (outputs/multirun/<date>/<time>) or of runs")
    return runs


def tuning_sweep(run_dir: Path, seen: dict[Path, Any]) -> tuple[Path | None, dict[str, Any] | None]:
    """The per-fusion tuning sweep that holds ``run_dir`` (the nearest folder above it with a ``tuning.json``,
    ``mmfuse.tuning``) and its record, or ``(None, None)``."""
    for folder in run_dir.resolve().parents:
        if folder not in seen:
            seen[folder] = read_tuning(folder)
        if seen[folder] is not None:
            return folder, seen[folder]
    return None, None


def varying_keys(runs: list[Run]) -> list[str]:
    """Override keys whose value differs between runs (or is missing from some), in first-seen order."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.overrides if k not in keys]
    return [k for k in keys if len({r.value(k) for r in runs}) > 1]


def grouping_keys(runs: list[Run]) -> list[str]:
    """The varying keys that make a row of the aggregates: not ``seed``, not the keys tuned per arm."""
    tuned = {k for r in runs for k in r.tuned}
    return [k for k in varying_keys(runs) if k != "seed" and k not in tuned]


def common_overrides(runs: list[Run]) -> dict[str, str]:
    varying = set(varying_keys(runs))
    return {k: v for k, v in runs[0].overrides.items() if k not in varying}
