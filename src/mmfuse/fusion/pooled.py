"""Fusions of the pooled vectors ``x_m`` (``[B, D_m]``, one per modality ``m = 1..N``).

These are the seed article's operators plus the gated and FiLM units. ``add``, ``mul``, ``concat``,
``attention`` and ``gated`` are written for N modalities; FiLM modulates one input by another (a
pair). With the ``linear`` ITM head on top (``logit = w.z + b``), ``add`` gives
``w.σ(A_1 x_1) + w.σ(A_2 x_2) + b``: an image-only score plus a text-only score, which cannot tell a
matching caption from a mismatched one. ``mul`` / ``concat`` + an MLP head / ``attention`` + an MLP
head can. The ``W`` of the issue's ``z = W(...)`` is the task head. For image + text, ``x_1 = x``
(image) and ``x_2 = y`` (text) as in the formulas of the papers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import Fusion, PairFusion, linear_params, make_activation, pair_dims, require_positive
from mmfuse.types import EncoderOutput


class _Projected(Fusion):
    """Shared by ``add`` and ``mul``: ``a_m = σ(A_m x_m)`` in ``R^dim``, combined by ``combine``."""

    def __init__(self, dims: Mapping[str, int], dim: int = 256, activation: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive(type(self).__name__, dim=dim)
        self.out_dim = dim
        self.per_modality("proj", lambda m, width: nn.Linear(width, dim))
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, **_: object) -> int:
        return sum(linear_params(d, dim) for d in dims.values())

    def combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        parts = [self.act(self.part("proj", m)(inputs[m].pooled)) for m in self.modalities]
        return self.dropout(self.combine(parts))


class AddFusion(_Projected):
    """Additive (MMF ``linear_sum``): ``z = Σ_m σ(A_m x_m)`` (``σ(A x) + σ(B y)`` for two), ``z ∈ R^dim``.

    Parameters: ``Σ_m (D_m + 1) dim``.
    """

    stage = "mid"

    def combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        z = parts[0]
        for a in parts[1:]:
            z = z + a
        return z


class MulFusion(_Projected):
    """Multiplicative (MLB, Kim et al. 2017): ``z = ⊙_m σ(A_m x_m)`` (``σ(A x) ⊙ σ(B y)`` for two),
    ``z ∈ R^dim``.

    ``σ = activation``: ``tanh`` by default, as in the MLB paper; MMF's and block.bootstrap's ``mlb``
    default to ``relu`` (``activ_input="relu"``), which ``activation=relu`` gives. Their output layer
    ``relu(W_o z)`` is not part of this fusion: in mmfuse it is the task head, whose ``mlp`` kind
    (the default) starts with ``ReLU(Linear(z))``.
    Parameters: ``Σ_m (D_m + 1) dim``.
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 256, activation: str = "tanh",
                 dropout: float = 0.0) -> None:
        super().__init__(dims, dim, activation, dropout)

    def combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        z = parts[0]
        for a in parts[1:]:
            z = z * a
        return z


class ConcatFusion(Fusion):
    """Concatenation + MLP (MMF ``concat_mlp``).

    ``h_0 = [x_1; …; x_N]``, ``h_i = drop(σ(W_i h_{i−1} + b_i))`` for the widths ``hidden = (h_1..h_n)``, then
    ``z = drop(σ(W h_n + b))`` (``output_activation=true``) or ``z = W h_n + b`` (``false``: neither
    ``σ`` nor dropout after the last layer, as MMF's MLP), ``z ∈ R^dim``. The default ``hidden=[]`` is
    one layer, ``z = drop(σ(W h_0 + b))``; MMF's ``concat_mlp`` is ``hidden=[500, 500],
    output_activation=false`` (ReLU and dropout between its layers, nothing after the last).
    Parameters: ``Σ_i (h_{i−1} + 1) h_i + (h_n + 1) dim`` with ``h_0 = Σ_m D_m``.
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 256, activation: str = "relu",
                 dropout: float = 0.0, hidden: Sequence[int] = (), output_activation: bool = True) -> None:
        super().__init__(dims)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise MMFuseError(f"fusion.hidden={hidden!r} for concat: must be a list of widths (positive integers), "
                              "e.g. 'fusion.hidden=[500,500]' (or [] for none)")
        widths = list(hidden)
        require_positive("concat", dim=dim, **{f"hidden[{i}]": h for i, h in enumerate(widths)})
        self.out_dim = dim
        ins = [sum(self.dims.values()), *widths]
        self.hidden = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(ins, widths))
        self.proj = nn.Linear(ins[-1], dim)
        self.act = make_activation(activation)
        self.output_activation = bool(output_activation)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, hidden: Sequence[int], **_: object) -> int:
        ins = [sum(dims.values()), *map(int, hidden)]
        return sum(linear_params(d_in, d_out) for d_in, d_out in zip(ins, ins[1:])) + linear_params(ins[-1], dim)

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        h = torch.cat([inputs[m].pooled for m in self.modalities], dim=-1)
        for layer in self.hidden:
            h = self.dropout(self.act(layer(h)))
        z = self.proj(h)
        return self.dropout(self.act(z)) if self.output_activation else z


class AttentionFusion(Fusion):
    """Attention over modalities (the seed's attention fusion; TorchMultimodal ``AttentionFusion``).

    ``α = softmax(W_a [x_1; …; x_N] + b_a) ∈ R^N``, ``z = Σ_m α_m (A_m x_m)``, ``z ∈ R^dim``.
    Parameters: ``(Σ_m D_m + 1) N + Σ_m (D_m + 1) dim``.
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive(type(self).__name__, dim=dim)
        self.out_dim = dim
        self.score = nn.Linear(sum(self.dims.values()), len(self.dims))
        self.per_modality("proj", lambda m, width: nn.Linear(width, dim))
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, **_: object) -> int:
        total = sum(dims.values())
        return linear_params(total, len(dims)) + sum(linear_params(d, dim) for d in dims.values())

    def attention_weights(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        """``α [B, N]``, one weight per modality in ``self.modalities`` order."""
        return torch.softmax(self.score(torch.cat([inputs[m].pooled for m in self.modalities], dim=-1)), dim=-1)

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        alpha = self.attention_weights(inputs)
        z = 0
        for i, m in enumerate(self.modalities):
            z = z + alpha[:, i : i + 1] * self.part("proj", m)(inputs[m].pooled)
        return self.dropout(z)


class GatedFusion(Fusion):
    """Gated multimodal unit (Arevalo et al. 2017).

    ``h = Σ_m g_m ⊙ tanh(A_m x_m)`` with gates ``g = softmax_m(c_1, …, c_{N−1}, 0)`` per feature,
    ``(c_1; …; c_{N−1}) = C [x_1; …; x_N] ∈ R^{(N−1) dim}`` (the last modality's logit fixed at 0).
    For two inputs this is the paper's unit, ``g = sigmoid(C [x; y])``,
    ``h = g ⊙ tanh(A x) + (1 − g) ⊙ tanh(B y)``; for more, its softmax generalisation. ``h ∈ R^dim``.
    Parameters: ``Σ_m (D_m + 1) dim + (Σ_m D_m + 1)(N − 1) dim``.
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive(type(self).__name__, dim=dim)
        self.out_dim = dim
        self.per_modality("proj", lambda m, width: nn.Linear(width, dim))
        self.gate = nn.Linear(sum(self.dims.values()), (len(self.dims) - 1) * dim)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, **_: object) -> int:
        n, total = len(dims), sum(dims.values())
        return sum(linear_params(d, dim) for d in dims.values()) + linear_params(total, (n - 1) * dim)

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        xs = [inputs[m].pooled for m in self.modalities]
        hs = [torch.tanh(self.part("proj", m)(x)) for m, x in zip(self.modalities, xs)]
        logits = self.gate(torch.cat(xs, dim=-1))
        if len(hs) == 2:  # sigmoid(c) and 1 - sigmoid(c): the paper's unit, bit for bit
            g = torch.sigmoid(logits)
            return self.dropout(g * hs[0] + (1 - g) * hs[1])
        logits = logits.view(logits.shape[0], len(hs) - 1, self.out_dim)
        g = torch.softmax(torch.cat([logits, torch.zeros_like(logits[:, :1])], dim=1), dim=1)
        return self.dropout(sum(g[:, i] * h for i, h in enumerate(hs)))


class FiLMFusion(PairFusion):
    """Feature-wise linear modulation of ``x`` (the image) by ``y`` (the text) (Perez et al. 2018).

    ``z = σ((1 + Δγ(y)) ⊙ (A x) + β(y))`` with ``Δγ(y) = G y``, ``β(y) = H y`` (affine; the scale is
    predicted around 1, as in the paper), ``z ∈ R^dim``. A pair (see ``PairFusion``).
    Parameters: ``(Dx + 1) dim + 2 (Dy + 1) dim``.
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 256, activation: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive(type(self).__name__, dim=dim)
        self.out_dim = dim
        self.add_module(f"proj_{self.x}", nn.Linear(self.dim_x, dim))
        self.gamma = nn.Linear(self.dim_y, dim)
        self.beta = nn.Linear(self.dim_y, dim)
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, **_: object) -> int:
        dx, dy = pair_dims(dims)
        return linear_params(dx, dim) + 2 * linear_params(dy, dim)

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        y = inputs[self.y].pooled
        x = self.part("proj", self.x)(inputs[self.x].pooled)
        return self.dropout(self.act((1 + self.gamma(y)) * x + self.beta(y)))
