"""The comparison table: one row per run, sorted by the metric, best marked; CSV and Markdown.

Columns: ``rank`` (1 = best; ``best`` marks it), ``run``, the overridden keys that vary across the runs,
the metric, ``wall_time_s``, ``status``, ``error``. Completed runs with the metric come first, best
first (``mode``: ``max``, or ``min`` for losses); then the others (failed, running, no such metric).

When seeds were swept, ``aggregate`` gives mean, sample standard deviation and count of the metric
over the runs that differ only in ``seed``.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfuse.compare.runs import Run, common_overrides, grouping_keys, varying_keys

SEED_KEY = "seed"


def default_mode(metric: str) -> str:
    return "min" if metric.split("/")[-1].endswith("loss") else "max"


def has_metric(run: Run, metric: str) -> bool:
    return run.status == "completed" and metric in run.metrics and math.isfinite(run.metrics[metric])


def sort_runs(runs: list[Run], metric: str, mode: str) -> list[Run]:
    sign = -1.0 if mode == "max" else 1.0
    scored = sorted((r for r in runs if has_metric(r, metric)), key=lambda r: sign * r.metrics[metric])
    return scored + [r for r in runs if not has_metric(r, metric)]


def rows(runs: list[Run], metric: str, mode: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and rows of the table (see the module docstring)."""
    keys = varying_keys(runs)
    header = ["rank", "best", "run", *keys, metric, "wall_time_s", "status", "error"]
    out = []
    for i, r in enumerate(sort_runs(runs, metric, mode)):
        scored = has_metric(r, metric)
        out.append({"rank": i + 1 if scored else "", "best": "best" if scored and i == 0 else "", "run": r.name,
                    **{k: r.value(k) if r.value(k) is not None else "" for k in keys},
                    metric: r.metrics[metric] if scored else "",
                    "wall_time_s": "" if r.wall_time_s is None else round(float(r.wall_time_s), 1),
                    "status": r.status, "error": (r.error or "").replace("\n", " ")})
    return header, out


def write_csv(path: Path, header: list[str], table: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(table)


def _cell(v: Any, width: int = 80) -> str:
    text = f"{v:.4f}" if isinstance(v, float) and not isinstance(v, bool) else ("" if v is None else str(v))
    text = text.replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown(header: list[str], table: list[dict[str, Any]], metric: str, mode: str, runs: list[Run],
             aggregated: list[Aggregate] | None = None) -> str:
    common = common_overrides(runs)
    n_done = sum(has_metric(r, metric) for r in runs)
    lines = [f"{len(runs)} runs, {n_done} with {metric} ({'higher' if mode == 'max' else 'lower'} is better)"]
    if common:
        lines.append("common overrides: " + " ".join(f"`{k}={v}`" for k, v in common.items()))
    tuned = sorted({k for r in runs for k in r.tuned})
    if tuned:
        lines.append(f"per-fusion tuning (tuning.json): the final runs only; {', '.join(tuned)} chosen on val per row")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [str(row[h]) if h == "wall_time_s" else _cell(row[h]) for h in header]
        if row["best"]:
            cells[header.index(metric)] = f"**{cells[header.index(metric)]}**"
        lines.append("| " + " | ".join(cells) + " |")
    if aggregated:
        lines += ["", f"{metric} over seeds (mean ± sample std, n runs):", "",
                  "| " + " | ".join([*aggregated[0].group, "mean", "std", "n"]) + " |",
                  "|" + "---|" * (len(aggregated[0].group) + 3)]
        for a in aggregated:
            std = "" if a.std is None else f"{a.std:.4f}"
            lines.append("| " + " | ".join([*(_cell(v) for v in a.group.values()), f"{a.mean:.4f}", std, str(a.n)]) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class Aggregate:
    group: dict[str, str]  # the varying keys other than seed, and their values
    mean: float
    std: float | None  # sample standard deviation (n - 1), None for one run
    n: int
    runs: list[Run] = field(default_factory=list)  # the runs averaged, in collection order
    ci: tuple[float, float] | None = None  # set by --ci (``significance``): the plot's error bar
    holds: bool = False  # set by --test: the difference from the baseline holds (a ``*`` on the plot)
    metric: str = ""

    @property
    def values(self) -> list[float]:
        return [r.metrics[self.metric] for r in self.runs]


def aggregate(runs: list[Run], metric: str) -> list[Aggregate]:
    """Mean / std / count of ``metric`` over runs that differ only in ``seed`` (and the keys tuned per arm;
    completed runs only)."""
    keys = grouping_keys(runs)
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        if has_metric(r, metric):
            groups.setdefault(tuple(r.value(k) for k in keys), []).append(r)
    out = []
    for values_key, members in groups.items():
        values = [r.metrics[metric] for r in members]
        out.append(Aggregate(group=dict(zip(keys, ("" if v is None else str(v) for v in values_key))),
                             mean=statistics.fmean(values),
                             std=statistics.stdev(values) if len(values) > 1 else None, n=len(values),
                             runs=members, metric=metric))
    return out
