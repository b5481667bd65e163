"""Tensor fusions of the pooled vectors ``x_m`` (``[B, D_m]``, one per modality ``m = 1..N``): the
full outer product over all inputs (TFN) and its low-rank factorisation (LMF), both written for N
modalities as their papers write them, and multiplicative interactions (MI), a pair.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import Fusion, PairFusion, linear_params, make_activation, pair_dims, require_positive
from mmfuse.types import EncoderOutput


def with_one(v: torch.Tensor) -> torch.Tensor:
    """``[v; 1]``: the appended constant keeps the lower-order terms in the product."""
    return torch.cat([v, v.new_ones(v.shape[0], 1)], dim=-1)


def outer_flat(parts: list[torch.Tensor]) -> torch.Tensor:
    """``vec(p_1 ⊗ … ⊗ p_N)`` per row, row-major: ``t[((i_1 n_2 + i_2) n_3 + i_3) …] = Π_m p_m[i_m]``."""
    t = parts[0]
    for p in parts[1:]:
        t = torch.einsum("bi,bj->bij", t, p).flatten(1)
    return t


class TensorFusion(Fusion):
    """Tensor fusion network (Zadeh et al. 2017), N modalities.

    ``a_m = σ(A_m x_m) ∈ R^h``; ``t = vec(⊗_m [a_m; 1]) ∈ R^{(h+1)^N}`` (row-major, the first modality's
    index slowest) holds the unimodal terms, every pairwise product and every product of three, …, up to
    the N-way products; ``z = σ(W t + b) ∈ R^dim``. The paper's form is three modalities (language,
    visual, acoustic: ``(h+1)³`` entries); for two it is ``vec([a; 1] ⊗ [b; 1]) ∈ R^{(h+1)²}``.
    Parameters: ``Σ_m (D_m + 1) h + ((h + 1)^N + 1) dim``.

    The size grows as ``(h + 1)^N``: with the defaults ``h = 32``, ``dim = 256`` the output layer ``W``
    has 279,040 parameters for N = 2, 9,200,128 for N = 3 and 303,596,032 for N = 4 (1.2 GB in float32):
    lower ``fusion.hidden`` (h = 8: 186,880 for N = 3) or use ``lmf``, its low-rank form.
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 256, hidden: int = 32, activation: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive("tfn", dim=dim, hidden=hidden)
        self.out_dim = dim
        self.per_modality("proj", lambda m, width: nn.Linear(width, hidden))
        self.out = nn.Linear((hidden + 1) ** len(self.dims), dim)
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, hidden: int, **_: object) -> int:
        return sum(linear_params(d, hidden) for d in dims.values()) + linear_params((hidden + 1) ** len(dims), dim)

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        t = outer_flat([with_one(self.act(self.part("proj", m)(inputs[m].pooled))) for m in self.modalities])
        return self.act(self.out(self.dropout(t)))


class LowRankFusion(Fusion):
    """Low-rank multimodal fusion (Liu et al. 2018): TFN's weight tensor in rank-``R`` factors, N modalities.

    ``z = Σ_{r<R} λ_r Π_m (W_m^(r) [x_m; 1]) + c`` (``Π_m`` elementwise over the modalities),
    ``z ∈ R^dim``: the rank-``R`` form of ``W vec(⊗_m [x_m; 1])``, as the paper writes it for M
    modalities; for two, ``Σ_r λ_r (W_x^(r) [x; 1]) ⊙ (W_y^(r) [y; 1]) + c``. The factors
    ``factor_<m> = W_m ∈ R^{R×(D_m+1)×dim}`` are registered parameters (MultiBench kept them in a Python
    list, so they were never trained), each drawn from ``N(0, 1 / (D_m + 1))`` so that every factor's
    output, and so their product, starts with unit-order variance.
    Parameters: ``R Σ_m (D_m + 1) dim + R + dim``.
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 256, rank: int = 4, dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive("lmf", dim=dim, rank=rank)
        self.out_dim = dim
        for m, width in self.dims.items():
            self.register_parameter(f"factor_{m}", nn.Parameter(torch.empty(rank, width + 1, dim)))
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        for m, width in self.dims.items():
            nn.init.normal_(self.factor(m), std=1 / math.sqrt(width + 1))
        self.dropout = nn.Dropout(dropout)

    def factor(self, modality: str) -> nn.Parameter:
        """``W_m`` of ``modality``: ``[R, D_m + 1, dim]``."""
        return getattr(self, f"factor_{modality}")

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, rank: int, **_: object) -> int:
        return sum(rank * (d + 1) * dim for d in dims.values()) + rank + dim

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        prod = None
        for m in self.modalities:
            f = torch.einsum("bi,rid->brd", with_one(inputs[m].pooled), self.factor(m))
            prod = f if prod is None else prod * f
        z = torch.einsum("r,brd->bd", self.rank_weights, prod) + self.bias
        return self.dropout(z)


class MultiplicativeInteraction(PairFusion):
    """Multiplicative interactions (Jayakumar et al. 2020): ``y`` generates the weights of a layer on ``x``
    (for image + text: the text generates the image layer's weights). A pair (see ``PairFusion``).

    ``form=matrix`` (the general MI layer): ``z = W(y) x + b(y)`` with ``W(y) = reshape(U y + u) ∈
    R^{dim×Dx}`` and ``b(y) = V y + v``. Parameters: ``(Dy + 1) dim Dx + (Dy + 1) dim``.

    ``form=vector`` (diagonal ``W``; FiLM is this form): ``z = (U y + u) ⊙ (A x + a) + (V y + v)``.
    Parameters: ``(Dx + 1) dim + 2 (Dy + 1) dim``.
    """

    stage = "mid"
    FORMS = ("matrix", "vector")

    def __init__(self, dims: Mapping[str, int], dim: int = 128, form: str = "matrix", dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive("mi", dim=dim)
        if form not in self.FORMS:
            raise MMFuseError(f"fusion.form={form!r} (mi): expected one of {self.FORMS}")
        self.out_dim, self.form = dim, form
        if form == "matrix":
            self.weight_gen = nn.Linear(self.dim_y, dim * self.dim_x)
            # W(y) x sums Dx terms: scale the generator so z starts with unit-order variance
            nn.init.normal_(self.weight_gen.weight, std=1 / math.sqrt(self.dim_x * self.dim_y))
        else:
            self.add_module(f"proj_{self.x}", nn.Linear(self.dim_x, dim))
            self.weight_gen = nn.Linear(self.dim_y, dim)
        self.bias_gen = nn.Linear(self.dim_y, dim)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, form: str, **_: object) -> int:
        dx, dy = pair_dims(dims)
        if form == "matrix":
            return linear_params(dy, dim * dx) + linear_params(dy, dim)
        return linear_params(dx, dim) + 2 * linear_params(dy, dim)

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        x, y = inputs[self.x].pooled, inputs[self.y].pooled
        if self.form == "matrix":
            w = self.weight_gen(y).view(-1, self.out_dim, self.dim_x)
            z = torch.einsum("bdi,bi->bd", w, x) + self.bias_gen(y)
        else:
            z = self.weight_gen(y) * self.part("proj", self.x)(x) + self.bias_gen(y)
        return self.dropout(z)
