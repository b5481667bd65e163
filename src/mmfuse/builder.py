"""Turn a composed config into objects: model, task, LightningModule, DataModule, Trainer.

Objects are created with ``hydra.utils.instantiate`` from ``_target_``. What one part needs to know about
another is injected here: the fusion gets the encoders' widths, the task the fusion's width and stage,
the datamodule the encoders' preprocessing and the feature cache (``conf/cache``).

A trainer config may carry mmfuse's speed options besides Lightning ``Trainer`` arguments (see
``conf/trainer/gpu.yaml``): ``channels_last`` (CNN image encoders, weights and inputs, in NHWC),
``compile`` (``false``, ``true``, a ``torch.compile`` mode or a mapping of its arguments: encoders,
fusion and the task's head are compiled in place with ``nn.Module.compile``, so checkpoints keep
their keys; batch size and text length are marked dynamic, so the encoders compile once, unless the
mapping sets ``dynamic``) and ``float32_matmul_precision`` (``highest | high | medium``).
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import lightning as L
import torch
from hydra._internal.utils import _locate
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from mmfuse.checkpoint_io import CheckpointIO
from mmfuse.datamodule import MMFuseDataModule
from mmfuse.decoders.memory import memory_dim
from mmfuse.errors import MMFuseError
from mmfuse.features import FeatureCache, cache_settings
from mmfuse.fusion.base import is_two_input, ordered_dims, two_input
from mmfuse.fusion.pairs import ContextPairs
from mmfuse.model import FusionModel
from mmfuse.module import MMFuseModule
from mmfuse.tasks.base import Task
from mmfuse.types import MODALITIES

# documented in conf/fusion/*.yaml: stage (checked against the class); context (pairwise fusions: the modality
# each other one is paired with when a run has more than two, mmfuse.fusion.pairs)
FUSION_META_KEYS = ("stage", "context")
SPEED_KEYS = ("channels_last", "compile", "float32_matmul_precision")  # trainer keys that are not Trainer args
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def build_fusion(cfg: DictConfig, dims: dict[str, int]) -> Any:
    """The fusion of ``cfg.fusion`` over ``dims = {modality: width}``; a pairwise fusion given more than two
    modalities is applied to each (modality, ``fusion.context``) pair (``mmfuse.fusion.pairs``)."""
    meta = {k: cfg.fusion.get(k) for k in FUSION_META_KEYS}
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.fusion, resolve=True).items() if k not in FUSION_META_KEYS}
    dims = ordered_dims("fusion", dims)
    cls = get_class(kwargs["_target_"])
    if is_two_input(cls):
        fusion = two_input(lambda **widths: instantiate(kwargs, **widths), cls, dims)
    elif getattr(cls, "arity", "n") == "pair" and len(dims) > 2:
        fusion = ContextPairs(dims, lambda pair: instantiate(kwargs, dims=pair), meta["context"] or "text")
    else:
        fusion = instantiate(kwargs, dims=dims)
    if meta["stage"] is not None and meta["stage"] != fusion.stage:
        raise MMFuseError(
            f"conf/fusion: stage={meta['stage']!r} but {type(fusion).__name__}.stage={fusion.stage!r}; "
            "fix the config's stage field"
        )
    return fusion


def configured_modalities(cfg: DictConfig) -> tuple[str, ...]:
    """The modalities whose ``encoder.<modality>`` group selects an encoder (not ``none``), in order."""
    encoders = cfg.get("encoder") or {}
    return tuple(m for m in MODALITIES if (encoders.get(m) or {}).get("_target_"))


def build_encoders(cfg: DictConfig) -> dict[str, Any]:
    return {m: instantiate(cfg.encoder[m]) for m in configured_modalities(cfg)}


def _accepts(target_cfg: DictConfig, name: str) -> bool:
    """Whether the ``_target_`` of ``target_cfg`` takes a keyword ``name`` (or ``**kwargs``)."""
    params = inspect.signature(_locate(target_cfg._target_)).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def is_generative(task_cfg: DictConfig) -> bool:
    """Whether the task generates text and so takes a ``decoder``: its class's ``uses_decoder(task_cfg)``
    (a task that generates only with some options: ``task=vqa task.answer=generate``), else its
    ``generative`` attribute."""
    cls = _locate(task_cfg._target_)
    uses = getattr(cls, "uses_decoder", None)
    return bool(uses(task_cfg)) if callable(uses) else bool(getattr(cls, "generative", False))


def build_decoder(cfg: DictConfig, fusion: Any) -> Any:
    """The decoder of ``cfg.decoder`` over the memory ``fusion`` hands over (``mmfuse.decoders.memory``)."""
    decoder_cfg = cfg.get("decoder") or {}
    if not decoder_cfg.get("_target_"):
        raise MMFuseError("this task generates text and needs a decoder: set decoder=transformer | hf_cross | prefix_lm")
    return instantiate(decoder_cfg, memory_dim=memory_dim(fusion, cfg.task.get("memory", "auto")))


def build_model(cfg: DictConfig) -> tuple[FusionModel, Task]:
    encoders = build_encoders(cfg)
    dims = {m: enc.out_dim for m, enc in encoders.items()}
    fusion = build_fusion(cfg, dims)
    extra = {"modalities": tuple(dims)} if _accepts(cfg.task, "modalities") else {}
    if is_generative(cfg.task):  # under the task's decoder_keyword (task=dialog's own `decoder` key is a mode)
        extra[getattr(_locate(cfg.task._target_), "decoder_keyword", "decoder")] = build_decoder(cfg, fusion)
    # image_dim: the width of the modality ITM / retrieval match against the text (image, video or audio)
    task = instantiate(cfg.task, in_dim=fusion.out_dim, fusion_stage=fusion.stage,
                       image_dim=dims.get("image", dims.get("video", dims.get("audio"))), text_dim=dims.get("text"),
                       **extra)
    model = FusionModel(encoders.get("image"), encoders.get("text"), fusion,
                        video_encoder=encoders.get("video"), audio_encoder=encoders.get("audio"))
    return model, task


def build_module(cfg: DictConfig, saved_config: dict[str, Any] | None = None) -> MMFuseModule:
    model, task = build_model(cfg)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    lr_mult = OmegaConf.to_container(cfg.lr_mult) if cfg.get("lr_mult") else None
    module = MMFuseModule(model, task, optimizer=instantiate(cfg.optimizer), scheduler=scheduler,
                          config=saved_config, lr_mult=lr_mult,
                          checkpoint_frozen_encoders=bool(cfg.get("checkpoint_frozen_encoders", True)))
    apply_speed_options(module, cfg.get("trainer") or {})
    return module


def apply_speed_options(module: MMFuseModule, trainer_cfg: Any) -> None:
    """``trainer.channels_last`` / ``trainer.compile`` / ``trainer.float32_matmul_precision`` (see above)."""
    model = module.model
    if trainer_cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(str(trainer_cfg.get("float32_matmul_precision")))
    channels_last = trainer_cfg.get("channels_last", False)
    if channels_last not in (True, False):
        raise MMFuseError(f"trainer.channels_last={channels_last!r}: expected true or false")
    image_encoder = model.image_encoder
    convolutions = sum(isinstance(m, torch.nn.Conv2d) for m in image_encoder.modules()) if image_encoder else 0
    if channels_last and convolutions > 1:  # a CNN (a ViT's one patch-embedding convolution is not)
        image_encoder.to(memory_format=torch.channels_last)
        model.image_memory_format = torch.channels_last
    mode = trainer_cfg.get("compile", False)
    if mode is False or mode is None:
        return
    if OmegaConf.is_config(mode) or isinstance(mode, dict):
        kwargs = OmegaConf.to_container(mode) if OmegaConf.is_config(mode) else dict(mode)
    elif mode is True or mode in COMPILE_MODES:
        kwargs = {} if mode is True else {"mode": mode}
    else:
        raise MMFuseError(f"trainer.compile={mode!r}: expected false, true, a torch.compile mode {COMPILE_MODES} "
                          "or a mapping of torch.compile arguments, e.g. trainer.compile={backend:eager}")
    model.dynamic_shapes = "dynamic" not in kwargs
    for part in (*model.encoders.values(), model.fusion, getattr(module.task, "head", None)):
        if part is not None:
            part.compile(**kwargs)


def build_feature_cache(cfg: DictConfig, model: FusionModel) -> FeatureCache | None:
    """The feature cache for the frozen encoders, or None (``cache=off``, or no encoder is frozen)."""
    settings = cache_settings(cfg.get("cache"))
    if not settings.enabled:
        return None
    if settings.num_workers is None:
        settings = replace(settings, num_workers=int(cfg.data.get("num_workers", 0) or 0))
    configs = {side: OmegaConf.to_container(cfg.encoder[side], resolve=True) for side in model.encoders}
    cache = FeatureCache(model, settings, configs)
    return cache if cache.cached_sides() else None


def build_datamodule(cfg: DictConfig, module: MMFuseModule) -> MMFuseDataModule:
    datamodule = instantiate(cfg.data)
    encoders = module.model.encoders
    datamodule.attach(**{m: (enc.tokenizer if m == "text" else enc.transform) for m, enc in encoders.items()})
    datamodule.check_modalities(tuple(encoders), f"data={cfg.data.get('_target_', '?').rsplit('.', 1)[-1]}")
    prepare = getattr(module.task, "configure_data", None)  # a generative task sets up its targets
    if prepare is not None:
        prepare(datamodule)
    datamodule.feature_cache = build_feature_cache(cfg, module.model)
    return datamodule


# callbacks whose ``monitor: null`` means the task's metric and direction (``last_checkpoint``'s means none)
MONITORING_CALLBACKS = ("model_checkpoint", "early_stopping")


def build_callbacks(cfg: DictConfig, task: Task) -> list[L.Callback]:
    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None:
            continue
        if name in MONITORING_CALLBACKS and cb_cfg.get("monitor") is None:
            callbacks.append(instantiate(cb_cfg, monitor=task.monitor, mode=task.monitor_mode))
        else:
            callbacks.append(instantiate(cb_cfg))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]


def build_trainer(cfg: DictConfig, task: Task) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with the configured callbacks and loggers. With no progress bar
    among the callbacks (``callbacks.progress_bar=null``) there is none: Lightning would otherwise add
    its own, redrawn after every step, unless ``trainer.enable_progress_bar`` says otherwise.

    Checkpoints are written and read by ``mmfuse.checkpoint_io.CheckpointIO`` (temporary name and
    rename, checksum, ``weights_only`` loading, resume included)."""
    trainer_cfg = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k not in SPEED_KEYS}
    callbacks = build_callbacks(cfg, task)
    if not any(isinstance(cb, ProgressBar) for cb in callbacks):
        trainer_cfg.setdefault("enable_progress_bar", False)
    plugins = trainer_cfg.pop("plugins", None) or []
    plugins = list(plugins) if isinstance(plugins, list) else [plugins]
    return instantiate(trainer_cfg, callbacks=callbacks, logger=build_loggers(cfg), plugins=[*plugins, CheckpointIO()])
