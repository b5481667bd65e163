"""``--ci`` and ``--test`` of ``python -m mmfuse.compare``: each row's interval over seeds, and whether it
differs from a baseline row (formulas: ``mmfuse.compare.stats``).

Rows are the aggregates over seeds (``table.aggregate``). ``--baseline mul`` (or ``key=value``) names the
baseline: each row is tested against the row that has the baseline's value of that key and the row's
own values of the other varying keys (a fusion × learning-rate sweep tests ``(add, 1e-3)`` against
``(mul, 1e-3)``). The tests:

- ``welch``: the row's seeds against the baseline's seeds (``stats.welch``); it needs ≥ 2 seeds each.
- ``paired_bootstrap``: over evaluation samples (``stats.paired_bootstrap``). Each run's per-sample
  scores are read from ``<run>/predictions/<split>.npz`` (``mmfuse.predictions``; the split and the
  column are the metric's: ``val/acc`` → ``val.npz``, ``acc``); a row's score of a sample is its mean
  over the row's seeds. Both rows must hold the same samples in the same order (same count, same labels),
  and each file must give the run's recorded metric as its mean (else it is from another pass).

Holm's correction runs over every row's test (``stats.holm``); a difference *holds* when its adjusted
p-value is below ``α = 1 − confidence``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmfuse.compare.runs import Run
from mmfuse.compare.stats import holm, paired_bootstrap, t_interval, welch
from mmfuse.compare.table import Aggregate, aggregate
from mmfuse.errors import MMFuseError
from mmfuse.predictions import path_for, read

TESTS = ("welch", "paired_bootstrap")
# metrics recorded as float32: a file's exact mean and the logged value differ by rounding only
METRIC_TOLERANCE = 1e-5


@dataclass
class Row:
    aggregate: Aggregate  # the row's runs over seeds (``table.aggregate``); gets ``ci`` and ``holds``
    diff: float | None = None  # row − baseline (the test's statistic: means over seeds, or over samples)
    p: float | None = None
    p_holm: float | None = None
    is_baseline: bool = False
    note: str = ""

    @property
    def group(self) -> dict[str, str]:
        return self.aggregate.group

    @property
    def runs(self) -> list[Run]:
        return self.aggregate.runs

    @property
    def values(self) -> list[float]:
        return self.aggregate.values

    @property
    def mean(self) -> float:
        return self.aggregate.mean

    @property
    def ci(self) -> tuple[float, float] | None:
        return self.aggregate.ci

    @property
    def holds(self) -> bool:
        return self.aggregate.holds


@dataclass
class Report:
    rows: list[Row]
    metric: str
    confidence: float
    test: str | None
    baseline: tuple[str, str] | None
    markdown: str = ""


def parse_baseline(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    return (key.strip(), value.strip()) if sep else ("fusion", text.strip())


def _partner(row: Row, rows: list[Row], baseline: tuple[str, str]) -> Row | None:
    key, value = baseline
    wanted = {**row.group, key: value}
    return next((r for r in rows if r.group == wanted), None)


def sample_scores(row: Row, metric: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The row's per-sample score (mean over its seeds) and the samples' labels (None without labels)."""
    split, _, column = metric.partition("/")
    scores, labels = [], None
    for run in row.runs:
        if not run.source:
            raise MMFuseError(f"--test paired_bootstrap needs each run's predictions/{split}.npz; run {run.name} has "
                              "no directory (W&B runs): compare the sweep directory instead")
        path = path_for(run.source, split)
        data = read(path)
        if column not in data:
            have = sorted(k for k in data if k != "index")
            raise MMFuseError(f"{path}: no per-sample column {column!r} for {metric} (it has {have}). Fix: --metric "
                              f"{split}/<one of those>, or --test welch (over seeds)")
        values = data[column].astype(np.float64)
        if not np.isfinite(values).all():
            raise MMFuseError(f"{path}: column {column!r} has non-finite values; re-run eval.py on that run")
        if abs(float(values.mean()) - run.metrics[metric]) > METRIC_TOLERANCE:
            raise MMFuseError(f"{path}: its mean {column} is {values.mean():.6f} but {run.source}/results.json records "
                              f"{metric} = {run.metrics[metric]:.6f}: the file is from another pass. Fix: re-run "
                              "eval.py on that run's checkpoint")
        if scores and len(values) != len(scores[0]):
            raise MMFuseError(f"{path}: {len(values)} samples, but {row.runs[0].source} has {len(scores[0])}: "
                              "the seeds of one row were evaluated on different data")
        if "label" in data:
            if labels is not None and not np.array_equal(labels, data["label"]):
                raise MMFuseError(f"{path}: the labels differ from {row.runs[0].source}'s: not the same samples")
            labels = data["label"]
        scores.append(values)
    return np.mean(scores, axis=0), labels


def _paired(row: Row, base: Row, metric: str, confidence: float, resamples: int, seed: int) -> tuple[float, float]:
    x, x_labels = sample_scores(row, metric)
    y, y_labels = sample_scores(base, metric)
    if len(x) != len(y) or (x_labels is not None and y_labels is not None and not np.array_equal(x_labels, y_labels)):
        raise MMFuseError(f"{row.runs[0].source} and {base.runs[0].source}: not evaluated on the same samples "
                          f"({len(x)} vs {len(y)}, or other labels); a paired test needs the same evaluation data")
    result = paired_bootstrap(x, y, confidence, resamples, seed)
    return result.diff, result.p


def significance(runs: list[Run], metric: str, confidence: float = 0.95, test: str | None = None,
                 baseline: str | None = None, resamples: int = 10_000, seed: int = 0,
                 aggregated: list[Aggregate] | None = None) -> Report:
    """Intervals and tests for the rows of ``runs`` (see the module docstring); ``aggregated`` (the
    ``table.aggregate`` of ``runs``, when the caller has it) get their ``ci`` and ``holds`` set."""
    if test is not None and test not in TESTS:
        raise MMFuseError(f"--test {test}: expected one of {TESTS}")
    if test is not None and not baseline:
        raise MMFuseError(f"--test {test} tests each row against a baseline row: add --baseline <fusion> "
                          "(or --baseline key=value)")
    rows = [Row(a) for a in (aggregated if aggregated is not None else aggregate(runs, metric))]
    for row in rows:
        row.aggregate.ci = t_interval(row.values, confidence)
    parsed = parse_baseline(baseline) if baseline else None
    if parsed is not None and test is not None:
        key, value = parsed
        if not any(r.group.get(key) == value for r in rows):
            known = sorted({r.group.get(key, "") for r in rows})
            raise MMFuseError(f"--baseline {baseline}: no row with {key}={value} and {metric} (rows have {key} in "
                              f"{known})")
        tested = []
        for row in rows:
            if row.group.get(key) == value:
                row.is_baseline = True
                continue
            base = _partner(row, rows, parsed)
            if base is None:
                row.note = f"no {key}={value} row with the same other settings"
            elif test == "welch":
                w = welch(row.values, base.values)
                if w is None:
                    row.note = ("needs >= 2 seeds on both sides" if min(len(row.values), len(base.values)) < 2
                                else "no spread over seeds on either side")
                else:
                    row.diff, row.p = w.diff, w.p
            else:
                row.diff, row.p = _paired(row, base, metric, confidence, resamples, seed)
            if row.p is not None:
                tested.append(row)
        for row, adjusted in zip(tested, holm([r.p for r in tested])):
            row.p_holm = adjusted
            row.aggregate.holds = adjusted < 1.0 - confidence
    report = Report(rows, metric, confidence, test, parsed)
    report.markdown = markdown(report)
    return report


def _num(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _p(v: float | None) -> str:
    return "" if v is None else (f"{v:.2e}" if v < 1e-3 else f"{v:.4f}")


def markdown(report: Report) -> str:
    rows = report.rows
    if not rows:
        return ""
    level = f"{round(100 * report.confidence, 2):g}%"
    keys = list(rows[0].group)
    header = [*keys, "mean", f"{level} CI", "n"]
    lines = [f"{report.metric} over seeds: mean, Student-t {level} interval of the mean, n runs"]
    if report.test is not None and report.baseline is not None:
        key, value = report.baseline
        n_tests = sum(r.p is not None for r in rows)
        what = "seeds (Welch's t-test)" if report.test == "welch" else "evaluation samples (paired bootstrap)"
        lines.append(f"each row against {key}={value}, over {what}; Holm's correction over {n_tests} tests; "
                     f"✓: the difference holds at α = {1 - report.confidence:.2g}")
        header += [f"Δ vs {value}", "p", "p (Holm)", "holds"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: -r.mean):
        ci = "" if r.ci is None else f"[{r.ci[0]:.4f}, {r.ci[1]:.4f}]"
        cells = [*(r.group[k] for k in keys), _num(r.mean), ci, str(len(r.values))]
        if report.test is not None:
            if r.is_baseline:
                cells += ["(baseline)", "", "", ""]
            else:
                diff = "" if r.diff is None else f"{r.diff:+.4f}"
                cells += [diff, _p(r.p) or r.note, _p(r.p_holm), "✓" if r.holds else ""]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_json(report: Report, path: Path) -> None:
    import json

    rows = [{"group": r.group, "mean": r.mean, "n": len(r.values), "values": r.values, "ci": r.ci,
             "diff": r.diff, "p": r.p, "p_holm": r.p_holm, "holds": r.holds, "baseline": r.is_baseline,
             "note": r.note} for r in report.rows]
    path.write_text(json.dumps({"metric": report.metric, "confidence": report.confidence, "test": report.test,
                                "baseline": "=".join(report.baseline) if report.baseline else None, "rows": rows},
                               indent=2) + "\n")
