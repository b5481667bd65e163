"""Tensor fusions of the pooled vectors ``x`` (image, ``[B, Dx]``) and ``y`` (text, ``[B, Dy]``):
the full outer product (TFN), its low-rank factorisation (LMF) and multiplicative interactions (MI).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import Fusion, linear_params, make_activation, require_positive
from mmfuse.types import EncoderOutput


def with_one(v: torch.Tensor) -> torch.Tensor:
    """``[v; 1]``: the appended constant keeps the unimodal terms in the product."""
    return torch.cat([v, v.new_ones(v.shape[0], 1)], dim=-1)


class TensorFusion(Fusion):
    """Tensor fusion network (Zadeh et al. 2017), two modalities.

    ``a = σ(A x)``, ``b = σ(B y) ∈ R^h``; ``t = vec([a; 1] ⊗ [b; 1]) ∈ R^{(h+1)²}`` holds the unimodal
    terms and every pairwise product; ``z = σ(W t) ∈ R^dim``.
    Parameters: ``(Dx + 1) h + (Dy + 1) h + ((h + 1)² + 1) dim``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, hidden: int = 32, activation: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim)
        require_positive("tfn", dim=dim, hidden=hidden)
        self.out_dim = dim
        self.proj_image = nn.Linear(image_dim, hidden)
        self.proj_text = nn.Linear(text_dim, hidden)
        self.out = nn.Linear((hidden + 1) ** 2, dim)
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, hidden: int, **_: object) -> int:
        return linear_params(image_dim, hidden) + linear_params(text_dim, hidden) + linear_params((hidden + 1) ** 2, dim)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        a = with_one(self.act(self.proj_image(image.pooled)))
        b = with_one(self.act(self.proj_text(text.pooled)))
        t = torch.einsum("bi,bj->bij", a, b).flatten(1)
        return self.act(self.out(self.dropout(t)))


class LowRankFusion(Fusion):
    """Low-rank multimodal fusion (Liu et al. 2018): TFN's weight tensor in rank-``R`` factors.

    ``z = Σ_{r<R} λ_r (W_x^(r) [x; 1]) ⊙ (W_y^(r) [y; 1]) + c``, ``z ∈ R^dim``; the factors
    ``W_x ∈ R^{R×(Dx+1)×dim}``, ``W_y ∈ R^{R×(Dy+1)×dim}`` are registered parameters (MultiBench kept
    them in a Python list, so they were never trained).
    Parameters: ``R (Dx + 1) dim + R (Dy + 1) dim + R + dim``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, rank: int = 4, dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim)
        require_positive("lmf", dim=dim, rank=rank)
        self.out_dim = dim
        self.factor_image = nn.Parameter(torch.empty(rank, image_dim + 1, dim))
        self.factor_text = nn.Parameter(torch.empty(rank, text_dim + 1, dim))
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        # the product of two factors has variance ~ (std_x std_y)² (D+1): each std ~ (D+1)^-1/2
        nn.init.normal_(self.factor_image, std=1 / math.sqrt(image_dim + 1))
        nn.init.normal_(self.factor_text, std=1 / math.sqrt(text_dim + 1))
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, rank: int, **_: object) -> int:
        return rank * (image_dim + 1) * dim + rank * (text_dim + 1) * dim + rank + dim

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        fx = torch.einsum("bi,rid->brd", with_one(image.pooled), self.factor_image)
        fy = torch.einsum("bi,rid->brd", with_one(text.pooled), self.factor_text)
        z = torch.einsum("r,brd->bd", self.rank_weights, fx * fy) + self.bias
        return self.dropout(z)


class MultiplicativeInteraction(Fusion):
    """Multiplicative interactions (Jayakumar et al. 2020): the text generates the image layer's weights.

    ``form=matrix`` (the general MI layer): ``z = W(y) x + b(y)`` with ``W(y) = reshape(U y + u) ∈
    R^{dim×Dx}`` and ``b(y) = V y + v``. Parameters: ``(Dy + 1) dim Dx + (Dy + 1) dim``.

    ``form=vector`` (diagonal ``W``; FiLM is this form): ``z = (U y + u) ⊙ (A x + a) + (V y + v)``.
    Parameters: ``(Dx + 1) dim + 2 (Dy + 1) dim``.
    """

    stage = "mid"
    FORMS = ("matrix", "vector")

    def __init__(self, image_dim: int, text_dim: int, dim: int = 128, form: str = "matrix",
                 dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim)
        require_positive("mi", dim=dim)
        if form not in self.FORMS:
            raise MMFuseError(f"fusion.form={form!r} (mi): expected one of {self.FORMS}")
        self.out_dim, self.form = dim, form
        if form == "matrix":
            self.weight_gen = nn.Linear(text_dim, dim * image_dim)
            # W(y) x sums Dx terms: scale the generator so z starts with unit-order variance
            nn.init.normal_(self.weight_gen.weight, std=1 / math.sqrt(image_dim * text_dim))
        else:
            self.proj_image = nn.Linear(image_dim, dim)
            self.weight_gen = nn.Linear(text_dim, dim)
        self.bias_gen = nn.Linear(text_dim, dim)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, form: str, **_: object) -> int:
        if form == "matrix":
            return linear_params(text_dim, dim * image_dim) + linear_params(text_dim, dim)
        return linear_params(image_dim, dim) + 2 * linear_params(text_dim, dim)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        x, y = image.pooled, text.pooled
        if self.form == "matrix":
            w = self.weight_gen(y).view(-1, self.out_dim, self.image_dim)
            z = torch.einsum("bdi,bi->bd", w, x) + self.bias_gen(y)
        else:
            z = self.weight_gen(y) * self.proj_image(x) + self.bias_gen(y)
        return self.dropout(z)
