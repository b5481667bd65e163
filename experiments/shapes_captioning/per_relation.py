"""Where the relation goes wrong: the validation captions of a ``shapes_captioning`` sweep's checkpoints,
regenerated and parsed (``mmfuse.data.shapes.caption_check``).

    python experiments/shapes_captioning/per_relation.py outputs/multirun/shapes_captioning/<time> \
        --out experiments/shapes_captioning/per_relation.md

For every completed run: its ``checkpoints/best.ckpt`` is rebuilt from the checkpoint alone (its saved
config) and validated, and each generated caption that names both objects of its scene correctly is
classed by its relation word against the true relation of the first-named object to the second:
``right`` (correct), ``mirrored`` (the right axis, the opposite direction: left for right, above for
below) or ``other axis``. Rows: (fusion, seed); columns: the share of captions with both objects right,
then the three classes as shares of those captions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from mmfuse.builder import build_datamodule, build_module
from mmfuse.checkpoint_file import load_checkpoint
from mmfuse.data.shapes.caption_check import parse_caption
from mmfuse.data.shapes.scene import FLIPPED, find, relation_between
from mmfuse.module import CONFIG_KEY


def relation_classes(scenes: list, captions: dict[int, str]) -> dict[str, float]:
    """Shares of the module docstring's classes among ``captions`` (``{image index: text}``)."""
    counts = {"objects": 0, "right": 0, "mirrored": 0, "other axis": 0}
    for i, text in captions.items():
        parsed = parse_caption(text)
        a = parsed and find(scenes[i], parsed.color_a, parsed.shape_a)
        b = parsed and find(scenes[i], parsed.color_b, parsed.shape_b)
        if not a or not b or a is b:
            continue
        counts["objects"] += 1
        truth = relation_between(a, b)
        kind = "right" if parsed.relation == truth else "mirrored" if parsed.relation == FLIPPED[truth] else "other axis"
        counts[kind] += 1
    n = max(counts["objects"], 1)
    return {"objects": counts["objects"] / max(len(captions), 1),
            **{k: counts[k] / n for k in ("right", "mirrored", "other axis")}}


def validate_checkpoint(path: Path) -> tuple[list, dict[int, str]]:
    ckpt = load_checkpoint(str(path))
    saved = ckpt[CONFIG_KEY]
    cfg = OmegaConf.create(saved["config"])
    module = build_module(cfg, saved)
    module.load_state_dict(ckpt["state_dict"])
    datamodule = build_datamodule(cfg, module)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return datamodule.rendered("val")[0], module.task.last_generated["val"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "per_relation.md")
    args = parser.parse_args(argv)
    rows = []
    for results in sorted(p for d in args.dirs for p in d.rglob("results.json")):
        record = json.loads(results.read_text())
        if record.get("status") != "completed":
            continue
        scenes, captions = validate_checkpoint(results.parent / "checkpoints" / "best.ckpt")
        rows.append((record["choices"]["fusion"], record.get("seed"), relation_classes(scenes, captions)))
    lines = ["| fusion | seed | both objects right | relation right | mirrored | other axis |", "|---|---|---|---|---|---|"]
    lines += [f"| `{f}` | {s} | {c['objects']:.3f} | {c['right']:.3f} | {c['mirrored']:.3f} | {c['other axis']:.3f} |"
              for f, s, c in rows]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
