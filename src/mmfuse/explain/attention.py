"""Text-to-image attention maps of token-level fusions: ``cross_attention`` (``direction`` text_to_image or
both), ``co_attention`` and ``single_stream``, between image and text; other fusions are skipped.

``attention_maps(module, batch) -> [B, L, H, S, N]``: layer ``l``'s attention of each text token ``s`` over
the image tokens ``n``, per head; each row sums to one over the real image tokens.
- ``cross_attention``: the text stack's cross-attention. ``global_token=true`` prepends the pooled image
  vector: its column is dropped and the rows renormalised.
- ``co_attention``: the text stream's cross-attention (``cross_text``) of each layer.
- ``single_stream``: the joint self-attention ``A_l`` over ``[CLS; text; image]``, its text rows and image
  columns, renormalised over the image (the share of a word's attention that goes to the image, spread).

``summary(module, batch) -> [B, S, N]``, the map drawn and scored:
- ``cross_attention``, ``co_attention`` (``rollout``): ``R = (1/L) Σ_l (1/H) Σ_h A_{l,h}``. Rollout (Abnar &
  Zuidema 2020) multiplies attention through layers whose keys are the previous layer's outputs; in these
  stacks the image keys are never (cross_attention) or separately (co_attention) updated, so that chain does
  not close over the image; averaging the layers' maps keeps every layer's view of the image without it.
- ``single_stream`` (``joint_rollout``): Abnar & Zuidema's rollout over the joint sequence,
  ``Â_l = rownorm(0.5 Ā_l + 0.5 I)`` with ``Ā_l`` the head mean, ``R = Â_L ⋯ Â_1``; its text rows and image
  columns, renormalised over the image.
"""

from __future__ import annotations

from typing import Any

import torch

from mmfuse.fusion.layers import recording_attention

READ = ("CrossAttentionFusion", "CoAttentionFusion", "SingleStreamFusion")


def supports(fusion: Any) -> str | None:
    """None when ``fusion`` has text-to-image attention maps, else why not."""
    name = type(fusion).__name__
    if name not in READ:
        return f"{name} has no text-to-image attention (read: cross_attention, co_attention, single_stream)"
    if name == "SingleStreamFusion":
        return None if {"image", "text"} <= set(fusion.order) else "single_stream without both image and text"
    if (fusion.x, fusion.y) != ("image", "text"):
        return f"{name} between {fusion.x} and {fusion.y}, not image and text"
    if name == "CrossAttentionFusion" and "text_to_image" not in fusion.directions:
        return "cross_attention without a text_to_image stack between image and text"
    return None


def _record(module: Any, batch: dict[str, Any]) -> tuple[list[tuple[Any, torch.Tensor]], dict[str, Any]]:
    """The recorded ``(block, weights)`` of one forward pass and the fusion's inputs."""
    fusion, seen = module.model.fusion, {}
    hook = fusion.register_forward_pre_hook(lambda _, args: seen.update(args[0]))
    try:
        with recording_attention() as recorded, torch.no_grad():
            module.model(batch)
    finally:
        hook.remove()
    return recorded, seen


def _of(recorded: list[tuple[Any, torch.Tensor]], blocks: Any) -> torch.Tensor:
    """``[B, L, H, T_q, T_c]``: the weights recorded by ``blocks``, in their order."""
    return torch.stack([next(w for b, w in recorded if b is block) for block in blocks], dim=1)


def _renormalised(weights: torch.Tensor) -> torch.Tensor:
    return weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)


def _joint_slices(fusion: Any, inputs: dict[str, Any]) -> tuple[slice, slice]:
    """The text and image positions of single_stream's ``[CLS; ...]`` sequence (``fusion.order``)."""
    start, where = 1, {}
    for m in fusion.order:
        n = inputs[m].tokens.shape[1]
        where[m], start = slice(start, start + n), start + n
    return where["text"], where["image"]


def _maps_and_joint(module: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(maps [B, L, H, S, N], single_stream's joint rollout's text-to-image block [B, S, N] or None)``."""
    fusion = module.model.fusion
    recorded, inputs = _record(module, batch)
    name = type(fusion).__name__
    if name == "SingleStreamFusion":
        joint = _of(recorded, fusion.blocks)
        text, image = _joint_slices(fusion, inputs)
        return _renormalised(joint[..., text, image]), _renormalised(joint_rollout(joint)[:, text, image])
    if name == "CoAttentionFusion":
        return _of(recorded, fusion.part("cross", fusion.y)), None
    weights = _of(recorded, fusion.stacks["text_to_image"])
    return (_renormalised(weights[..., 1:]) if fusion.global_token else weights), None


def attention_maps(module: Any, batch: dict[str, Any]) -> torch.Tensor:
    """``[B, L, H, S, N]`` (see the module docstring)."""
    return _maps_and_joint(module, batch)[0]


def rollout(weights: torch.Tensor) -> torch.Tensor:
    """``[B, S, N]``: the mean over layers and heads of ``[B, L, H, S, N]``."""
    return weights.mean(dim=(1, 2))


def joint_rollout(weights: torch.Tensor) -> torch.Tensor:
    """``[B, T, T]``: ``Â_L ⋯ Â_1`` of self-attention ``[B, L, H, T, T]``, ``Â_l = rownorm(0.5 Ā_l + 0.5 I)``."""
    eye = torch.eye(weights.shape[-1], dtype=weights.dtype, device=weights.device)
    out = eye.expand(weights.shape[0], -1, -1)
    for layer in weights.unbind(1):
        out = _renormalised(0.5 * layer.mean(1) + 0.5 * eye) @ out
    return out


def maps_and_summary(module: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(attention_maps [B, L, H, S, N], summary [B, S, N])`` from one forward pass."""
    maps, rolled = _maps_and_joint(module, batch)
    return maps, rollout(maps) if rolled is None else rolled


def summary(module: Any, batch: dict[str, Any]) -> torch.Tensor:
    """``[B, S, N]``: the map drawn per word (see the module docstring)."""
    return maps_and_summary(module, batch)[1]
