"""GPU slots for parallel sweep jobs (``hydra/launcher=parallel``): which GPUs a worker process gets.

A slot is ``gpus_per_job`` GPUs. A worker claims one free slot the first time it runs a job (a file lock
it holds for its whole life; the OS drops it when the process exits) and sets ``CUDA_VISIBLE_DEVICES``
to it before anything touches CUDA; CUDA reads that variable once per process, so a worker keeps its
slot for every later job. The state lives here, in a module that is imported once per process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.types import TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)

_held: dict[str, Any] = {}  # this process's slot: {"lock": FileLock, "devices": "0,1"}


def visible_gpus(devices: Sequence[Any] | str | None = None) -> list[str]:
    """The GPU ids to share out: ``devices`` (a list or "0,1,2"), else ``CUDA_VISIBLE_DEVICES``, else all."""
    if devices is None:
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        if env is not None:
            devices = env
        else:
            import torch

            devices = [str(i) for i in range(torch.cuda.device_count())]
    if isinstance(devices, str):
        devices = [d for d in devices.split(",") if d.strip()]
    return [str(d).strip() for d in devices]


def device_slots(gpus: Sequence[str], gpus_per_job: int) -> list[str]:
    """``gpus`` cut into groups of ``gpus_per_job``, each as a ``CUDA_VISIBLE_DEVICES`` value."""
    if gpus_per_job < 1:
        raise ValueError(f"hydra.launcher.gpus_per_job={gpus_per_job}: give 1 or more")
    if len(gpus) % gpus_per_job:
        raise ValueError(f"hydra.launcher.gpus_per_job={gpus_per_job} does not divide the {len(gpus)} GPUs "
                         f"{list(gpus)}; fix gpus_per_job or hydra.launcher.devices")
    return [",".join(gpus[i: i + gpus_per_job]) for i in range(0, len(gpus), gpus_per_job)]


def claim_slot(slots: Sequence[str], lock_dir: str | Path) -> str:
    """Claim a free slot for this process (once; later calls return the same one) and pin CUDA to it."""
    from filelock import FileLock, Timeout

    if "devices" in _held:
        return _held["devices"]
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    for i, devices in enumerate(slots):
        lock = FileLock(str(Path(lock_dir) / f"slot{i}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        _held.update(lock=lock, devices=devices)
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
        log.info("worker %d: CUDA_VISIBLE_DEVICES=%s", os.getpid(), devices)
        return devices
    raise RuntimeError(f"all {len(slots)} GPU slots {list(slots)} are taken (locks in {lock_dir}): more workers "
                       "than slots; lower hydra.launcher.n_jobs")


class PinnedTask:
    """The job function, run after claiming this worker's GPU slot."""

    def __init__(self, task_function: TaskFunction, slots: Sequence[str], lock_dir: str) -> None:
        self.task_function = task_function
        self.slots = list(slots)
        self.lock_dir = lock_dir

    def __call__(self, cfg: DictConfig) -> Any:
        claim_slot(self.slots, self.lock_dir)
        return self.task_function(cfg)


