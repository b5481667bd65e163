"""Benchmark 2: framework overhead of mmfuse against a hand-written PyTorch loop (``handloop.py``).

The seed's model (``experiment=seed_model``) on shapes, same seed, data order, batch size, optimizer
and schedule, in two regimes:
(a) end to end: the tiny encoders are trained in the loop (tens of ms per step on a CPU);
(b) cached features: both encoders frozen, mmfuse reads its feature cache, the hand loop its own
    precomputed features; only the fusion and the head train (about a millisecond per step), with
    the default callbacks and with a lean setup (no progress bar, no LR monitor), at batch 128 and 4096,
    and at 4096 with one DataLoader worker (batches are gathered while the previous step runs).
The cached rows with no worker also run the same training as a minimal LightningModule
(``plain_lightning.py``): what Lightning itself costs per step, apart from mmfuse.
For each: mean seconds per step after 5 warm-up steps (steps that cross an epoch boundary are left
out: validation is not per-step overhead), the ratio mmfuse / hand loop, and the largest difference
between the two loops' losses over the first 50 steps (must be <= 1e-5). Every row is measured
``--repeats`` times (default 5), alternating which loop runs first; the table gives the medians and the
range of the ratio (on a shared 2-core machine one measurement varies by 10-30%).

    .venv/bin/python experiments/benchmarks/overhead.py                 # full (what RESULTS.md records)
    .venv/bin/python experiments/benchmarks/overhead.py --quick --steps 40 --small-steps 40 --large-batch 512 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

from common import ROOT, add_timer, command_line, compose_run, machine, report, step_time, table, timer_stats
from handloop import hand_train
from plain_lightning import plain_lightning_train

from mmfuse.train import setup_objects_frozen, train

SEED_MODEL = ("experiment=seed_model", "test=false", "data.num_val=512", "data.num_test=0")
FROZEN = ("encoder.image.freeze=true", "encoder.text.freeze=true")
LEAN = ("callbacks.progress_bar=null", "callbacks.lr_monitor=null")


def mmfuse_config(out: Path, overrides: tuple[str, ...], steps: int) -> Any:
    cfg = compose_run(out, (*overrides, f"++trainer.max_steps={steps}", "trainer.max_epochs=1000"))
    add_timer(cfg, out / "timer.json")
    return cfg


def run_mmfuse(cfg: Any) -> dict[str, Any]:
    out = Path(cfg.paths.output_dir)
    train(cfg)
    stats = timer_stats(out / "timer.json")
    stats["losses"] = json.loads((out / "timer.json").read_text())["losses"]
    return stats


def run_hand(cfg: Any, steps: int, cached: bool) -> tuple[list[float], list[float]]:
    """The hand loop with the objects alive at its start kept off the garbage collector, as mmfuse's
    ``train`` does: in this process it inherits the heap of the mmfuse runs before it, which a script of
    its own would not carry."""
    with setup_objects_frozen():
        return hand_train(cfg, steps, cached=cached)


def run_plain(cfg: Any, steps: int) -> tuple[list[float], dict[str, float]]:
    with setup_objects_frozen():
        return plain_lightning_train(cfg, steps)


def compare(name: str, out: Path, overrides: tuple[str, ...], steps: int, cached: bool, repeats: int,
            plain: bool) -> list:
    """The loops ``repeats`` times, alternating their order; the medians of each and of the ratio
    mmfuse / hand loop, and its range. ``plain``: also the minimal LightningModule (``plain_lightning.py``)."""
    ours_s, theirs_s, plain_s, ratios, diffs = [], [], [], [], []
    for r in range(repeats):
        cfg = mmfuse_config(out / f"{name} {r}", overrides, steps)
        runs = {"mmfuse": partial(run_mmfuse, cfg), "hand": partial(run_hand, cfg, steps, cached)}
        if plain:
            runs["plain"] = partial(run_plain, cfg, steps)
        got = {key: runs[key]() for key in (list(runs) if r % 2 == 0 else list(runs)[::-1])}
        ours, (losses, starts) = got["mmfuse"], got["hand"]
        theirs = step_time(starts)
        n = min(50, len(losses), len(ours["losses"]))
        diffs.append(max(abs(a - b) for a, b in zip(ours["losses"][:n], losses[:n])))
        if plain:
            plain_losses, plain_stats = got["plain"]
            diffs.append(max(abs(a - b) for a, b in zip(plain_losses[:n], losses[:n])))
            plain_s.append(plain_stats["step_s"])
        ours_s.append(ours["step_s"])
        theirs_s.append(theirs)
        ratios.append(ours["step_s"] / theirs)
    spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
    plain_ms = statistics.median(plain_s) * 1e3 if plain_s else "-"
    return [name, int(cfg.data.batch_size), ours["steps"], statistics.median(ours_s) * 1e3, plain_ms,
            statistics.median(theirs_s) * 1e3, statistics.median(ratios), spread, n, f"{max(diffs):.1e}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per measurement (end to end, large batch)")
    parser.add_argument("--small-steps", type=int, default=3000,
                        help="training steps per measurement of the cached rows at batch 128 (steps of 1-2 ms)")
    parser.add_argument("--quick", action="store_true", help="small data (a check that the script runs)")
    parser.add_argument("--large-batch", type=int, default=4096, help="the large batch of regime b")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per row (median reported)")
    parser.add_argument("--only", default="", help="run only the rows whose name contains this text")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "overhead")
    args = parser.parse_args()
    started = machine()
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    data = (f"paths.cache_dir={out / 'cache'}",) + (("data.num_train=2000",) if args.quick else ())
    large = f"data.batch_size={args.large_batch}"
    cases = [
        ("a) end to end", (*SEED_MODEL, *data), False, args.steps),
        ("b) cached, default callbacks", (*SEED_MODEL, *data, *FROZEN), True, args.small_steps),
        ("b) cached, lean", (*SEED_MODEL, *data, *FROZEN, *LEAN), True, args.small_steps),
        (f"b) cached, lean, batch {args.large_batch}", (*SEED_MODEL, *data, *FROZEN, *LEAN, large), True, args.steps),
        (f"b) cached, lean, batch {args.large_batch}, 1 worker",
         (*SEED_MODEL, *data, *FROZEN, *LEAN, large, "data.num_workers=1"), True, args.steps),
    ]
    rows = [compare(name, out, overrides, steps, cached, args.repeats, plain=cached and "worker" not in name)
            for name, overrides, cached, steps in cases if args.only in name]
    body = table(["regime", "batch", "steps timed", "mmfuse ms/step", "plain Lightning ms/step", "hand loop ms/step",
                  "ratio mmfuse / hand", "ratio range", "losses compared", "max |loss diff|"], rows)
    report("Framework overhead: mmfuse vs a hand-written loop (seed model, shapes)", command_line(), body, started)
    shutil.rmtree(out / "cache", ignore_errors=True)


if __name__ == "__main__":
    main()
