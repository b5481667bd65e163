"""Table of the real-COCO runs: mean ± std over seeds of each variant, from the runs' results.json.

python experiments/real_coco/collect.py outputs/multirun [--jsonl runs.jsonl]
Every job directory under the given folders counts; a variant is its overrides without ``seed=``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

COLUMNS = ("val/acc", "val/auroc", "val/i2t_r1", "val/i2t_r5", "val/i2t_r10", "val/t2i_r1", "val/t2i_r5",
           "val/t2i_r10", "val/rsum")
IGNORED = ("seed=", "callbacks.progress_bar=")


def variant(overrides: list[str]) -> str:
    return " ".join(o for o in overrides if not o.startswith(IGNORED))


def cell(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--jsonl", type=Path, help="also write one line per run here")
    args = parser.parse_args()
    runs = [json.loads(p.read_text()) for root in args.roots for p in sorted(root.rglob("results.json"))]
    runs = [r for r in runs if r.get("kind") == "train" and r.get("status") == "completed"]
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[variant(r["overrides"])].append(r)
    print("| variant | seeds | " + " | ".join(c.split("/")[1] for c in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for name, rs in groups.items():
        cells = [cell([r["metrics"][c] for r in rs if c in r["metrics"]], 3 if c in ("val/acc", "val/auroc") else 1)
                 for c in COLUMNS]
        print(f"| `{name}` | {len(rs)} | " + " | ".join(cells) + " |")
    if args.jsonl:
        with open(args.jsonl, "w") as f:
            for r in runs:
                f.write(json.dumps({"variant": variant(r["overrides"]), "seed": r.get("seed"),
                                    "metrics": {k: round(v, 4) for k, v in r["metrics"].items()},
                                    "wall_time_s": r.get("wall_time_s"), "data": {s: r["data"][s]["images"] for s in ("train", "val")},
                                    "feature_cache": {s: {side: v["status"] for side, v in d.items()}
                                                      for s, d in (r.get("feature_cache") or {}).items()}}) + "\n")


if __name__ == "__main__":
    main()
