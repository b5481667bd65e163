"""Benchmark 2: framework overhead of mmfuse against a hand-written PyTorch loop (``handloop.py``).

The seed's model (``experiment=seed_model``) on shapes, same seed, data order, batch size, optimizer
and schedule, in two regimes:
(a) end to end: the tiny encoders are trained in the loop (tens of ms per step on a CPU);
(b) cached features: both encoders frozen, mmfuse reads its feature cache, the hand loop its own
    precomputed features; only the fusion and the head train (about a millisecond per step), with
    the default callbacks and with a lean setup (no progress bar, no LR monitor), at batch 128 and 4096,
    and at 4096 with one DataLoader worker (batches are gathered while the previous step runs).
For each: mean seconds per step after 5 warm-up steps (steps that cross an epoch boundary are left
out: validation is not per-step overhead), the ratio mmfuse / hand loop, and the largest difference
between the two loops' losses over the first 50 steps (must be <= 1e-5).

    .venv/bin/python experiments/benchmarks/overhead.py                 # full (what RESULTS.md records)
    .venv/bin/python experiments/benchmarks/overhead.py --quick --steps 40 --large-batch 512   # a check
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import ROOT, add_timer, command_line, compose_run, machine, report, step_time, table, timer_stats
from handloop import hand_train

from mmfuse.train import train

SEED_MODEL = ("experiment=seed_model", "test=false", "data.num_val=512", "data.num_test=0")
FROZEN = ("encoder.image.freeze=true", "encoder.text.freeze=true")
LEAN = ("callbacks.progress_bar=null", "callbacks.lr_monitor=null")


def run_mmfuse(out: Path, overrides: tuple[str, ...], steps: int) -> dict[str, float]:
    cfg = compose_run(out, (*overrides, f"++trainer.max_steps={steps}", "trainer.max_epochs=1000"))
    add_timer(cfg, out / "timer.json")
    train(cfg)
    stats = timer_stats(out / "timer.json")
    stats["losses"] = json.loads((out / "timer.json").read_text())["losses"]
    return stats, cfg


def compare(name: str, out: Path, overrides: tuple[str, ...], steps: int, cached: bool) -> list:
    ours, cfg = run_mmfuse(out / name, overrides, steps)
    losses, starts = hand_train(cfg, steps, cached=cached)
    theirs = step_time(starts)
    n = min(50, len(losses), len(ours["losses"]))
    diff = max(abs(a - b) for a, b in zip(ours["losses"][:n], losses[:n]))
    batch = int(cfg.data.batch_size)
    return [name, batch, ours["steps"], ours["step_s"] * 1e3, theirs * 1e3, ours["step_s"] / theirs, n, f"{diff:.1e}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per measurement")
    parser.add_argument("--quick", action="store_true", help="small data (a check that the script runs)")
    parser.add_argument("--large-batch", type=int, default=4096, help="the large batch of regime b")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "overhead")
    args = parser.parse_args()
    started = machine()
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    data = (f"paths.cache_dir={out / 'cache'}",) + (("data.num_train=2000",) if args.quick else ())
    cases = [
        ("a) end to end", (*SEED_MODEL, *data), False),
        ("b) cached, default callbacks", (*SEED_MODEL, *data, *FROZEN), True),
        ("b) cached, lean", (*SEED_MODEL, *data, *FROZEN, *LEAN), True),
        (f"b) cached, lean, batch {args.large_batch}",
         (*SEED_MODEL, *data, *FROZEN, *LEAN, f"data.batch_size={args.large_batch}"), True),
        (f"b) cached, lean, batch {args.large_batch}, 1 worker",
         (*SEED_MODEL, *data, *FROZEN, *LEAN, f"data.batch_size={args.large_batch}", "data.num_workers=1"), True),
    ]
    rows = [compare(name, out, overrides, args.steps, cached) for name, overrides, cached in cases]
    body = table(["regime", "batch", "steps timed", "mmfuse ms/step", "hand loop ms/step", "ratio",
                  "losses compared", "max |loss diff|"], rows)
    report("Framework overhead: mmfuse vs a hand-written loop (seed model, shapes)", command_line(), body, started)
    shutil.rmtree(out / "cache", ignore_errors=True)


if __name__ == "__main__":
    main()
