"""``python -m mmfuse.compare <dir> --robustness``: the robustness curves of a sweep's checkpoints.

Reads every eval ``results.json`` with a ``robustness`` section (``eval.py ... +robustness=<name>``) under
the directories. Runs are grouped by the training run's overrides that vary between them (``trained_with``,
fusion first), seeds pooled: each cell is the mean ± standard deviation over the group's runs (ddof 1).
Per perturbation name, curves give ``robustness_<name>.md`` (the metric at each level; relative robustness;
effective robustness against ``--baseline``'s group, MultiBench's late fusion by default, see
``mmfuse.robustness.scores``: per run against the baseline's mean curve) and ``robustness_<name>.png`` (one
line per group, error bars over seeds); ``missing`` sections give the metric per kept subset, the drop per
modality and the Shapley values.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfuse.compare.runs import parse_overrides
from mmfuse.errors import MMFuseError
from mmfuse.results import FILENAME
from mmfuse.robustness.scores import effective_robustness, relative_robustness

SEED = "seed"
IGNORED = ("ckpt_path", "hydra.", "callbacks.", "+robustness", "robustness")


@dataclass
class Evaluated:
    source: str
    trained: dict[str, str]
    section: dict[str, Any]
    group: str = ""


@dataclass
class Report:
    markdown: dict[str, str] = field(default_factory=dict)   # name -> table
    plotted: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # name -> group -> mean curve
    lines: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # name -> the plot's lines, read back
    skipped: int = 0


def read(dirs: list[str | Path]) -> tuple[list[Evaluated], int]:
    found, skipped = [], 0
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise MMFuseError(f"{root}: no such directory")
        for f in sorted(root.rglob(FILENAME)):
            try:
                results = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise MMFuseError(f"{f}: cannot be read as JSON ({e}); delete it or re-run that job") from None
            if results.get("kind") != "eval" or results.get("status") != "completed":
                continue
            if not results.get("robustness"):
                skipped += 1
                continue
            trained = {k: v for k, v in parse_overrides(results.get("trained_with") or []).items()
                       if not k.startswith(IGNORED)}
            found.append(Evaluated(str(f.parent), trained, results["robustness"]))
    if not found:
        raise MMFuseError(f"no eval results.json with a robustness section under {', '.join(map(str, dirs))}. Fix: "
                          "run python eval.py ckpt_path=<run>/checkpoints/best.ckpt +robustness=<name> "
                          "(or eval.py -m ckpt_path=<a>,<b> ... hydra.sweep.dir=<dir>) first")
    return found, skipped


def label_groups(runs: list[Evaluated]) -> None:
    """``group`` = the varying training overrides but the seed, ``fusion`` first (``k=v`` joined by spaces)."""
    keys = sorted({k for r in runs for k in r.trained}, key=lambda k: (k != "fusion", k))
    varying = [k for k in keys if k != SEED and len({r.trained.get(k) for r in runs}) > 1]
    for r in runs:
        r.group = " ".join(f"{k}={r.trained.get(k, '-')}" for k in varying) or "all"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def cell(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.3f}" if s is None else f"{m:.3f} ± {s:.3f}"


def curve_table(name: str, runs: list[Evaluated], baseline: str) -> tuple[str, dict[str, list[float]],
                                                                          dict[str, list[float]]]:
    levels = runs[0].section["levels"]
    metric = runs[0].section["metric"]
    for r in runs:
        if r.section["levels"] != levels or r.section["metric"] != metric:
            raise MMFuseError(f"robustness {name}: {r.source} has levels {r.section['levels']} ({r.section['metric']}), "
                              f"{runs[0].source} has {levels} ({metric}); evaluate them with the same settings "
                              "or compare them separately")
    groups: dict[str, list[Evaluated]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    means = {g: [statistics.fmean(r.section["curve"][metric][k] for r in rs) for k in range(len(levels))]
             for g, rs in groups.items()}
    stds = {g: [statistics.stdev([r.section["curve"][metric][k] for r in rs]) if len(rs) > 1 else 0.0
                for k in range(len(levels))] for g, rs in groups.items()}
    reference = next((g for g in groups if baseline in g.split() or g == baseline), None)
    rows = []
    for g, rs in groups.items():
        rr = [relative_robustness(r.section["curve"][metric]) for r in rs]
        er = ([effective_robustness(r.section["curve"][metric], means[reference]) for r in rs]
              if reference is not None else None)
        rows.append((statistics.fmean(rr), g, rs, rr, er))
    rows.sort(key=lambda row: -row[0])
    head = ["group", "runs", *[f"{lv:g}" for lv in levels], "relative", f"effective (vs {reference or 'n/a'})"]
    lines = [f"### {name}: {metric} by level ({runs[0].section['kind']}, {runs[0].section.get('modality', '')})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, g, rs, rr, er in rows:
        levels_cells = [cell([r.section["curve"][metric][k] for r in rs]) for k in range(len(levels))]
        lines.append("| " + " | ".join([g, str(len(rs)), *levels_cells, cell(rr), cell(er) if er else "n/a"]) + " |")
    if reference is None:
        lines += ["", f"(no group matches --baseline {baseline}: effective robustness not computed)"]
    return "\n".join(lines) + "\n", means, stds


def missing_table(name: str, runs: list[Evaluated]) -> str:
    groups: dict[str, list[Evaluated]] = {}
    for r in runs:
        groups.setdefault((r.section.get("mode", ""), r.group), []).append(r)
    subsets = list(runs[0].section["subsets"])
    modalities = list(runs[0].section["shapley"])
    for r in runs:
        if sorted(r.section["subsets"]) != sorted(subsets) or sorted(r.section["shapley"]) != sorted(modalities):
            raise MMFuseError(f"robustness {name}: {r.source} has subsets {sorted(r.section['subsets'])}, "
                              f"{runs[0].source} has {sorted(subsets)}; compare runs of the same modalities "
                              "separately")
    head = ["mode", "group", "runs", *[f"kept {s or 'none'}" for s in subsets], *[f"drop {m}" for m in modalities],
            *[f"Shapley {m}" for m in modalities]]
    lines = [f"### {name}: {runs[0].section['metric']} with modalities removed", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (mode, g), rs in groups.items():
        cells = [cell([r.section["subsets"][s] for r in rs]) for s in subsets]
        cells += [cell([r.section["drop"][m] for r in rs]) for m in modalities]
        cells += [cell([r.section["shapley"][m] for r in rs]) for m in modalities]
        lines.append("| " + " | ".join([mode, g, str(len(rs)), *cells]) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(path: Path, name: str, levels: list[float], means: dict[str, list[float]],
                stds: dict[str, list[float]], metric: str) -> dict[str, list[float]]:
    """Draws one error-bar line per group; returns label -> y data of the lines drawn, read back from the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for g in means:
        ax.errorbar(levels, means[g], yerr=stds[g], marker="o", capsize=3, label=g)
    ax.set_xlabel(f"{name} level")
    ax.set_ylabel(metric)
    ax.set_title(f"robustness: {name}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    drawn = {c.get_label(): [float(y) for y in c.lines[0].get_ydata()] for c in ax.containers}
    plt.close(fig)
    return drawn


def robustness_report(dirs: list[str | Path], out: Path | None, baseline: str = "fusion=late",
                      make_plot: bool = True) -> Report:
    runs, skipped = read(dirs)
    label_groups(runs)
    report = Report(skipped=skipped)
    by_name: dict[str, list[Evaluated]] = {}
    for r in runs:
        by_name.setdefault(r.section["name"], []).append(r)
    for name, rs in by_name.items():
        if "curve" in rs[0].section:
            text, means, stds = curve_table(name, rs, baseline)
            report.plotted[name] = means
            if out is not None and make_plot:
                out.mkdir(parents=True, exist_ok=True)
                report.lines[name] = plot_curves(out / f"robustness_{name}.png", name, rs[0].section["levels"], means, stds,
                            rs[0].section["metric"])
        else:
            text = missing_table(name, rs)
        report.markdown[name] = text
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"robustness_{name}.md").write_text(text)
    return report
