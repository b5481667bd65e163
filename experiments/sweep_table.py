"""A sweep's runs as a table of mean ± std over seeds, from their ``results.json`` (never the logs).

Shared by ``experiments/shapes_video/report.py`` and ``experiments/shapes_av/report.py``:

- ``load_runs(dirs, key)``: every ``results.json`` below the sweep directories; completed training runs
  grouped by ``key(record)`` (a tuple of strings, one table row), the others listed as problems
  (``"<run dir>: status=<status> <error>"``), never dropped silently.
- ``summarise(groups, columns)``: per row, per column ``{"mean", "std", "n"}`` over the row's runs
  that have that metric (``std`` the sample standard deviation, 0 for one run; the cell is None when no
  run has it), plus the row's ``seeds``, ``steps`` and mean ``wall_s``.
- ``markdown`` / ``heatmap`` / ``write``: ``table.md`` (a cell ``mean ± std``, with ``(n=k)`` when fewer
  runs than the row's have the metric), ``table.json`` (the rows) and ``table.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def arguments(doc: str, out: Path, title: str) -> argparse.ArgumentParser:
    """The command line every report takes: sweep dirs, ``--out``, ``--name``, ``--title``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep (multirun) directories")
    parser.add_argument("--out", type=Path, default=out, help="where table.md and the plot go")
    parser.add_argument("--name", default="table", help="file stem of the table and plot")
    parser.add_argument("--title", default=title)
    return parser


def override(record: dict, key: str, default: str) -> str:
    """The value of ``key=<value>`` among the run's command-line overrides, else ``default``."""
    for o in record.get("overrides") or []:
        name, _, value = o.lstrip("+~").partition("=")
        if name == key:
            return value
    return default


def load_runs(dirs: Sequence[Path], key: Callable[[dict], tuple[str, ...]]) -> tuple[dict[tuple, list[dict]], list[str]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    problems = []
    for d in dirs:
        files = sorted(Path(d).rglob("results.json"))
        if not files:
            raise SystemExit(f"{d}: no results.json below this directory; give a sweep directory")
        for f in files:
            r = json.loads(f.read_text())
            if r.get("kind", "train") != "train":
                continue  # an eval.py record beside a run is not a training run of the sweep
            if r.get("status") != "completed":
                problems.append(f"{f.parent}: status={r.get('status')} {r.get('error') or ''}".strip())
                continue
            groups[key(r)].append(r)
    return groups, problems


def cell(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(groups: dict[tuple, list[dict]], key_names: Sequence[str], columns: Sequence[str]) -> list[dict]:
    """One row per group, in the groups' order; ``columns`` are metric names of ``results["metrics"]``."""
    rows = []
    for key, runs in groups.items():
        row: dict[str, Any] = dict(zip(key_names, key))
        row.update(runs=len(runs), seeds=sorted(r.get("seed") for r in runs),
                   steps=sorted({r.get("steps") for r in runs if r.get("steps") is not None}),
                   wall_s=statistics.fmean(r.get("wall_time_s") or 0.0 for r in runs))
        row["cells"] = {c: cell([float(r["metrics"][c]) for r in runs if c in (r.get("metrics") or {})])
                        for c in columns}
        rows.append(row)
    return rows


def fmt(c: dict | None, runs: int) -> str:
    if c is None:
        return "–"
    text = f"{c['mean']:.3f} ± {c['std']:.3f}"
    return text if c["n"] == runs else f"{text} (n={c['n']})"


def markdown(rows: list[dict], key_names: Sequence[str], columns: Sequence[str], labels: Sequence[str],
             problems: list[str]) -> str:
    head = [*key_names, "n", "seeds", *labels, "steps", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [*(f"`{r[k]}`" for k in key_names), str(r["runs"]), ",".join(map(str, r["seeds"])),
                 *(fmt(r["cells"][c], r["runs"]) for c in columns), ",".join(map(str, r["steps"])),
                 f"{r['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if problems:
        text += "\nRuns left out (not completed):\n" + "".join(f"- {p}\n" for p in problems)
    return text


def heatmap(rows: list[dict], key_names: Sequence[str], columns: Sequence[str], labels: Sequence[str],
            path: Path, title: str, split_after: int | None = None) -> None:
    """Rows × columns of the means (colour scale 0..1), each cell's value written in it; a vertical line
    after column ``split_after`` (e.g. between accuracies and J)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[r["cells"][c]["mean"] if r["cells"][c] else np.nan for c in columns] for r in rows])
    fig, ax = plt.subplots(figsize=(1.0 * len(columns) + 3.0, 0.4 * len(rows) + 1.6))
    im = ax.imshow(data, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(columns)), list(labels), fontsize=8)
    if split_after is not None:
        ax.axvline(split_after + 0.5, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)), [" / ".join(str(r[k]) for k in key_names) + f" (n={r['runs']})" for r in rows],
                  fontsize=8)
    for i in range(len(rows)):
        for j in range(len(columns)):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, label="mean over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write(out: Path, name: str, text: str, rows: list[dict], problems: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps({"rows": rows, "left_out": problems}, indent=1))


def report(args: argparse.Namespace, key: Callable[[dict], tuple[str, ...]], key_names: Sequence[str],
           columns: Sequence[str], labels: Sequence[str], order: Callable[[tuple], Any] | None = None,
           split_after: int | None = None) -> int:
    """The whole report of a sweep: load the runs (``SystemExit`` listing the problems when none
    completed), rows sorted by ``order`` of ``(key, runs)`` (default: by key), ``table.md`` /
    ``table.json`` / ``table.png`` under ``args.out``, the table printed."""
    groups, problems = load_runs(args.dirs, key)
    if not groups:
        raise SystemExit("no completed runs found" + "".join(f"\n- {p}" for p in problems))
    groups = dict(sorted(groups.items(), key=order) if order else sorted(groups.items()))
    rows = summarise(groups, key_names, columns)
    text = markdown(rows, key_names, columns, labels, problems)
    write(args.out, args.name, text, rows, problems)
    heatmap(rows, key_names, columns, labels, args.out / f"{args.name}.png", args.title, split_after=split_after)
    print(text)
    print(f"wrote {args.out / (args.name + '.md')}, {args.name}.json and {args.name}.png", file=sys.stderr)
    return 0
