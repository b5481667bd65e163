"""``hydra/launcher=parallel``: several sweep jobs at once, each pinned to its own GPU(s).

Hydra's joblib launcher runs the jobs in a pool of worker processes (loky), each of which runs job
after job. Each worker claims one free *slot* (``gpus_per_job`` GPUs) the first time it runs a job,
holds it for its whole life (a file lock; the OS drops it when the worker exits) and sets
``CUDA_VISIBLE_DEVICES`` to that slot before anything touches CUDA. So N slots make N workers, jobs
running at the same time never share a GPU, and a DDP job (``trainer=ddp``, ``devices: -1``) uses all
the GPUs of its slot. The GPUs are ``devices``, else ``CUDA_VISIBLE_DEVICES``, else every GPU found.

This module lives in ``hydra_plugins`` because Hydra only instantiates launchers from there; Hydra
imports (and re-executes) it whenever it scans for plugins, so it holds no state and imports nothing
heavy: the slots are claimed in ``mmfuse.gpu_slots``.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import DictConfig

from mmfuse.gpu_slots import PinnedTask, device_slots, visible_gpus

log = logging.getLogger(__name__)


class ParallelLauncher(JoblibLauncher):
    def __init__(self, gpus_per_job: int = 1, devices: Any = None, n_jobs: int | None = None, **joblib: Any) -> None:
        self.slots = device_slots(visible_gpus(devices), int(gpus_per_job))
        if n_jobs is None:
            if not self.slots:
                raise ValueError("hydra/launcher=parallel found no GPUs: set hydra.launcher.n_jobs to run CPU jobs "
                                 "in parallel, or hydra.launcher.devices to the GPU ids")
            n_jobs = len(self.slots)
        if self.slots and n_jobs > len(self.slots):
            raise ValueError(f"hydra.launcher.n_jobs={n_jobs} but only {len(self.slots)} GPU slots {self.slots}: "
                             "jobs would share GPUs; lower n_jobs or gpus_per_job")
        super().__init__(n_jobs=int(n_jobs), **joblib)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        if self.slots:
            sweep_dir = str(Path(str(config.hydra.sweep.dir)).resolve())
            lock_dir = Path(tempfile.gettempdir()) / f"mmfuse-gpu-slots-{hashlib.sha1(sweep_dir.encode()).hexdigest()[:12]}"
            task_function = PinnedTask(task_function, self.slots, str(lock_dir))
            log.info("parallel launcher: %d jobs at once on GPU slots %s", self.joblib["n_jobs"], self.slots)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
