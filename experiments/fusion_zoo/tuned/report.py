"""The table of a per-fusion tuning sweep: python experiments/fusion_zoo/tuned/report.py <sweep dir>

One row per fusion: the search's val/acc at each grid point (the chosen one in bold), the final runs'
test/acc, J relation and J binding (mean ± sample std over seeds), what ended them and their steps.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def main(sweep: Path) -> str:
    tuning = json.loads((sweep / "tuning.json").read_text())
    points = [" ".join(o.split("=", 1)[1] for o in s["overrides"]) for s in tuning["arms"][0]["search"]]
    lines = [f"| fusion | val/acc at lr {' / '.join(points)} | test/acc | test J relation | test J binding | ended by | steps |",
             "|---|---|---|---|---|---|---|"]
    for arm in tuning["arms"]:
        best = (arm.get("best") or {}).get("index")
        search = " / ".join((f"**{s['score']:.3f}**" if k == best else f"{s['score']:.3f}") if s["score"] is not None
                            else "failed" for k, s in enumerate(arm["search"]))
        finals = [json.loads((sweep / d / "results.json").read_text()) for d in arm["final"]
                  if (sweep / d / "results.json").is_file()]
        done = [r for r in finals if r.get("status") == "completed"]
        metric = {k: [r["metrics"][f"test/{k}"] for r in done if f"test/{k}" in r["metrics"]]
                  for k in ("acc", "j_relation", "j_binding")}
        ended = ", ".join(sorted({r.get("ended_by", "?") for r in done}))
        steps = "/".join(str(r.get("steps")) for r in done)
        lines.append(f"| `{arm['name']}` | {search} | {mean_std(metric['acc'])} | {mean_std(metric['j_relation'])} | "
                     f"{mean_std(metric['j_binding'])} | {ended} | {steps} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(Path(sys.argv[1])), end="")
