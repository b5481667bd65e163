"""Text-to-image attention maps of token-level fusions (``cross_attention`` with ``direction`` text_to_image
or both; other fusions have no text-to-image attention to read and are skipped).

``maps(module, batch) -> [B, L, H, S, N]``: layer ``l``'s cross-attention of each text token ``s`` over
the image tokens ``n``, per head (each row sums to one over the real image tokens). The summary map
(``rollout``) is ``R = (1/L) Σ_l (1/H) Σ_h A_{l,h}``: in a text-to-image stack the image tokens are never
updated, so the chain of attention that rollout (Abnar & Zuidema 2020) multiplies through the layers lives
on the text side only; averaging the layers' maps keeps every layer's view of the image without it.
``global_token=true`` prepends the pooled image vector: its column is dropped and the rows renormalised.
"""

from __future__ import annotations

from typing import Any

import torch

from mmfuse.fusion.layers import recording_attention


def supports(fusion: Any) -> str | None:
    """None when ``fusion`` has text-to-image attention maps, else why not."""
    if type(fusion).__name__ != "CrossAttentionFusion":
        return f"{type(fusion).__name__} has no text-to-image attention (only cross_attention is read)"
    if "text_to_image" not in fusion.directions or (fusion.x, fusion.y) != ("image", "text"):
        return "cross_attention without a text_to_image stack between image and text"
    return None


def attention_maps(module: Any, batch: dict[str, Any]) -> torch.Tensor:
    """``[B, L, H, S, N]`` (see the module docstring)."""
    fusion = module.model.fusion
    stack = list(fusion.stacks["text_to_image"])
    with recording_attention() as recorded, torch.no_grad():
        module.model(batch)
    weights = torch.stack([w for block, w in recorded if any(block is b for b in stack)], dim=1)
    if fusion.global_token:
        weights = weights[..., 1:]
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    return weights


def rollout(weights: torch.Tensor) -> torch.Tensor:
    """``[B, S, N]``: the mean over layers and heads."""
    return weights.mean(dim=(1, 2))
