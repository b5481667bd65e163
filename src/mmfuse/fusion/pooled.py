"""Fusions of the two pooled vectors ``x`` (image, ``[B, Dx]``) and ``y`` (text, ``[B, Dy]``).

These are the seed article's operators plus the gated and FiLM units. With the ``linear`` ITM head on
top (``logit = w.z + b``), ``add`` gives ``w.σ(Ax) + w.σ(By) + b``: an image-only score plus a
text-only score, which cannot tell a matching caption from a mismatched one. ``mul`` / ``concat`` + an
MLP head / ``attention`` + an MLP head can. The ``W`` of the issue's ``z = W(...)`` is the task head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import Fusion, linear_params, make_activation, require_positive
from mmfuse.types import EncoderOutput


class _ProjectedPair(Fusion):
    """Shared by ``add`` and ``mul``: ``a = σ(A x)``, ``b = σ(B y)`` in ``R^dim``, combined by ``combine``."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, activation: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim)
        require_positive(type(self).__name__, dim=dim)
        self.out_dim = dim
        self.proj_image = nn.Linear(image_dim, dim)
        self.proj_text = nn.Linear(text_dim, dim)
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, **_: object) -> int:
        return linear_params(image_dim, dim) + linear_params(text_dim, dim)

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        a = self.act(self.proj_image(image.pooled))
        b = self.act(self.proj_text(text.pooled))
        return self.dropout(self.combine(a, b))


class AddFusion(_ProjectedPair):
    """Additive (MMF ``linear_sum``): ``z = σ(A x) + σ(B y)``, ``z ∈ R^dim``.

    Parameters: ``(Dx + 1) dim + (Dy + 1) dim``.
    """

    stage = "mid"

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class MulFusion(_ProjectedPair):
    """Multiplicative (MLB, Kim et al. 2017): ``z = σ(A x) ⊙ σ(B y)``, ``z ∈ R^dim``.

    ``σ = activation``: ``tanh`` by default, as in the MLB paper; MMF's and block.bootstrap's ``mlb``
    default to ``relu`` (``activ_input="relu"``), which ``activation=relu`` gives. Their output layer
    ``relu(W_o z)`` is not part of this fusion: in mmfuse it is the task head, whose ``mlp`` kind
    (the default) starts with ``ReLU(Linear(z))``.
    Parameters: ``(Dx + 1) dim + (Dy + 1) dim``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, activation: str = "tanh",
                 dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim, dim, activation, dropout)

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class ConcatFusion(Fusion):
    """Concatenation + MLP (MMF ``concat_mlp``).

    ``h_0 = [x; y]``, ``h_i = drop(σ(W_i h_{i−1} + b_i))`` for the widths ``hidden = (h_1..h_n)``, then
    ``z = drop(σ(W h_n + b))`` (``output_activation=true``) or ``z = W h_n + b`` (``false``: neither
    ``σ`` nor dropout after the last layer, as MMF's MLP), ``z ∈ R^dim``. The default ``hidden=[]`` is
    one layer, ``z = drop(σ(W [x; y] + b))``; MMF's ``concat_mlp`` is ``hidden=[500, 500],
    output_activation=false`` (ReLU and dropout between its layers, nothing after the last).
    Parameters: ``Σ_i (h_{i−1} + 1) h_i + (h_n + 1) dim`` with ``h_0 = Dx + Dy``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, activation: str = "relu",
                 dropout: float = 0.0, hidden: Sequence[int] = (), output_activation: bool = True) -> None:
        super().__init__(image_dim, text_dim)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise MMFuseError(f"fusion.hidden={hidden!r} for concat: must be a list of widths (positive integers), "
                              "e.g. 'fusion.hidden=[500,500]' (or [] for none)")
        widths = list(hidden)
        require_positive("concat", dim=dim, **{f"hidden[{i}]": h for i, h in enumerate(widths)})
        self.out_dim = dim
        ins = [image_dim + text_dim, *widths]
        self.hidden = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(ins, widths))
        self.proj = nn.Linear(ins[-1], dim)
        self.act = make_activation(activation)
        self.output_activation = bool(output_activation)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, hidden: Sequence[int], **_: object) -> int:
        ins = [image_dim + text_dim, *map(int, hidden)]
        return sum(linear_params(d_in, d_out) for d_in, d_out in zip(ins, ins[1:])) + linear_params(ins[-1], dim)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        h = torch.cat([image.pooled, text.pooled], dim=-1)
        for layer in self.hidden:
            h = self.dropout(self.act(layer(h)))
        z = self.proj(h)
        return self.dropout(self.act(z)) if self.output_activation else z


class AttentionFusion(Fusion):
    """Attention over modalities (the seed's attention fusion; TorchMultimodal ``AttentionFusion``).

    ``α = softmax(W_a [x; y] + b_a) ∈ R^2``, ``z = α_1 (A x) + α_2 (B y)``, ``z ∈ R^dim``.
    Parameters: ``(Dx + Dy + 1) 2 + (Dx + 1) dim + (Dy + 1) dim``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim)
        require_positive(type(self).__name__, dim=dim)
        self.out_dim = dim
        self.score = nn.Linear(image_dim + text_dim, 2)
        self.proj_image = nn.Linear(image_dim, dim)
        self.proj_text = nn.Linear(text_dim, dim)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, **_: object) -> int:
        return linear_params(image_dim + text_dim, 2) + linear_params(image_dim, dim) + linear_params(text_dim, dim)

    def attention_weights(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        return torch.softmax(self.score(torch.cat([image.pooled, text.pooled], dim=-1)), dim=-1)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        alpha = self.attention_weights(image, text)
        z = alpha[:, :1] * self.proj_image(image.pooled) + alpha[:, 1:] * self.proj_text(text.pooled)
        return self.dropout(z)


class GatedFusion(Fusion):
    """Gated multimodal unit (Arevalo et al. 2017).

    ``h = g ⊙ tanh(A x) + (1 − g) ⊙ tanh(B y)``, ``g = sigmoid(C [x; y])``, ``h ∈ R^dim``.
    Parameters: ``(Dx + 1) dim + (Dy + 1) dim + (Dx + Dy + 1) dim``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim)
        require_positive(type(self).__name__, dim=dim)
        self.out_dim = dim
        self.proj_image = nn.Linear(image_dim, dim)
        self.proj_text = nn.Linear(text_dim, dim)
        self.gate = nn.Linear(image_dim + text_dim, dim)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, **_: object) -> int:
        return linear_params(image_dim, dim) + linear_params(text_dim, dim) + linear_params(image_dim + text_dim, dim)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        x, y = image.pooled, text.pooled
        g = torch.sigmoid(self.gate(torch.cat([x, y], dim=-1)))
        return self.dropout(g * torch.tanh(self.proj_image(x)) + (1 - g) * torch.tanh(self.proj_text(y)))


class FiLMFusion(Fusion):
    """Feature-wise linear modulation of the image by the text (Perez et al. 2018).

    ``z = σ((1 + Δγ(y)) ⊙ (A x) + β(y))`` with ``Δγ(y) = G y``, ``β(y) = H y`` (affine; the scale is
    predicted around 1, as in the paper), ``z ∈ R^dim``.
    Parameters: ``(Dx + 1) dim + 2 (Dy + 1) dim``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, activation: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim)
        require_positive(type(self).__name__, dim=dim)
        self.out_dim = dim
        self.proj_image = nn.Linear(image_dim, dim)
        self.gamma = nn.Linear(text_dim, dim)
        self.beta = nn.Linear(text_dim, dim)
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, **_: object) -> int:
        return linear_params(image_dim, dim) + 2 * linear_params(text_dim, dim)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        y = text.pooled
        return self.dropout(self.act((1 + self.gamma(y)) * self.proj_image(image.pooled) + self.beta(y)))
