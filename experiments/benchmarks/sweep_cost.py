"""Benchmark 1: the cost of a sweep over fusions with frozen encoders, feature cache on vs off.

Two Hydra multiruns of ``train.py`` (subprocesses, the basic launcher: jobs one after the other), each
over the same fusions, with frozen ImageNet MobileNetV2 + MiniLM on ``../shared/data/coco_mini``:
``cache=off`` and ``cache=auto`` (an empty cache at the start, ``cache.tokens=true`` because the sweep
mixes pooled and token fusions, so one encoding serves all). Reported: the wall time of each sweep and
the speed-up; per job the samples the encoders encoded (``encoded_samples`` in its ``results.json``),
its wall time and the largest difference of any final metric between the two sweeps; the measured
encoding cost per image and per caption (from the cache manifests) and its projection to full COCO.

    .venv/bin/python experiments/benchmarks/sweep_cost.py            # 8 fusions, 6 epochs (RESULTS.md)
    .venv/bin/python experiments/benchmarks/sweep_cost.py --quick    # 2 fusions, a slice of the data
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import REAL_DATA, ROOT, TORCH_HOME, command_line, machine, report, table

FUSIONS = ("add", "mul", "concat", "attention", "gated", "mfb", "mutan", "cross_attention")
# full COCO: train2017 118,287 images / 591,753 captions; val2017 5,000 / 25,014
COCO_IMAGES, COCO_CAPTIONS = 118_287 + 5_000, 591_753 + 25_014


def sweep(out: Path, fusions: tuple[str, ...], extra: list[str]) -> tuple[float, list[dict]]:
    env = {**os.environ, "MMFUSE_OUTPUTS": str(out), "TORCH_HOME": str(TORCH_HOME), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"fusion={','.join(fusions)}", *REAL_DATA,
           "callbacks.progress_bar=null", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    jobs = sorted(out.glob("multirun/*/*/[0-9]*/results.json"), key=lambda p: int(p.parent.name))
    results = [json.loads(p.read_text()) for p in jobs]
    failed = [r["run_dir"] for r in results if r["status"] != "completed"]
    if len(results) != len(fusions) or failed:
        sys.exit(f"expected {len(fusions)} completed jobs under {out}, got {len(results)} (failed: {failed})")
    return wall, results


def encoding_cost(results: list[dict]) -> dict[str, float]:
    """Seconds per image and per caption, from the manifests of the entries this sweep built."""
    seconds = {"image": 0.0, "text": 0.0}
    samples = {"image": 0, "text": 0}
    for r in results:
        for sides in (r.get("feature_cache") or {}).values():
            for side, info in sides.items():
                if info["status"] in ("built", "rebuilt"):
                    manifest = json.loads((Path(info["path"]) / "manifest.json").read_text())
                    seconds[side] += manifest["encode_seconds"]
                    samples[side] += manifest["samples"]
    return {side: seconds[side] / samples[side] for side in seconds if samples[side]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 fusions, 16 + 16 images, 1 epoch")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "sweep_cost")
    args = parser.parse_args()
    started = machine()
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    fusions = ("add", "cross_attention") if args.quick else FUSIONS
    extra = [f"trainer.max_epochs={1 if args.quick else args.epochs}"]
    if args.quick:
        extra += ["data.num_train=16", "data.num_val=16"]
    off_wall, off = sweep(out / "off", fusions, [*extra, "cache=off"])
    on_wall, on = sweep(out / "on", fusions, [*extra, "cache=auto", "cache.tokens=true"])
    rows = []
    for fusion, a, b in zip(fusions, off, on):
        keys = set(a["metrics"]) | set(b["metrics"])
        diff = max(abs(a["metrics"][k] - b["metrics"][k]) if k in a["metrics"] and k in b["metrics"]
                   else float("inf") for k in keys)
        rows.append([fusion, a["wall_time_s"], b["wall_time_s"], a["encoded_samples"]["image"],
                     b["encoded_samples"]["image"], a["encoded_samples"]["text"], b["encoded_samples"]["text"],
                     f"{diff:.1e}", f"{b['metrics'].get('val/acc', float('nan')):.4f}"])
    encoded_on = sum(r["encoded_samples"]["image"] for r in on), sum(r["encoded_samples"]["text"] for r in on)
    cost = encoding_cost(on)
    per_image = cost.get("image", float("nan"))
    per_caption = cost.get("text", float("nan"))
    once_h = (COCO_IMAGES * per_image + COCO_CAPTIONS * per_caption) / 3600
    epochs = 1 if args.quick else args.epochs
    # without the cache every epoch encodes every pair (one image and one caption per caption)
    off_h = len(fusions) * epochs * COCO_CAPTIONS * (per_image + per_caption) / 3600
    body = "\n".join([
        table(["fusion", "job s (off)", "job s (on)", "images encoded (off)", "images encoded (on)",
               "captions encoded (off)", "captions encoded (on)", "max |metric diff|", "val/acc"], rows),
        "",
        table(["sweep", "wall s", "images encoded", "captions encoded"], [
            ["cache=off", off_wall, sum(r["encoded_samples"]["image"] for r in off),
             sum(r["encoded_samples"]["text"] for r in off)],
            ["cache=auto (empty at start)", on_wall, *encoded_on],
            ["speed-up", off_wall / on_wall, "", ""],
        ]),
        "",
        f"Measured encoding cost (cache build, this machine): {per_image * 1e3:.1f} ms per image "
        f"(decode + transform + MobileNetV2), {per_caption * 1e3:.1f} ms per caption (MiniLM).",
        f"Projection to full COCO 2017 ({COCO_IMAGES:,} images, {COCO_CAPTIONS:,} captions): encoding once "
        f"takes {once_h:.1f} h on this machine; without the cache a sweep of {len(fusions)} jobs x {epochs} "
        f"epochs re-encodes every pair every epoch: {off_h:.0f} h of encoding.",
    ])
    report(f"Sweep cost: {len(fusions)} fusions, frozen MobileNetV2 + MiniLM, coco_mini, cache on vs off",
           command_line(), body, started)


if __name__ == "__main__":
    main()
