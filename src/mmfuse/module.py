"""The LightningModule: optimisation and logging around a ``FusionModel`` and a ``Task``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from mmfuse.errors import MMFuseError
from mmfuse.eval_groups import CONFIG_KEY
from mmfuse.frozen_weights import FROZEN_KEY, leave_out, put_back
from mmfuse.model import FusionModel
from mmfuse.predictions import PredictionLog
from mmfuse.tasks.base import Task


class MMFuseModule(L.LightningModule):
    """Training / validation / test steps delegate to ``task``; metrics are logged once per epoch.

    ``optimizer`` and ``scheduler`` are partials (Hydra ``_partial_: true``): ``optimizer(params)`` and
    ``scheduler(optimizer, total_steps=...)`` (stepped every optimizer step). ``lr_mult`` scales the
    learning rate of each part (``<modality>_encoder`` for each encoder, ``fusion``, ``head``). ``config`` is the run's
    resolved config; it is saved in every checkpoint under ``"mmfuse_config"`` so that the model can be
    rebuilt from the checkpoint alone. ``checkpoint_frozen_encoders=False`` leaves frozen pretrained
    encoders out of the checkpoints (``mmfuse.frozen_weights``; put back from the run's own on resume).
    """

    def __init__(
        self,
        model: FusionModel,
        task: Task,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        config: dict[str, Any] | None = None,
        lr_mult: dict[str, float] | None = None,
        checkpoint_frozen_encoders: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.config = config or {}
        self.lr_mult = dict(lr_mult or {})
        self.checkpoint_frozen_encoders = bool(checkpoint_frozen_encoders)
        self.last_validated_step = -1
        self._log_every_step = False
        self.predictions = PredictionLog()  # the latest val / test pass's per-sample scores

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name around every hook, about 50 times a step; nn.Module's
        # __setattr__ (parameter / submodule / buffer checks) costs 8x a plain attribute store
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.model(batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self.task.step(self.model, batch)
        if self._logs_this_step():
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True,
                     batch_size=_batch_size(batch))
        return loss

    def on_train_start(self) -> None:
        callbacks = getattr(self.trainer, "callbacks", [])
        self._log_every_step = self.trainer.log_every_n_steps == 0 or any(
            getattr(cb, "monitor", None) == "train/loss" for cb in callbacks)

    def _logs_this_step(self) -> bool:
        """Whether to ``self.log`` the loss this step: on the steps the loggers write (every
        ``trainer.log_every_n_steps``, Lightning's own criterion), and on every step when a callback
        monitors ``train/loss`` or ``log_every_n_steps`` is 0 (then only the progress bar shows it).

        ``self.log`` costs a fraction of a millisecond, as much as a whole step of a fusion head on cached
        features, and a step-only value logged on other steps is never written (the progress bar shows the
        last written one). Without a trainer, or on a Lightning without that criterion, True.
        """
        trainer = self._trainer
        connector = getattr(trainer, "_logger_connector", None)
        if connector is None or not hasattr(connector, "should_update_logs") or self._log_every_step:
            return True
        return bool(connector.should_update_logs or trainer.fast_dev_run)

    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        _, outputs = self.task.step(self.model, batch)
        self.task.update(stage, outputs, batch)
        per_sample = getattr(self.task, "per_sample", None)  # a task of your own may not define it
        if per_sample is not None:
            self.predictions.add(stage, per_sample(outputs, batch))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _log_epoch(self, stage: str) -> None:
        # metrics that need the model over the whole split (retrieval), scored in the precision of the
        # steps (Lightning's epoch-end hooks run outside its autocast: bf16 features would meet float32 layers)
        with self._precision_context():
            self.task.epoch_end(stage, self.model)
        metrics = self.task.compute(stage)  # torchmetrics has already reduced across processes
        self.task.reset(stage)
        self.log_dict({k: v.float() for k, v in metrics.items()}, prog_bar=False, sync_dist=False,
                      rank_zero_only=False)

    def _precision_context(self) -> Any:
        trainer = self._trainer
        return trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext()

    def setup(self, stage: str) -> None:
        """A task that reads the data beyond its batches (captioning: references, raw images) gets the
        datamodule, which Lightning has set up by now."""
        attach = getattr(self.task, "attach_data", None)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if attach is not None and datamodule is not None:
            attach(datamodule)

    def on_fit_end(self) -> None:
        fit_end = getattr(self.task, "fit_end", None)
        if fit_end is not None and self.trainer.is_global_zero:
            fit_end(self.trainer.default_root_dir, list(self.trainer.loggers))

    def on_validation_epoch_start(self) -> None:
        self.predictions.reset("val")

    def on_test_epoch_start(self) -> None:
        self.predictions.reset("test")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        if not self.trainer.sanity_checking:
            self.last_validated_step = self.trainer.global_step

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def parts(self) -> dict[str, torch.nn.Module]:
        return {**{f"{m}_encoder": enc for m, enc in self.model.encoders.items()},
                "fusion": self.model.fusion, "head": self.task}

    def param_groups(self) -> list[dict[str, Any]]:
        """One group per part, ``lr = optimizer.lr * lr_mult[part]``; frozen parameters left out."""
        unknown = set(self.lr_mult) - set(self.parts())
        if unknown:
            raise MMFuseError(f"lr_mult has unknown parts {sorted(unknown)}; known: {sorted(self.parts())}")
        base_lr = self.optimizer_factory.keywords["lr"]
        groups = []
        for name, part in self.parts().items():
            params = [p for p in part.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "name": name, "lr": base_lr * self.lr_mult.get(name, 1.0)})
        return groups

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.param_groups())
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config
        if not self.checkpoint_frozen_encoders:
            encoder_cfgs = (self.config.get("config") or {}).get("encoder") or {}
            left_out = leave_out(checkpoint["state_dict"], self._encoders(),
                                 {side: encoder_cfgs.get(side) or {} for side in self.model.encoders})
            if left_out:
                checkpoint[FROZEN_KEY] = left_out

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # resume: the run's own encoders, built from their source
        put_back(checkpoint, f"ckpt_path={getattr(self._trainer, 'ckpt_path', None)}", self._encoders())

    def _encoders(self) -> dict[str, torch.nn.Module]:
        return self.model.encoders


def _batch_size(batch: dict[str, Any]) -> int:
    return int(batch["label"].shape[0]) if "label" in batch else 1
