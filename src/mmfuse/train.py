"""``train(cfg)``: one training run, from a composed config to ``results.json``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from mmfuse.builder import build_datamodule, build_module, build_trainer
from mmfuse.errors import MMFuseError
from mmfuse.module import MMFuseModule
from mmfuse.report import count_parameters, print_summary
from mmfuse.results import RunRecord
from mmfuse.runinfo import checkpoint_payload, group_choices, is_global_zero, task_overrides, versions
from mmfuse.validate import validate_train_config

log = logging.getLogger(__name__)


def resolve_resume(cfg: DictConfig, run_dir: Path) -> str | None:
    """``ckpt_path``: null (fresh start), ``last`` (this run dir's ``checkpoints/last.ckpt``) or a path."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if ckpt == "last" else Path(str(ckpt)).expanduser()
    if not path.is_file():
        raise MMFuseError(f"ckpt_path={ckpt}: {path} does not exist. Fix: give an existing checkpoint "
                          "file, or drop ckpt_path to start from scratch")
    return str(path)


def final_metrics(trainer: L.Trainer, module: MMFuseModule, datamodule: Any, run_test: bool) -> dict[str, float]:
    """Validation metrics of the final weights (validated again only if the last epoch was not), and
    test metrics when asked for and the data has a test split."""
    if module.last_validated_step != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if run_test and datamodule.has_split("test"):
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    return dict(sorted(metrics.items()))


def train(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(cfg.paths.output_dir)
    record = RunRecord(run_dir, kind="train", overrides=task_overrides(), choices=group_choices(),
                       seed=cfg.get("seed"), versions=versions()) if is_global_zero() else None
    try:
        validate_train_config(cfg)
        if cfg.get("seed") is not None:
            L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        module = build_module(cfg, checkpoint_payload(cfg))
        datamodule = build_datamodule(cfg, module)
        trainer = build_trainer(cfg, module.task)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_resume(cfg, run_dir))
        metrics = final_metrics(trainer, module, datamodule, run_test=bool(cfg.get("test", True)))
    except BaseException as e:
        if record is not None:
            record.finish("interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                          error=f"{type(e).__name__}: {e}")
        raise
    if record is None:
        return {"status": "completed", "metrics": metrics}
    checkpoint_cb = trainer.checkpoint_callback
    results = record.finish(
        "completed",
        metrics=metrics,
        checkpoint=_relative(checkpoint_cb.last_model_path if checkpoint_cb else None, run_dir),
        best_checkpoint=_relative(checkpoint_cb.best_model_path if checkpoint_cb else None, run_dir),
        monitor=module.task.monitor,
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        params=count_parameters(module),
        data=datamodule.describe(),
        encoded_samples=dict(module.model.encoded_samples),
        feature_cache=datamodule.feature_cache.report if datamodule.feature_cache is not None else None,
    )
    print_summary(results)
    return results


def _relative(path: str | None, root: Path) -> str | None:
    if not path:
        return None
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
