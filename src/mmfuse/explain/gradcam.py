"""Grad-CAM (Selvaraju et al. 2017) on the image encoder's last feature grid.

With ``A ∈ R^{C × h × w}`` the last 4-D activation the image encoder computes (a CNN's last stage, the
tensor both its pooled vector and its grid tokens come from, so pooled fusions are explained too) and
``y`` the explained scalar (``mmfuse.explain.targets``): ``α_c = (1/hw) Σ_{ij} ∂y/∂A_{c,ij}``,
``map = ReLU(Σ_c α_c A_c) ∈ R^{h × w}``. Encoders without a 4-D activation (ViT, video, audio) fall back to
the gradient at their ``tokens [N, D]`` (``α_d = mean_n ∂y/∂T_{n,d}``, ``map_n = ReLU(Σ_d α_d T_{n,d})``),
which a pooled fusion reaches only if the encoder pools its tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch


@contextlib.contextmanager
def last_grid(encoder: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collects every 4-D tensor output of ``encoder``'s submodules in execution order."""
    seen: list[torch.Tensor] = []

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.requires_grad:
            seen.append(output)

    handles = [m.register_forward_hook(hook) for m in encoder.modules() if m is not encoder]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def gradcam(module: Any, batch: dict[str, Any], explained: Callable[[Any, dict[str, Any]], torch.Tensor],
            modality: str = "image") -> torch.Tensor:
    """``[B, h, w]`` Grad-CAM maps (``[B, 1, N]`` for the token fallback) of ``explained(module, batch)``."""
    encoder = module.model.encoders[modality]
    tokens: list[torch.Tensor] = []
    original = module.model.encode

    def encode(m: str, b: dict[str, Any]) -> Any:
        out = original(m, b)
        if m == modality:
            tokens.append(out.tokens)
        return out

    module.model.encode = encode
    try:
        with last_grid(encoder) as grids, torch.enable_grad():
            y = explained(module, batch)
            if grids:
                act = grids[-1]
                (grad,) = torch.autograd.grad(y.sum(), act, allow_unused=True)
                grad = torch.zeros_like(act) if grad is None else grad
                weights = grad.mean(dim=(2, 3), keepdim=True)
                return torch.relu((weights * act).sum(1)).detach()
            act = tokens[-1]
            (grad,) = torch.autograd.grad(y.sum(), act, allow_unused=True)
            grad = torch.zeros_like(act) if grad is None else grad
            cam = torch.relu((grad.mean(1, keepdim=True) * act).sum(-1)).detach()
            side = math.isqrt(cam.shape[1])
            return cam.reshape(-1, side, side) if side * side == cam.shape[1] else cam.unsqueeze(1)
    finally:
        del module.model.encode
