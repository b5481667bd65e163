"""Fusions of the two pooled vectors ``x`` (image, ``[B, Dx]``) and ``y`` (text, ``[B, Dy]``).

These are the seed article's operators. With the ``linear`` ITM head on top (``logit = w.z + b``),
``add`` gives ``w.σ(Ax) + w.σ(By) + b``: an image-only score plus a text-only score, which cannot
tell a matching caption from a mismatched one. ``mul`` / ``concat`` + an MLP head / ``attention`` +
an MLP head can.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.fusion.base import Fusion, make_activation
from mmfuse.types import EncoderOutput


class _ProjectedPair(Fusion):
    """Shared by ``add`` and ``mul``: ``a = σ(A x)``, ``b = σ(B y)`` in ``R^dim``, combined by ``combine``."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, activation: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim)
        self.out_dim = dim
        self.proj_image = nn.Linear(image_dim, dim)
        self.proj_text = nn.Linear(text_dim, dim)
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout)

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        a = self.act(self.proj_image(image.pooled))
        b = self.act(self.proj_text(text.pooled))
        return self.dropout(self.combine(a, b))


class AddFusion(_ProjectedPair):
    """Additive (MMF ``linear_sum``): ``z = σ(A x) + σ(B y)``, ``z ∈ R^dim``.

    Parameters: ``(Dx + 1) dim + (Dy + 1) dim``. The ``W`` of ``W(σ(Ax) + σ(By))`` is the task head.
    """

    stage = "mid"

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class MulFusion(_ProjectedPair):
    """Multiplicative (MLB, Kim et al. 2017): ``z = σ(A x) ⊙ σ(B y)``, ``z ∈ R^dim``.

    Parameters: ``(Dx + 1) dim + (Dy + 1) dim``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, activation: str = "tanh",
                 dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim, dim, activation, dropout)

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class ConcatFusion(Fusion):
    """Concatenation + MLP (MMF ``concat_mlp``): ``z = σ(W [x; y] + b)``, ``z ∈ R^dim``.

    Parameters: ``(Dx + Dy + 1) dim``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, activation: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim)
        self.out_dim = dim
        self.proj = nn.Linear(image_dim + text_dim, dim)
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        return self.dropout(self.act(self.proj(torch.cat([image.pooled, text.pooled], dim=-1))))


class AttentionFusion(Fusion):
    """Attention over modalities (the seed's attention fusion; TorchMultimodal ``AttentionFusion``).

    ``α = softmax(W_a [x; y] + b_a) ∈ R^2``, ``z = α_1 (A x) + α_2 (B y)``, ``z ∈ R^dim``.
    Parameters: ``(Dx + Dy + 1) 2 + (Dx + 1) dim + (Dy + 1) dim``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim)
        self.out_dim = dim
        self.score = nn.Linear(image_dim + text_dim, 2)
        self.proj_image = nn.Linear(image_dim, dim)
        self.proj_text = nn.Linear(text_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def attention_weights(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        return torch.softmax(self.score(torch.cat([image.pooled, text.pooled], dim=-1)), dim=-1)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        alpha = self.attention_weights(image, text)
        z = alpha[:, :1] * self.proj_image(image.pooled) + alpha[:, 1:] * self.proj_text(text.pooled)
        return self.dropout(z)

