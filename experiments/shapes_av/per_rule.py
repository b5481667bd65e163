"""Accuracy per rule of shapes_av runs trained before the task logged it (their checkpoints' task config
has the interaction types only): each checkpoint is copied with the rule grouping added to its saved
task config, then evaluated with ``eval.py``; prints a table of ``val/acc_rule_<modalities>``.

    python experiments/shapes_av/per_rule.py outputs/bench/shapes_av_interactions --work /tmp/per_rule
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch

from mmfuse.data.shapes_av.labels import INTERACTION_TYPES, RULE_GROUPS

ROOT = Path(__file__).resolve().parents[2]


def with_rules(ckpt: Path, out: Path) -> None:
    """``ckpt`` with ``task.groups = {interaction_type: ..., rule: ...}`` in its saved config, at ``out``."""
    state = torch.load(ckpt, weights_only=True)
    groups = {"interaction_type": list(INTERACTION_TYPES), "rule": list(RULE_GROUPS)}
    state["mmfuse_config"]["config"]["task"]["groups"] = groups
    state["mmfuse_config"]["config"]["data"]["groups"] = groups
    state["mmfuse_config"]["config"]["data"]["group_key"] = None
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path)
    p.add_argument("--work", type=Path, required=True, help="where the patched copies and eval runs go")
    a = p.parse_args(argv)
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    for results in sorted(a.sweep.glob("*/results.json")):
        run = json.loads(results.read_text())
        fusion = next(o.split("=", 1)[1] for o in run["overrides"] if o.startswith("fusion="))
        copy = a.work / results.parent.name / "last.ckpt"
        with_rules(results.parent / "checkpoints" / "last.ckpt", copy)
        subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt_path={copy}",
                        f"hydra.run.dir={copy.parent / 'eval'}"], check=True, cwd=ROOT, capture_output=True)
        metrics = json.loads((copy.parent / "eval" / "results.json").read_text())["metrics"]
        rows[fusion].append({r: metrics[f"val/acc_{r}"] for r in RULE_GROUPS})
    print("| fusion | n | " + " | ".join(r.removeprefix("rule_").replace("_", " + ") for r in RULE_GROUPS) + " |")
    print("|---|---|" + "---|" * len(RULE_GROUPS))
    for fusion, runs in sorted(rows.items()):
        cells = [f"{statistics.mean(r[k] for r in runs):.3f}" for k in RULE_GROUPS]
        print(f"| `{fusion}` | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
