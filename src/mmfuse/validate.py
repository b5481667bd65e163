"""Checks of config values that would otherwise fail deep inside PyTorch with a long traceback, or train
something other than what was asked (a fusion of width 0 has no parameters; ``lr=nan`` trains nothing)."""

from __future__ import annotations

import logging
import math
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import EXAMPLES, is_positive_int

log = logging.getLogger(__name__)
_MISSING = object()

# the widths and counts of every fusion (with examples): integers >= 1, or >= FUSION_WIDTH_MINIMUM[key]
# (the fusions' own constructor checks)
FUSION_WIDTHS = EXAMPLES
FUSION_WIDTH_MINIMUM = {"self_layers": 0}  # mult: 0 self-attention layers is the no-self-attention ablation
FUSION_WIDTHS_NULLABLE = ("image_tokens",)  # null: not used by the configured form
FUSION_WIDTH_LISTS = ("hidden",)  # concat's hidden layers are a list of widths (tfn's hidden is one width)


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_MISSING)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def require_number(cfg: DictConfig, key: str, example: str, minimum: float | None = None,
                   maximum: float | None = None, integer: bool = False, optional: bool = False) -> None:
    """``cfg.<key>`` is a finite number (an integer if ``integer``) in ``[minimum, maximum]``; absent, or
    None when ``optional``, passes."""
    v = _get(cfg, key)
    if v is _MISSING or (optional and v is None):
        return
    kind = "an integer" if integer else "a number"
    if not _is_number(v) or (integer and not isinstance(v, int)):
        raise MMFuseError(f"{key}={v!r} is not {kind}: give {kind}, e.g. {key}={example}")
    if not math.isfinite(v):
        raise MMFuseError(f"{key}={v!r} is not a finite number: give one, e.g. {key}={example}")
    if minimum is not None and v < minimum:
        raise MMFuseError(f"{key}={v!r} must be >= {minimum}, e.g. {key}={example}")
    if maximum is not None and v > maximum:
        raise MMFuseError(f"{key}={v!r} must be <= {maximum}, e.g. {key}={example}")


def validate_fusion(cfg: DictConfig) -> None:
    """Every width / count key of ``cfg.fusion`` (``FUSION_WIDTHS``) is an integer >= 1 (>= 0 for
    ``FUSION_WIDTH_MINIMUM``'s keys); ``dropout`` is in [0, 1]."""
    fusion = cfg.get("fusion")
    if fusion is None:
        return
    for name, example in FUSION_WIDTHS.items():
        key = f"fusion.{name}"
        v = _get(cfg, key)
        if name in FUSION_WIDTH_LISTS and isinstance(v, (list, ListConfig)):
            for i, width in enumerate(v):
                if not is_positive_int(width):
                    raise MMFuseError(f"{key}={list(v)}: item {i} ({width!r}) is not a width >= 1, e.g. "
                                      f"{key}=[{example}] (or [] for none)")
            continue
        require_number(cfg, key, str(example), minimum=FUSION_WIDTH_MINIMUM.get(name, 1), integer=True,
                       optional=name in FUSION_WIDTHS_NULLABLE)
    require_number(cfg, "fusion.dropout", "0.1", minimum=0, maximum=1)


def validate_length(cfg: DictConfig) -> None:
    """``trainer.max_epochs`` / ``max_steps``: integers >= -1 (-1: Lightning's no limit), not both unlimited;
    ``max_steps`` not 0 (the run would stop before its first step and report completed for an untrained
    model); ``max_epochs=0`` evaluates the starting weights on purpose, with a warning.

    The learning-rate schedule is laid out over the run's length (``trainer.estimated_stepping_batches``),
    which an endless run does not have.
    """
    require_number(cfg, "trainer.max_epochs", "10", minimum=-1, integer=True, optional=True)
    require_number(cfg, "trainer.max_steps", "1000", minimum=-1, integer=True, optional=True)
    epochs, steps = _get(cfg, "trainer.max_epochs"), _get(cfg, "trainer.max_steps")
    if steps == 0:
        raise MMFuseError("trainer.max_steps=0 trains nothing (the run would stop before its first step and report "
                          "completed). Fix: give at least 1, e.g. trainer.max_steps=1000, or trainer.max_epochs=0 to "
                          "evaluate the starting weights on purpose")
    if epochs == 0:
        log.warning("trainer.max_epochs=0: nothing is trained; the run evaluates its starting weights (results.json: "
                    "steps 0)")
    if epochs == -1 and steps in (_MISSING, None, -1):
        raise MMFuseError(
            "trainer.max_epochs=-1 (Lightning's 'no limit') gives the run no end, and the learning-rate schedule "
            "is laid out over its length. Fix: give a number of epochs, e.g. trainer.max_epochs=10, or of "
            "optimizer steps, e.g. +trainer.max_steps=1000"
        )


def validate_train_config(cfg: DictConfig) -> None:
    require_number(cfg, "optimizer.lr", "1e-3", minimum=0)
    require_number(cfg, "optimizer.weight_decay", "0.01", minimum=0)
    require_number(cfg, "scheduler.warmup_fraction", "0.05", minimum=0, maximum=1)
    for part in (cfg.get("lr_mult") or {}):
        require_number(cfg, f"lr_mult.{part}", "0.1", minimum=0)
    require_number(cfg, "data.batch_size", "128", minimum=1, integer=True)
    require_number(cfg, "data.num_workers", "2", minimum=0, integer=True)
    validate_length(cfg)
    require_number(cfg, "seed", "42", integer=True, optional=True)
    validate_fusion(cfg)
    if cfg.trainer.get("overfit_batches"):
        raise MMFuseError(
            f"trainer.overfit_batches={cfg.trainer.overfit_batches}: not supported (Lightning replaces the "
            "training sampler that keeps the data order and mid-epoch resume). Fix: train on a small set "
            "instead, e.g. data.num_train=256 trainer.max_epochs=50, or debug=fast"
        )
