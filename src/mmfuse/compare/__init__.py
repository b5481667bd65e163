"""``python -m mmfuse.compare <sweep dir> [more dirs]``: table and plot of a sweep's runs.

Reads every ``results.json`` under the given directories (or, with ``--wandb ENTITY/PROJECT``, the same
fields from the W&B API), prints a Markdown table (one row per run: the overridden keys that vary as
columns, the metric, wall time, status; sorted by the metric, the best marked; failed runs listed with
their error) and writes ``compare.csv``, ``compare.md`` and ``compare.png`` (the metric by fusion, one
bar per learning rate, mean ± std over seeds when seeds were swept) to ``--out`` (default: the first
directory). Exit code 2 with one line for a problem the user can fix.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfuse.compare.plot import plot
from mmfuse.compare.runs import Run, collect, grouping_keys, varying_keys
from mmfuse.compare.significance import TESTS, Report, significance, write_json
from mmfuse.compare.table import (
    SEED_KEY,
    Aggregate,
    aggregate,
    default_mode,
    has_metric,
    markdown,
    rows,
    write_csv,
)
from mmfuse.compare.wandb_source import collect_wandb
from mmfuse.errors import MMFuseError

__all__ = ["Comparison", "compare", "main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mmfuse.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="*", help="sweep or run directories (searched for results.json)")
    p.add_argument("--metric", help="metric to sort and plot by (default: the runs' monitored metric, e.g. val/acc)")
    p.add_argument("--mode", choices=("max", "min"), help="best is the max or the min (default: min for losses)")
    p.add_argument("--x", dest="x_key", help="key on the plot's x axis (default: fusion)")
    p.add_argument("--out", help="directory for compare.csv / .md / .png (default: the first directory)")
    p.add_argument("--kind", default="train", choices=("train", "eval"), help="which results.json to read")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from the W&B API instead")
    p.add_argument("--group", help="with --wandb: only this group (a sweep's group is its directory)")
    p.add_argument("--no-plot", action="store_true", help="skip compare.png")
    p.add_argument("--robustness", action="store_true",
                   help="the robustness curves / modality removal of eval.py +robustness=<name> runs")
    p.add_argument("--baseline",
                   help="the fusion (or key=value) row that --test tests every row against; with --robustness the "
                        "one effective robustness is measured against (default there: late, as MultiBench)")
    p.add_argument("--ci", type=float, metavar="LEVEL",
                   help="add each row's Student-t interval over seeds at this level (e.g. 0.95); with --test, "
                        "α = 1 − LEVEL (default 0.95)")
    p.add_argument("--test", choices=TESTS,
                   help="test each row against --baseline: welch (over seeds) or paired_bootstrap (over the "
                        "evaluation samples, from each run's predictions/<split>.npz); Holm-corrected")
    p.add_argument("--resamples", type=int, default=10_000, help="paired bootstrap resamples (default 10000)")
    return p.parse_args(argv)


@dataclass
class Comparison:
    markdown: str
    header: list[str]
    rows: list[dict[str, Any]]
    aggregated: list[Aggregate]
    plotted: dict[tuple[str, str], tuple[float, float | None]] = field(default_factory=dict)
    stats: Report | None = None


def compare(runs: list[Run], metric: str | None = None, mode: str | None = None, out: Path | None = None,
            x_key: str | None = None, make_plot: bool = True, title: str = "", confidence: float | None = None,
            test: str | None = None, baseline: str | None = None, resamples: int = 10_000) -> Comparison:
    """Write the table (and plot) for ``runs`` to ``out``; return the table, aggregates and plotted bars.
    With ``confidence`` or ``test``: the intervals and tests of ``mmfuse.compare.significance`` too
    (appended to the Markdown, ``compare_stats.json``, error bars and ``*`` marks on the plot)."""
    metric = metric or next((r.monitor for r in runs if r.monitor), None) or "val/acc"
    if baseline and test is None and confidence is not None:
        print("mmfuse.compare: --baseline is used by --test (and --robustness); add --test welch or paired_bootstrap",
              file=sys.stderr)
    if not any(has_metric(r, metric) for r in runs):
        known = sorted({k for r in runs for k in r.metrics})
        if known:
            raise MMFuseError(f"--metric {metric}: no completed run has it; the runs have {known}")
    mode = mode or default_mode(metric)
    header, table = rows(runs, metric, mode)
    seeds_swept = SEED_KEY in varying_keys(runs)
    aggregated = aggregate(runs, metric)
    text = markdown(header, table, metric, mode, runs, aggregated if seeds_swept else None)
    stats = None
    if confidence is not None or test is not None:
        stats = significance(runs, metric, 0.95 if confidence is None else confidence, test, baseline, resamples,
                             aggregated=aggregated)
        if test is not None and mode == "min":
            stats.markdown += "(lower is better: a negative Δ is an improvement)\n"
        text += "\n" + stats.markdown
    result = Comparison(text, header, table, aggregated, stats=stats)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "compare.csv", header, table)
        (out / "compare.md").write_text(text)
        if stats is not None:
            write_json(stats, out / "compare_stats.json")
        if make_plot and aggregated:
            keys = grouping_keys(runs)
            x = x_key or ("fusion" if "fusion" in keys or not keys else keys[0])
            for a in aggregated:  # the x key may be a group choice that was not overridden
                a.group.setdefault(x, next((r.value(x) for r in runs if r.value(x) is not None), ""))
            not_plotted = sum(not has_metric(r, metric) for r in runs)
            legend = (f"* differs from {'='.join(stats.baseline)} ({stats.test}, Holm)"
                      if stats is not None and stats.test else "")
            result.plotted = plot(aggregated, x, metric, out / "compare.png", title=title, not_plotted=not_plotted,
                                  intervals=stats is not None, legend=legend)
    return result


def _robustness(args: argparse.Namespace) -> int:
    from mmfuse.compare.robustness import robustness_report

    if not args.dirs:
        raise MMFuseError("--robustness reads eval results: give the directories of eval.py +robustness=<name> runs")
    out = Path(args.out or args.dirs[0])
    baseline = args.baseline or "late"
    report = robustness_report(args.dirs, out, baseline if "=" in baseline else f"fusion={baseline}", not args.no_plot)
    print("\n".join(report.markdown.values()), end="")
    if report.skipped:
        print(f"\n({report.skipped} eval results.json without a robustness section left out)")
    print(f"\nwritten to {out}: " + ", ".join(sorted(p.name for p in out.glob("robustness_*"))))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.robustness:
            return _robustness(args)
        if args.wandb:
            runs = collect_wandb(args.wandb, args.group)
            out = Path(args.out) if args.out else None
            title = f"W&B {args.wandb}" + (f" / {args.group}" if args.group else "")
        else:
            if not args.dirs:
                raise MMFuseError("give one or more sweep / run directories, or --wandb ENTITY/PROJECT")
            runs = collect(args.dirs, kind=args.kind)
            out = Path(args.out or args.dirs[0])
            title = ", ".join(args.dirs)
        text = compare(runs, args.metric, args.mode, out, args.x_key, not args.no_plot, title, args.ci, args.test,
                       args.baseline, args.resamples).markdown
    except MMFuseError as e:
        print(f"mmfuse.compare: error: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    if out is not None:
        written = [p for p in ("compare.csv", "compare.md", "compare_stats.json", "compare.png") if (out / p).exists()]
        print(f"\nwritten to {out}: {', '.join(written)}")
    return 0
