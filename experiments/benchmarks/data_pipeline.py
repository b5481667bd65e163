"""Benchmark 3: the data pipeline: images/s decoded and transformed with 0, 1, 2 DataLoader workers, and
the fraction of training step time spent waiting for data.

(1) Loader throughput: the training split's DataLoader alone (``mmfuse`` datamodule, batch 64), two
    passes with persistent workers, for COCO (JPEG files decoded with torchvision.io, MobileNetV2's
    resize 256 + centre crop 224 + normalise) and for shapes (images in memory, 32 px). Reported: pairs/s,
    images/s (a COCO batch decodes each of its distinct images once), and the time to the first batch.
(2) Waiting on data while training end to end (frozen MobileNetV2 + MiniLM run on every batch,
    ``cache=off``): the fraction of each step between the end of the previous step and the start of
    this one (``common.StepTimer``), with 0, 1, 2 workers.

    .venv/bin/python experiments/benchmarks/data_pipeline.py           # what RESULTS.md records
    .venv/bin/python experiments/benchmarks/data_pipeline.py --quick   # a check that it runs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import (
    REAL_DATA,
    ROOT,
    add_timer,
    command_line,
    compose_run,
    machine,
    report,
    table,
    timer_stats,
    use_shared_assets,
)

from mmfuse.builder import build_datamodule, build_module
from mmfuse.train import train


def loader_throughput(out: Path, overrides: tuple[str, ...], workers: int, passes: int) -> list:
    cfg = compose_run(out, (*overrides, f"data.num_workers={workers}", "data.persistent_workers=true",
                            "data.batch_size=64", "cache=off"))
    module = build_module(cfg)
    datamodule = build_datamodule(cfg, module)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    start = time.perf_counter()
    first = None
    pairs = images = 0
    for _ in range(passes):
        for batch in loader:
            if first is None:
                first = time.perf_counter() - start
            pairs += len(batch["image_id"])
            images += len(batch["image_id"].unique())
    seconds = time.perf_counter() - start
    return [workers, pairs / seconds, images / seconds, first]


def waiting(out: Path, workers: int, epochs: int, extra: tuple[str, ...]) -> list:
    cfg = compose_run(out, (*REAL_DATA, *extra, "cache=off", f"data.num_workers={workers}",
                            "data.persistent_workers=true", f"trainer.max_epochs={epochs}",
                            "callbacks.progress_bar=null", "test=false", "data.num_val=8"))
    add_timer(cfg, out / "timer.json")
    train(cfg)
    stats = timer_stats(out / "timer.json", skip=2)
    return [workers, stats["steps"], stats["step_s"] * 1e3, stats["wait_fraction"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a slice of the data, fewer passes")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "data_pipeline")
    args = parser.parse_args()
    use_shared_assets()
    started = machine()
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    coco = REAL_DATA + (("data.num_train=24",) if args.quick else ())
    shapes = ("data.num_train=2000",) if args.quick else ()
    passes = 1 if args.quick else 2
    rows = []
    for name, overrides in (("coco_mini (JPEG, 224 px)", coco), ("shapes (in memory, 32 px)", shapes)):
        for w in (0, 1, 2):
            rows.append([name, *loader_throughput(out / f"loader-{name.split()[0]}-{w}", overrides, w, passes)])
    wait_extra = ("data.num_train=24", "data.batch_size=8") if args.quick else ("data.batch_size=32",)
    waits = [waiting(out / f"wait-{w}", w, 1 if args.quick else 2, wait_extra) for w in (0, 1, 2)]
    body = "\n".join([
        table(["data", "workers", "pairs/s", "images/s decoded + transformed", "s to first batch"], rows),
        "",
        "Training end to end (frozen MobileNetV2 + MiniLM on every batch, cache=off):",
        "",
        table(["workers", "steps timed", "ms/step", "fraction of the step waiting for data"], waits),
    ])
    report("Data pipeline: loader throughput and waiting on data", command_line(), body, started)


if __name__ == "__main__":
    main()
