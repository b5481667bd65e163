"""A ``torch.profiler`` trace of a few training steps, for the benchmarks (``gpu.py --profile``).

``StepProfiler(folder, start, steps)`` (a callback; ``common.add_callback`` adds it to a run) profiles
the optimizer steps ``start .. start + steps - 1`` (counted by ``trainer.global_step``) and writes to
``folder``:

- ``trace.json``: the Chrome trace (open it in https://ui.perfetto.dev or chrome://tracing);
- ``ops.md``: the operators that took the most device time (the CPU's time on a CPU-only run);
- ``summary.json``: ``wall_s`` per step (host clock, the device synchronised at both ends),
  ``device_busy_s`` per step (the union of the intervals in which the device ran a kernel or a copy,
  from the trace's device events; overlapping streams count once; the GPU-side spans of annotations
  such as ``Optimizer.step#...``, which cover the idle gaps inside them, are left out) and
  ``device_busy_fraction = device_busy_s / wall_s``. A fraction well below 1 means the device waits:
  for the host launching kernels one by one, for data, or for a sync.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of ``[start, end)`` intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _annotation(event: Any) -> bool:
    """A ``record_function`` range (its GPU-side span covers whatever ran, or not, inside it)."""
    return bool(getattr(event, "is_user_annotation", False)) or "annotation" in str(getattr(event, "activity_type", ""))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepProfiler(L.Callback):
    def __init__(self, folder: str, start: int = 10, steps: int = 3) -> None:
        self.folder = Path(folder)
        self.start, self.steps = start, steps
        self.profiler: profile | None = None
        self.began = 0.0
        self.done = False

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.done or self.profiler is not None or trainer.global_step < self.start:
            return
        on_gpu = torch.cuda.is_available()
        self.profiler = profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])])
        _sync()
        try:
            self.profiler.start()
        except Exception as e:  # noqa: BLE001 - a profiler that cannot start must not cost the timing
            print(f"StepProfiler: the profiler did not start ({type(e).__name__}: {e}); no trace", flush=True)
            self.done = True
            return
        self.began = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.profiler is None or self.done or trainer.global_step < self.start + self.steps:
            return
        self.finish()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.profiler is not None and not self.done:  # training ended inside the window
            self.finish()

    def finish(self) -> None:
        _sync()
        wall = time.perf_counter() - self.began
        self.done = True
        try:
            self.profiler.stop()
            self.write(self.profiler, wall)
        except Exception as e:  # noqa: BLE001
            print(f"StepProfiler: the trace was not written ({type(e).__name__}: {e})", flush=True)

    def write(self, prof: profile, wall: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.folder / "trace.json"))
        averages = prof.key_averages()
        on_gpu = torch.cuda.is_available()
        sort_by = "self_device_time_total" if on_gpu else "self_cpu_time_total"
        (self.folder / "ops.md").write_text(averages.table(sort_by=sort_by, row_limit=25) + "\n")
        busy_us = busy_time([(e.time_range.start, e.time_range.end) for e in prof.events()
                             if e.device_type == DeviceType.CUDA and not _annotation(e)]) if on_gpu else 0.0
        summary = {"steps": self.steps, "wall_s": wall / self.steps, "device_busy_s": busy_us / 1e6 / self.steps,
                   "device_busy_fraction": busy_us / 1e6 / wall if on_gpu else None}
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=1))

