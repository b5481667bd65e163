"""Table of the COCO-mini captioning runs: mean ± std (sample std, n - 1) over seeds of each variant.

python experiments/coco_caption/collect.py <run folders ...> [--jsonl runs.jsonl]
Every ``results.json`` under the given folders counts (completed train runs); a variant is its overrides
without ``seed=``. Metrics are the final weights' validation metrics (``results.json``); ``best cider``
is the highest ``val/cider`` of any epoch in the run's ``csv/metrics.csv`` (what ``best.ckpt`` holds).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

COLUMNS = ("val/bleu4", "val/cider", "val/bleu1", "val/rougeL", "val/distinct", "val/mean_length", "val/loss")
IGNORED = ("seed=",)


def variant(overrides: list[str]) -> str:
    return " ".join(o for o in overrides if not o.startswith(IGNORED))


def cell(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def best_cider(run_dir: Path) -> tuple[float, int] | None:
    """(highest val/cider over epochs, its epoch) from the run's csv log."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.exists():
        return None
    rows = [r for r in csv.DictReader(path.open()) if r.get("val/cider")]
    if not rows:
        return None
    best = max(rows, key=lambda r: float(r["val/cider"]))
    return float(best["val/cider"]), int(best["epoch"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--jsonl", type=Path, help="also write one line per run here")
    args = parser.parse_args()
    runs = []
    for root in args.roots:
        for p in sorted(root.rglob("results.json")):
            r = json.loads(p.read_text())
            if r.get("kind") == "train" and r.get("status") == "completed":
                r["best"] = best_cider(p.parent)
                runs.append(r)
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[variant(r["overrides"])].append(r)
    print("| variant | seeds | " + " | ".join(c.split("/")[1] for c in COLUMNS) + " | best cider (epochs) | wall s |")
    print("|---|---|" + "---|" * (len(COLUMNS) + 2))
    for name, rs in groups.items():
        cells = [cell([r["metrics"][c] for r in rs if c in r["metrics"]], 1 if c == "val/mean_length" else 3)
                 for c in COLUMNS]
        best = [r["best"] for r in rs if r["best"]]
        best_cell = cell([b[0] for b in best]) + " (" + ",".join(str(b[1]) for b in best) + ")"
        wall = cell([r["wall_time_s"] for r in rs], 0)
        print(f"| `{name}` | {len(rs)} | " + " | ".join(cells) + f" | {best_cell} | {wall} |")
    if args.jsonl:
        with open(args.jsonl, "w") as f:
            for r in runs:
                f.write(json.dumps({"variant": variant(r["overrides"]), "seed": r.get("seed"),
                                    "metrics": {k: round(v, 4) for k, v in r["metrics"].items()},
                                    "best_cider_epoch": r["best"], "epochs": r.get("epochs"),
                                    "params": r.get("params"), "wall_time_s": r.get("wall_time_s")}) + "\n")


if __name__ == "__main__":
    main()
