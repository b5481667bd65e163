"""``train(cfg)``: one training run, from a composed config to ``results.json``."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from mmfuse.builder import build_datamodule, build_module, build_trainer
from mmfuse.checkpoint_file import load_initial_weights
from mmfuse.checkpoint_io import run_disk_usage
from mmfuse.errors import MMFuseError
from mmfuse.interrupts import interrupt_on_signals
from mmfuse.loggers import finish_loggers, log_run_config
from mmfuse.module import MMFuseModule
from mmfuse.predictions import path_for
from mmfuse.report import count_parameters, print_summary
from mmfuse.results import FILENAME, CorruptRecord, RunRecord, failure_fields
from mmfuse.resume import checkpoint_to_resume, keep_metrics_csv, previous_run, report_skipped
from mmfuse.runinfo import (
    checkpoint_payload,
    group_choices,
    host_info,
    is_global_zero,
    task_overrides,
    versions,
)
from mmfuse.validate import validate_train_config

log = logging.getLogger(__name__)


def final_metrics(trainer: L.Trainer, module: MMFuseModule, datamodule: Any, run_test: bool,
                  last_checkpoint: Path) -> dict[str, float]:
    """Validation metrics of the final weights (validated again only if the last epoch was not, and
    then ``last_checkpoint`` rewritten so that it holds the weights these metrics are of), and test
    metrics when asked for and the data has a test split."""
    if module.last_validated_step != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        trainer.save_checkpoint(last_checkpoint, weights_only=False)  # everything, as the other saves
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if run_test and datamodule.has_split("test"):
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    return dict(sorted(metrics.items()))


def ended_by(trainer: L.Trainer) -> str:
    """What ended training: ``early_stopping`` (an ``EarlyStopping`` callback stopped it), ``max_steps``,
    ``max_epochs``, or ``other`` (``max_time``, a callback of one's own)."""
    from lightning.pytorch.callbacks import EarlyStopping

    def stopped(cb: EarlyStopping) -> bool:
        reason = getattr(cb, "stopping_reason", None)  # Lightning >= 2.5: also a stop in epoch 0 (non-finite metric)
        if reason is not None:
            return reason.value != 0  # EarlyStoppingReason.NOT_STOPPED
        return cb.stopped_epoch > 0 or (trainer.should_stop and cb.wait_count >= cb.patience)

    if any(isinstance(cb, EarlyStopping) and stopped(cb) for cb in trainer.callbacks):
        return "early_stopping"
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    if trainer.max_epochs is not None and trainer.max_epochs >= 0 and trainer.current_epoch >= trainer.max_epochs:
        return "max_epochs"
    return "other"


def write_predictions(trainer: L.Trainer, module: MMFuseModule, run_dir: Path, stages: tuple[str, ...]) -> dict[str, str]:
    """The final val / test passes' per-sample scores (``mmfuse.predictions``), one process only:
    ``{stage: path relative to run_dir}``."""
    if trainer.world_size > 1 or not trainer.is_global_zero:
        return {}
    written = {s: module.predictions.write(s, path_for(run_dir, s)) for s in stages}
    return {s: str(p.relative_to(run_dir)) for s, p in written.items() if p is not None}


@contextlib.contextmanager
def setup_objects_frozen() -> Iterator[None]:
    """Python's cyclic garbage collector kept off the objects that exist when training starts.

    By then a run holds about half a million long-lived objects (torch, Lightning, Hydra, the config);
    every full collection traverses all of them, about 0.25 s on a 2-core CPU once every few hundred
    steps: 1-15% of a step of milliseconds. ``gc.freeze()`` moves them to the permanent generation;
    ``gc.unfreeze()`` afterwards (also on failure) hands them back to the collector. One collection
    first, so that garbage is not frozen with them: a sweep's earlier jobs in the same process (Hydra's
    basic launcher, Optuna) are cycles of trainer and module that only the collector frees.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, evaluate, write ``results.json`` (rank 0). A reused run directory is skipped when its run
    completed, resumed when not (see ``mmfuse.resume``). SIGINT / SIGTERM stop the run as ``interrupted``
    (``RunInterrupted``, see ``mmfuse.interrupts``)."""
    with interrupt_on_signals():
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(cfg.paths.output_dir)
    previous = _previous_run(cfg, run_dir)  # raises, touching nothing, if the dir holds another run
    if previous is not None and previous.get("status") == "completed":
        return report_skipped(run_dir, previous) if is_global_zero() else previous
    record = RunRecord(run_dir, kind="train", overrides=task_overrides(), choices=group_choices(),
                       seed=cfg.get("seed"), versions=versions(), host=host_info(),
                       attempt=(previous or {}).get("attempt", 0) + 1) if is_global_zero() else None
    trainer = None
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        validate_train_config(cfg)
        if cfg.get("seed") is not None:
            L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        module = build_module(cfg, checkpoint_payload(cfg))
        resume_from = checkpoint_to_resume(cfg, run_dir, previous)
        if record is not None and resume_from:
            record.update(resumed_from=_relative(resume_from, run_dir))
        if cfg.get("init_from") and not resume_from:  # before the data: a feature cache keys on these weights
            load_initial_weights(module, cfg.init_from)
            if record is not None:
                record.update(init_from=str(cfg.init_from))
        datamodule = build_datamodule(cfg, module)
        trainer = build_trainer(cfg, module.task)
        log_run_config(trainer, cfg)
        with setup_objects_frozen():
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        metrics = final_metrics(trainer, module, datamodule, run_test=bool(cfg.get("test", True)),
                                last_checkpoint=last)
        predictions = write_predictions(trainer, module, run_dir, ("val", "test"))
    except BaseException as e:
        ended = failure_fields(e)
        if record is not None:
            record.finish(**ended)
        finish_loggers(trainer, ended["status"])
        raise
    if record is None:
        return {"status": "completed", "metrics": metrics}
    checkpoint_cb = trainer.checkpoint_callback  # the first ModelCheckpoint: the best by the monitor
    results = record.finish(
        "completed",
        metrics=metrics,
        checkpoint=_relative(str(last) if last.is_file() else None, run_dir),
        best_checkpoint=_relative(checkpoint_cb.best_model_path if checkpoint_cb else None, run_dir),
        monitor=module.task.monitor,
        predictions=predictions,
        ended_by=ended_by(trainer),
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        params=count_parameters(module),
        data=datamodule.describe(),
        encoded_samples=dict(module.model.encoded_samples),
        feature_cache=datamodule.feature_cache.report if datamodule.feature_cache is not None else None,
        disk=run_disk_usage(run_dir),
    )
    finish_loggers(trainer, "completed", results)
    print_summary(results)
    return results


def _previous_run(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """``previous_run``; for a corrupt ``results.json``, an error with the fix, unless ``ckpt_path`` names an
    existing checkpoint to go on from: then the file is moved aside (kept) and the earlier CSV metrics too."""
    try:
        return previous_run(run_dir, task_overrides())
    except CorruptRecord as e:
        ckpt, last = cfg.get("ckpt_path"), run_dir / "checkpoints" / "last.ckpt"
        given = None if ckpt in (None, "") else last if ckpt == "last" else Path(str(ckpt)).expanduser()
        if given is None or not given.is_file():
            fix = (f"add ckpt_path=last to resume from {last} (the file is then kept as {FILENAME}.corrupt-<time>)"
                   if last.is_file() else f"move it aside (mv {e.path} {e.path}.corrupt) to train this directory "
                   "from the start")
            raise MMFuseError(f"{e}, so this directory's run cannot be resumed or skipped. Fix: {fix}, or use a new "
                              "hydra.run.dir") from None
        attempt = 1 + len(list(run_dir.glob("*/metrics.attempt*.csv")))
        if is_global_zero():
            kept = e.move_aside()
            log.warning("%s: kept as %s; this run goes on from ckpt_path=%s", e, kept.name, ckpt)
            keep_metrics_csv(run_dir, attempt)
        return {"status": "unknown", "attempt": attempt}


def _relative(path: str | None, root: Path) -> str | None:
    if not path:
        return None
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
