"""Pointing game and randomisation check per fusion and method, over the runs of a sweep.

    python experiments/explain/report.py outputs/explain/shapes --out experiments/explain

Reads every ``explain.json`` (``python -m mmfuse.explain``) under the directories and writes ``table.md`` and
``table.json``: per fusion and method, over the runs (seeds), mean ± sample std of the pointing score, of the
uniform-map baseline, of their difference, and of the randomisation Spearman ρ, with PASS when the mean ρ is
below ``mmfuse.explain.sanity.RANDOMISATION_PASS`` (FAIL at or above it). A method a run skipped is left out of
that run; ``runs`` counts the runs that explained it (one run = one seed), and pointing is averaged over those
runs that had object masks.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from mmfuse.explain.sanity import RANDOMISATION_PASS

METHOD_ORDER = ("attention", "gradcam", "ig", "intensity")


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def collect(dirs: list[str]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for d in dirs:
        for f in sorted(Path(d).rglob("explain.json")):
            saved = json.loads(f.read_text())
            for method, entry in saved["methods"].items():
                if "skipped" not in entry:
                    groups.setdefault((saved["fusion"], method), []).append(entry)
    if not groups:
        raise SystemExit(f"no explain.json with an explained method under {', '.join(dirs)}")
    return groups


def order(key: tuple[str, str]) -> tuple[str, int, str]:
    fusion, method = key
    return str(fusion), METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method


def verdict(rho: list[float]) -> str:
    if not rho:
        return "-"
    return "PASS" if statistics.fmean(rho) < RANDOMISATION_PASS else "FAIL"


def table(groups: dict[tuple[str, str], list[dict[str, Any]]]) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    for (fusion, method), entries in sorted(groups.items(), key=lambda kv: order(kv[0])):
        pointed = [e for e in entries if e.get("pointing") is not None]
        rho = [e["randomisation_spearman"] for e in entries if e.get("randomisation_spearman") is not None]
        rows.append({
            "fusion": fusion, "method": method, "runs": len(entries),
            "pointing": [e["pointing"] for e in pointed], "uniform": [e["uniform"] for e in pointed],
            "gain": [e["pointing"] - e["uniform"] for e in pointed], "spearman": rho,
            "randomisation": verdict(rho),
        })
    head = ["fusion", "method", "runs", "pointing", "uniform map", "pointing − uniform", "randomisation ρ", "check"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([f"`{r['fusion']}`", r["method"], str(r["runs"]), cell(r["pointing"]),
                                        cell(r["uniform"]), cell(r["gain"]), cell(r["spearman"]),
                                        r["randomisation"]]) + " |")
    return "\n".join(lines) + "\n", rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--out", default="experiments/explain")
    args = p.parse_args(argv)
    text, rows = table(collect(args.dirs))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text, end="")


if __name__ == "__main__":
    main()
