"""Checkpoints without the weights of frozen pretrained encoders (``checkpoint_frozen_encoders=false``).

A fully frozen encoder whose weights come from a source (``encoder.<side>.pretrained`` true, a weights
name or a path; for Hugging Face encoders ``name_or_path``) never changes during training, so a
checkpoint need not store it again (ResNet-50: 98 MB in every best.ckpt and last.ckpt). ``leave_out``
removes its ``model.<side>_encoder.*`` entries from the checkpoint's ``state_dict`` and records, under
``"mmfuse_frozen"``, the side's source (``source``: the weights' name or path and their folder) and the sha256 of the removed tensors (names, dtypes, shapes,
bytes; ``mmfuse.features.keys.update_tensor``). ``put_back`` fills them in again on load from an encoder
built from that source (resume: the run's own; ``eval.py`` and ``init_from``: rebuilt from the
checkpoint's config, with the eval command's ``encoder.<side>.{pretrained,weights_dir,name_or_path}``
when given: the weights moved elsewhere) after checking that it gives the same sha256; other weights are an MMFuseError.
Frozen encoders with random weights (``pretrained=false``) and partly trainable ones stay in the checkpoint.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.features.keys import update_tensor

FROZEN_KEY = "mmfuse_frozen"
# encoders whose frozen weights may be left out (a video encoder's come from its nested frame config:
# always stored)
SIDES = ("image", "audio", "text")
SOURCE_KEYS = ("pretrained", "weights_dir", "name_or_path")  # where an encoder's weights come from


def prefix(side: str) -> str:
    return f"model.{side}_encoder."


def _digest(tensors: dict[str, torch.Tensor], float_dtype: str) -> str:
    """sha256 over sorted names and tensors, floating ones in ``float_dtype`` (the checkpoint's)."""
    dtype = getattr(torch, float_dtype.removeprefix("torch."))
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        update_tensor(h, t.to(dtype) if t.is_floating_point() else t)
    return h.hexdigest()


def source(encoder_cfg: dict[str, Any]) -> str:
    """The weights an encoder config loads: ``name_or_path`` (Hugging Face), else ``pretrained`` (a
    weights name or path; ``true``: the architecture's default weights), with ``weights_dir`` when set."""
    name = encoder_cfg.get("name_or_path") or encoder_cfg.get("pretrained")
    if name is True or str(name).lower() == "true":
        name = f"{encoder_cfg.get('arch', 'the')} default weights"
    folder = encoder_cfg.get("weights_dir")
    return f"{name} in {folder}" if folder else str(name)


def source_overrides(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """``encoder.<side>.<SOURCE_KEYS>`` of command-line ``overrides``, by side."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given: dict[str, dict[str, Any]] = {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        parts = o.key_or_group.lstrip("+~").split(".")
        if len(parts) == 3 and parts[0] == "encoder" and parts[1] in SIDES and parts[2] in SOURCE_KEYS:
            given.setdefault(parts[1], {})[parts[2]] = o.value()
    return given


def rebuildable(encoder: nn.Module, encoder_cfg: dict[str, Any]) -> bool:
    """Fully frozen, and its weights come from a source that can give them again."""
    frozen = not any(p.requires_grad for p in encoder.parameters())
    return frozen and encoder_cfg.get("pretrained", False) not in (False, None, "false")


def leave_out(state_dict: dict[str, Any], encoders: dict[str, nn.Module],
              encoder_cfgs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Remove the rebuildable encoders' entries from ``state_dict``; what ``put_back`` needs."""
    record = {}
    for side in SIDES:
        if side not in encoders or not rebuildable(encoders[side], encoder_cfgs.get(side) or {}):
            continue
        keys = [k for k in state_dict if k.startswith(prefix(side))]
        tensors = {k[len(prefix(side)):]: state_dict[k] for k in keys}
        floats = {str(t.dtype) for t in tensors.values() if isinstance(t, torch.Tensor) and t.is_floating_point()}
        if not keys or len(floats) != 1 or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            continue  # nothing to gain, mixed precisions or non-tensor state: kept
        float_dtype = floats.pop()
        for k in keys:
            del state_dict[k]
        record[side] = {"source": source(encoder_cfgs[side]), "keys": len(keys),
                        "float_dtype": float_dtype, "sha256": _digest(tensors, float_dtype)}
    return record


def put_back(checkpoint: dict[str, Any], where: str, encoders: dict[str, nn.Module] | None = None,
             sources: dict[str, dict[str, Any]] | None = None) -> None:
    """Fill the left-out encoders into ``checkpoint["state_dict"]`` (in place) from ``encoders``, or
    rebuilt from the checkpoint's config with ``sources`` (``source_overrides``) over it; MMFuseError
    (naming ``where``) when their weights differ."""
    for side, info in (checkpoint.get(FROZEN_KEY) or {}).items():
        if encoders is not None:
            encoder, used = encoders[side], info["source"]
        else:
            encoder, used = _rebuild(checkpoint, side, where, (sources or {}).get(side, {}))
        tensors = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
        if not all(isinstance(t, torch.Tensor) for t in tensors.values()) or \
                _digest(tensors, info["float_dtype"]) != info["sha256"]:
            raise MMFuseError(
                f"{where}: the frozen {side} encoder was left out of this checkpoint (checkpoint_frozen_encoders="
                f"false) and its source encoder.{side} {used!r} now gives other weights than the run "
                f"was trained with (sha256 differs). Fix: restore the weights that source had then")
        dtype = getattr(torch, info["float_dtype"].removeprefix("torch."))
        checkpoint["state_dict"].update({prefix(side) + k: (t.to(dtype) if t.is_floating_point() else t)
                                         for k, t in tensors.items()})
    checkpoint.pop(FROZEN_KEY, None)


def _rebuild(checkpoint: dict[str, Any], side: str, where: str, given: dict[str, Any]) -> tuple[nn.Module, str]:
    cfg = {**checkpoint["mmfuse_config"]["config"]["encoder"][side], **given}
    cfg.pop("load_weights", None)
    try:
        return instantiate(cfg), source(cfg)
    except Exception as e:  # Hydra wraps the constructor's error in an InstantiationException
        cause = e if isinstance(e, MMFuseError) else (e.__cause__ or e)
        raise MMFuseError(f"{where}: rebuilding its frozen {side} encoder, left out of the checkpoint, from "
                          f"encoder.{side} failed: {cause}") from None
