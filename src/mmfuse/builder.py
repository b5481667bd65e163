"""Turn a composed config into objects: model, task, LightningModule, DataModule, Trainer.

Objects are created with ``hydra.utils.instantiate`` from ``_target_``. What one part needs to know about
another is injected here: the fusion gets the encoders' widths, the task the fusion's width and stage,
the datamodule the encoders' preprocessing.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmfuse.datamodule import MMFuseDataModule
from mmfuse.errors import MMFuseError
from mmfuse.model import FusionModel
from mmfuse.module import MMFuseModule
from mmfuse.tasks.base import Task

FUSION_META_KEYS = ("stage",)  # documented in every conf/fusion/*.yaml, checked against the class


def build_fusion(cfg: DictConfig, image_dim: int, text_dim: int) -> Any:
    meta = {k: cfg.fusion.get(k) for k in FUSION_META_KEYS}
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.fusion, resolve=True).items() if k not in FUSION_META_KEYS}
    fusion = instantiate(kwargs, image_dim=image_dim, text_dim=text_dim)
    if meta["stage"] is not None and meta["stage"] != fusion.stage:
        raise MMFuseError(
            f"conf/fusion: stage={meta['stage']!r} but {type(fusion).__name__}.stage={fusion.stage!r}; "
            "fix the config's stage field"
        )
    return fusion


def build_model(cfg: DictConfig) -> tuple[FusionModel, Task]:
    image_encoder = instantiate(cfg.encoder.image)
    text_encoder = instantiate(cfg.encoder.text)
    fusion = build_fusion(cfg, image_encoder.out_dim, text_encoder.out_dim)
    task = instantiate(cfg.task, in_dim=fusion.out_dim, fusion_stage=fusion.stage)
    return FusionModel(image_encoder, text_encoder, fusion), task


def build_module(cfg: DictConfig, saved_config: dict[str, Any] | None = None) -> MMFuseModule:
    model, task = build_model(cfg)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    lr_mult = OmegaConf.to_container(cfg.lr_mult) if cfg.get("lr_mult") else None
    return MMFuseModule(model, task, optimizer=instantiate(cfg.optimizer), scheduler=scheduler,
                        config=saved_config, lr_mult=lr_mult)


def build_datamodule(cfg: DictConfig, module: MMFuseModule) -> MMFuseDataModule:
    datamodule = instantiate(cfg.data)
    datamodule.attach(module.model.image_encoder.transform, module.model.text_encoder.tokenizer)
    return datamodule


def build_callbacks(cfg: DictConfig, task: Task) -> list[L.Callback]:
    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None:
            continue
        if name == "model_checkpoint" and cb_cfg.get("monitor") is None:
            callbacks.append(instantiate(cb_cfg, monitor=task.monitor, mode=task.monitor_mode))
        else:
            callbacks.append(instantiate(cb_cfg))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]


def build_trainer(cfg: DictConfig, task: Task) -> L.Trainer:
    return instantiate(cfg.trainer, callbacks=build_callbacks(cfg, task), logger=build_loggers(cfg))
