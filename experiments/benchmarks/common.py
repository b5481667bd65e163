"""Shared by the benchmark scripts: composing the real config, timing steps, describing the machine,
printing tables. Run the scripts from the repository root: ``.venv/bin/python experiments/benchmarks/<x>.py``."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MMFUSE_SHARED", ROOT.parent / "shared")).resolve()  # the real assets
BENCH_DIR = Path(__file__).resolve().parent
COCO = SHARED / "data" / "coco_mini"
MINILM = SHARED / "weights" / "all-MiniLM-L6-v2"
TORCH_HOME = SHARED / "weights" / "torch_home"

# frozen ImageNet MobileNetV2 + MiniLM on the COCO sample (the real-data recipe of the design brief)
REAL_DATA = (
    "data=coco_captions", f"data.root={COCO}", "encoder.image=mobilenet_v2", "encoder.image.pretrained=IMAGENET1K_V1",
    "encoder.text=minilm", f"encoder.text.name_or_path={MINILM}", "encoder.image.freeze=true", "encoder.text.freeze=true",
)
QUIET = ("callbacks.progress_bar=null", "test=false")


def use_shared_assets() -> None:
    """Point torchvision at the shared weights and keep Hugging Face offline."""
    os.environ.setdefault("TORCH_HOME", str(TORCH_HOME))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")


def compose_run(out_dir: Path, overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The real composed config with all outputs (runs, caches) under ``out_dir``."""
    GlobalHydra.instance().clear()
    initialize_config_dir(str(ROOT / "conf"), version_base="1.3")
    cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir)
        if not any(o.startswith("paths.cache_dir=") for o in overrides):
            cfg.paths.cache_dir = str(out_dir / "cache")
    HydraConfig.instance().set_config(cfg)
    return cfg


class StepTimer(L.Callback):
    """Wall-clock times of every training batch: ``start`` (the batch has been fetched), ``end`` (after
    the optimizer step) and the epoch. Saved as JSON to ``path`` when training ends.

    A step's full cost is ``end[k] - end[k-1]`` within an epoch: fetching the batch (the DataLoader's
    ``next()``), Lightning's bookkeeping, forward, backward, optimizer and scheduler steps, logging.
    ``start[k] - end[k-1]`` is the part spent before the batch reached the module (waiting on data).
    The loss of every step is kept too (as tensors until the end, so no host sync per step).
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.epochs: list[int] = []
        self.losses: list[Any] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.starts.append(time.perf_counter())
        self.epochs.append(trainer.current_epoch)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ends.append(time.perf_counter())
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append(loss.detach())  # converted at the end: no host sync per step

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"starts": self.starts, "ends": self.ends, "epochs": self.epochs,
                                         "losses": [float(v) for v in self.losses]}))


def timer_stats(path: Path, skip: int = 5, min_epoch: int = 0) -> dict[str, float]:
    """Mean seconds per step and the fraction of it spent waiting for data, over the steps after the
    first ``skip`` that follow a step of the same epoch (validation between epochs is left out), in
    epochs ``min_epoch`` and later."""
    t = json.loads(Path(path).read_text())
    steps, waits = [], []
    for k in range(max(skip, 1), len(t["ends"])):
        if t["epochs"][k] == t["epochs"][k - 1] and t["epochs"][k] >= min_epoch:
            steps.append(t["ends"][k] - t["ends"][k - 1])
            waits.append(t["starts"][k] - t["ends"][k - 1])
    if not steps:
        raise ValueError(f"{path}: not enough steps to time (skip={skip})")
    return {"step_s": sum(steps) / len(steps), "wait_fraction": sum(waits) / sum(steps), "steps": len(steps)}


def step_time(starts: Sequence[float], skip: int = 5) -> float:
    """Mean seconds per step from consecutive step start times (a final time after the last step
    included), after ``skip`` warm-up steps."""
    s = list(starts)[skip:]
    if len(s) < 2:
        raise ValueError(f"need more than {skip + 1} steps to time, got {len(starts)}")
    return (s[-1] - s[0]) / (len(s) - 1)


def add_callback(cfg: DictConfig, name: str, target: str, **kwargs: Any) -> None:
    """Add the callback ``target(**kwargs)`` (a dotted path, instantiated by Hydra) as ``callbacks.<name>``."""
    with open_dict(cfg):
        cfg.callbacks[name] = {"_target_": target, **kwargs}


def add_timer(cfg: DictConfig, path: Path) -> None:
    """Add a ``StepTimer`` writing to ``path`` to the run's callbacks."""
    add_callback(cfg, "step_timer", "common.StepTimer", path=str(path))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, lightning {L.__version__}; "
            f"load average {load:.2f} at start")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """How this script was called, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", str(script), *sys.argv[1:]])


def report(title: str, command: str, body: str, machine_line: str | None = None) -> None:
    """Print a benchmark's result as a Markdown section (``machine_line``: taken when it started)."""
    print(f"\n## {title}\n\nmachine: {machine_line or machine()}\ncommand: `{command}`\n\n{body}\n", flush=True)
