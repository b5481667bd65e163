"""Benchmark 5 (CPU part): peak memory of the default run and of the real-data run.

Each run is ``train.py`` in its own process. Reported: the peak resident set size of that process
(``ru_maxrss`` from ``os.wait4``: exact, the main process only) and the peak of the summed proportional
set size (PSS) of the process and its DataLoader workers, sampled every 0.1 s from
``/proc/<pid>/smaps_rollup`` (a page shared by k processes counts 1/k in each: the real footprint). The GPU's max allocated memory is measured
by ``gpu.py``.

    .venv/bin/python experiments/benchmarks/memory.py            # the default run + the real-data run
    .venv/bin/python experiments/benchmarks/memory.py --quick    # debug-sized runs (a check)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import REAL_DATA, ROOT, TORCH_HOME, command_line, machine, report, table


def pss_kb(pid: int) -> int:
    """Proportional set size: resident pages, each shared page divided among the processes sharing it."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree_pss_kb(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += pss_kb(p)
        todo += children(p)
    return total


def measure(args: list[str], out: Path) -> tuple[float, float, float]:
    env = {**os.environ, "MMFUSE_OUTPUTS": str(out), "TORCH_HOME": str(TORCH_HOME), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "offline"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, "callbacks.progress_bar=null"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_tree = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not done.is_set():
            peak_tree = max(peak_tree, tree_pss_kb(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"train.py {' '.join(args)} failed:\n{stderr[-3000:]}")
    return usage.ru_maxrss / 1024, peak_tree / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "memory")
    args = parser.parse_args()
    started = machine()
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    quick = ["debug=fast"] if args.quick else []
    real_slice = ["data.num_train=16", "data.num_val=16", "trainer.max_epochs=1"] if args.quick else []
    runs = [
        ("default run (shapes, tiny encoders)", [*quick]),
        ("real data, cache=auto (first run: builds the cache)", [*REAL_DATA, *real_slice, "test=false"]),
        ("real data, cache=auto (second run: reads it)", [*REAL_DATA, *real_slice, "test=false"]),
        ("real data, cache=off", [*REAL_DATA, *real_slice, "test=false", "cache=off"]),
    ]
    rows = []
    for i, (name, overrides) in enumerate(runs):
        run_dir = out / f"run{i}"
        main_mb, tree_mb, seconds = measure([*overrides, f"hydra.run.dir={run_dir}"], out)
        rows.append([name, main_mb, tree_mb, seconds])
    body = table(["run", "peak RSS MiB (main process)", "peak PSS MiB (with workers, sampled)", "wall s"], rows)
    report("Peak memory (CPU)", command_line(), body, started)


if __name__ == "__main__":
    main()
