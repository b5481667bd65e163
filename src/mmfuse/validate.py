"""Checks of config values that would otherwise fail deep inside PyTorch with a long traceback."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmfuse.errors import MMFuseError

_MISSING = object()


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_MISSING)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def require_number(cfg: DictConfig, key: str, example: str, minimum: float | None = None,
                   integer: bool = False, optional: bool = False) -> None:
    v = _get(cfg, key)
    if v is _MISSING or (optional and v is None):
        return
    kind = "an integer" if integer else "a number"
    if not _is_number(v) or (integer and not isinstance(v, int)):
        raise MMFuseError(f"{key}={v!r} is not {kind}: give {kind}, e.g. {key}={example}")
    if minimum is not None and v < minimum:
        raise MMFuseError(f"{key}={v!r} must be >= {minimum}, e.g. {key}={example}")


def validate_train_config(cfg: DictConfig) -> None:
    require_number(cfg, "optimizer.lr", "1e-3", minimum=0)
    require_number(cfg, "optimizer.weight_decay", "0.01", minimum=0)
    require_number(cfg, "data.batch_size", "128", minimum=1, integer=True)
    require_number(cfg, "data.num_workers", "2", minimum=0, integer=True)
    require_number(cfg, "trainer.max_epochs", "10", minimum=-1, integer=True, optional=True)
    require_number(cfg, "trainer.max_steps", "1000", minimum=-1, integer=True, optional=True)
    require_number(cfg, "seed", "42", integer=True, optional=True)
    if cfg.trainer.get("overfit_batches"):
        raise MMFuseError(
            f"trainer.overfit_batches={cfg.trainer.overfit_batches}: not supported (Lightning replaces the "
            "training sampler that keeps the data order and mid-epoch resume). Fix: train on a small set "
            "instead, e.g. data.num_train=256 trainer.max_epochs=50, or debug=fast"
        )
