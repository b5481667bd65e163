"""Table and plot of a fusion-zoo sweep, from the runs' ``results.json`` (never the logs).

    python experiments/fusion_zoo/report.py outputs/multirun/fusion_zoo/<time> [more sweep dirs] \
        --out experiments/fusion_zoo

Groups the completed runs by ``choices.fusion`` and writes ``table.md`` (mean ± standard deviation over
seeds of ``val/acc`` and ``val/acc_<type>`` per pair type, with stage, input and parameter count of
each fusion) and ``table.png`` (heat map fusion × pair type). Failed or unfinished runs are listed, not
silently dropped.

Learned or not: a model that cannot tell a negative type from the positives rejects it as often as it
rejects anything, so its accuracy on that type is ``1 − acc_positive``, whatever its bias. The table
therefore also gives, for the two types that need binding and position, Youden's J per run,
``J_t = acc_t + acc_positive − 1`` (0: type not told apart from positives; 1: always told apart), and
ranks fusions within a stage by ``J_relation + J_binding``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from hydra.utils import get_class
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
TYPES = ("positive", "other", "color", "shape", "relation", "binding")
HARD = ("relation", "binding")
STAGE_ORDER = {"none": 0, "late": 1, "mid": 2, "early": 3}


def load_runs(dirs: list[Path]) -> tuple[dict[str, list[dict]], list[str]]:
    runs: dict[str, list[dict]] = defaultdict(list)
    problems = []
    for d in dirs:
        files = sorted(d.rglob("results.json"))
        if not files:
            raise SystemExit(f"{d}: no results.json below this directory; give a sweep directory")
        for f in files:
            r = json.loads(f.read_text())
            if r.get("status") != "completed" or r.get("kind", "train") != "train":
                problems.append(f"{f.parent}: status={r.get('status')} {r.get('error') or ''}".strip())
                continue
            runs[r["choices"]["fusion"]].append(r)
    return runs, problems


def fusion_info(name: str) -> tuple[str, str]:
    cfg = OmegaConf.load(ROOT / "conf" / "fusion" / f"{name}.yaml")
    cls = get_class(cfg._target_)
    return cfg.stage, "tokens" if cls.needs_tokens else "pooled"


def stat(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name, rs in runs.items():
        stage, kind = fusion_info(name)
        row = {"fusion": name, "stage": stage, "input": kind, "seeds": sorted(r["seed"] for r in rs),
               "params": rs[0]["params"]["fusion"], "steps": sorted({r["steps"] for r in rs}),
               "wall_s": statistics.fmean(r["wall_time_s"] for r in rs)}
        for key in ("acc", *(f"acc_{t}" for t in TYPES)):
            values = [r["metrics"][f"val/{key}"] for r in rs if f"val/{key}" in r["metrics"]]
            row[key] = stat(values) if values else None
        for t in HARD:
            values = [r["metrics"][f"val/acc_{t}"] + r["metrics"]["val/acc_positive"] - 1 for r in rs
                      if f"val/acc_{t}" in r["metrics"] and "val/acc_positive" in r["metrics"]]
            row[f"j_{t}"] = stat(values) if values else None
        rows.append(row)
    hard = lambda r: sum(r[f"j_{t}"][0] for t in HARD if r[f"j_{t}"])  # noqa: E731
    return sorted(rows, key=lambda r: (STAGE_ORDER.get(r["stage"], 9), -hard(r), r["fusion"]))


def fmt(cell: tuple[float, float] | None) -> str:
    return "–" if cell is None else f"{cell[0]:.3f} ± {cell[1]:.3f}"


def table(rows: list[dict]) -> str:
    head = ["fusion", "stage", "input", "params", "seeds", "val/acc", *TYPES, *(f"J {t}" for t in HARD),
            "steps", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['fusion']}`", r["stage"], r["input"], f"{r['params']:,}", str(len(r["seeds"])),
                 fmt(r["acc"]), *(fmt(r[f"acc_{t}"]) for t in TYPES), *(fmt(r[f"j_{t}"]) for t in HARD),
                 ",".join(map(str, r["steps"])),
                 f"{r['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = ["acc", *(f"acc_{t}" for t in TYPES), *(f"j_{t}" for t in HARD)]
    data = np.array([[r[c][0] if r[c] else np.nan for c in cols] for r in rows])
    fig, ax = plt.subplots(figsize=(9.5, 0.34 * len(rows) + 1.6))
    im = ax.imshow(data, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(cols)), ["overall", *TYPES, *(f"J {t}" for t in HARD)], fontsize=8)
    ax.axvline(len(TYPES) + 0.5, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)), [f"{r['fusion']} ({r['stage']}, {r['input']})" for r in rows])
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, label="val accuracy; J = acc_type + acc_positive − 1 (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep (multirun) directories")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="where table.md and the plot go")
    parser.add_argument("--name", default="table", help="file stem of the table and plot")
    parser.add_argument("--title", default="fusion zoo on the shapes diagnostic benchmark")
    args = parser.parse_args(argv)
    runs, problems = load_runs(args.dirs)
    if not runs:
        raise SystemExit("no completed runs found")
    rows = summarise(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    if problems:
        text += "\nRuns left out (not completed):\n" + "".join(f"- {p}\n" for p in problems)
    (args.out / f"{args.name}.md").write_text(text)
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / f"{args.name}.png", args.title)
    print(text)
    print(f"wrote {args.out / (args.name + '.md')}, {args.name}.json and {args.name}.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
