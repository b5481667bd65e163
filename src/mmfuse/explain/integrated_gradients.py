"""Integrated gradients (Sundararajan et al. 2017) over the text tokens' input embeddings.

With ``x`` the word embeddings of a text (the output of the text encoder's embedding layer: tiny_text's
``embed``, a Hugging Face model's ``get_input_embeddings()``), the baseline ``x₀ = 0`` (position embeddings,
added after that layer, are kept) and ``F`` the explained scalar, the attribution of token ``t`` is
``IG_t = Σ_d (x − x₀)_{t,d} · (1/m) Σ_{k=1..m} ∂F/∂x_{t,d}(x₀ + α_k (x − x₀))``, ``α_k = (k − ½)/m`` (the
midpoint rule); completeness: ``Σ_t IG_t → F(x) − F(x₀)`` as ``m`` grows (exactly, for ``F`` linear in ``x``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mmfuse.errors import MMFuseError


def embedding_layer(text_encoder: torch.nn.Module) -> torch.nn.Module:
    for owner in (text_encoder, getattr(text_encoder, "model", None)):
        if owner is None:
            continue
        if hasattr(owner, "get_input_embeddings"):
            return owner.get_input_embeddings()
        if isinstance(getattr(owner, "embed", None), torch.nn.Embedding):
            return owner.embed
    raise MMFuseError(f"integrated gradients: cannot find the embedding layer of {type(text_encoder).__name__} "
                      "(an `embed` nn.Embedding or a Hugging Face model's get_input_embeddings())")


def integrated_gradients(module: Any, batch: dict[str, Any], explained: Callable[[Any, dict[str, Any]], torch.Tensor],
                         steps: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(IG [B, T], F(x) [B], F(x₀) [B])`` for the batch's texts."""
    layer = embedding_layer(module.model.encoders["text"])
    state: dict[str, Any] = {}

    def hook(_m: Any, _i: Any, output: torch.Tensor) -> torch.Tensor:
        state["x"] = output.detach()
        scaled = (state["alpha"] * output.detach()).requires_grad_(True)
        state["scaled"] = scaled
        return scaled

    handle = layer.register_forward_hook(hook)
    total = None
    try:
        with torch.enable_grad():
            for k in range(1, steps + 1):
                state["alpha"] = (k - 0.5) / steps
                y = explained(module, batch)
                (grad,) = torch.autograd.grad(y.sum(), state["scaled"], allow_unused=True)
                grad = torch.zeros_like(state["scaled"]) if grad is None else grad
                total = grad if total is None else total + grad
            with torch.no_grad():
                state["alpha"] = 1.0
                full = explained(module, batch)
                state["alpha"] = 0.0
                empty = explained(module, batch)
    finally:
        handle.remove()
    ig = (state["x"] * total / steps).sum(-1)
    return ig.detach(), full.detach(), empty.detach()
