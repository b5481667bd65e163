"""Callbacks that tests add to subprocess runs (``PYTHONPATH=tests``, ``+callbacks.x._target_=...``)
to stop a run at a chosen optimizer step: a real SIGKILL, or an exception."""

from __future__ import annotations

import os
import signal

import lightning as L


def _job_num() -> int | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().job.get("num") if HydraConfig.initialized() else None


class KillAt(L.Callback):
    """SIGKILL this process (the whole sweep, if in one) after optimizer step ``step`` of job ``job`` on
    rank ``rank`` (any if None), once every other callback of that step (checkpoints) has run."""

    def __init__(self, step: int, job: int | None = None, rank: int | None = None) -> None:
        self.step, self.job, self.rank = int(step), job, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and (self.job is None or _job_num() == self.job) \
                and (self.rank is None or trainer.global_rank == self.rank):
            os.kill(os.getpid(), signal.SIGKILL)


class RaiseAt(L.Callback):
    """Raise ``RuntimeError`` after optimizer step ``step`` of job ``job`` (any job if None)."""

    def __init__(self, step: int, job: int | None = None) -> None:
        self.step, self.job = int(step), job

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and (self.job is None or _job_num() == self.job):
            raise RuntimeError(f"planted failure at step {self.step}")
