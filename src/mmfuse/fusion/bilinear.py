"""Bilinear pooling of two pooled vectors ``x`` (``[B, Dx]``) and ``y`` (``[B, Dy]``).

A full bilinear map ``z_k = xᵀ W_k y`` has ``Dx · Dy · dim`` parameters; each operator here is a
factorisation of ``W`` (MMF / block.bootstrap names): ``mfb``, ``mfh``, ``mutan``, ``tucker``,
``block``, and ``mcb``, which approximates the outer product ``x ⊗ y`` with count sketches.

All are pairwise (``PairFusion``), as their papers define them: ``x`` is the pair's first modality in
``MODALITIES`` order and ``y`` the second (for image + text, ``x`` the image and ``y`` the text, the
papers' visual and question features); with more than two modalities the builder fuses each one with
``fusion.context`` (``mmfuse.fusion.pairs``). A product over more than two inputs is the tensor
fusion's (``mmfuse.fusion.tensor``).

``signed_sqrt_l2`` (``z ← sign(z) √|z|``, then ``z ← z / ‖z‖₂``) is the normalisation the MFB / MFH /
MCB papers apply after pooling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import PairFusion, linear_params, make_activation, pair_dims, require_positive
from mmfuse.types import EncoderOutput


def signed_sqrt_l2(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    z = z.sign() * (z.abs() + eps).sqrt()
    return F.normalize(z, dim=-1)


class MFBFusion(PairFusion):
    """Multimodal factorised bilinear pooling (Yu et al. 2017).

    ``e = (A x) ⊙ (B y) ∈ R^{k·dim}``, ``z_j = Σ_{i<k} e_{j k + i}`` (sum pooling over windows of ``k``),
    ``z ← signed_sqrt_l2(z)``, ``z ∈ R^dim``.  Parameters: ``(Dx + 1) k dim + (Dy + 1) k dim``.
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 256, factor: int = 5, dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive("mfb", dim=dim, factor=factor)
        self.out_dim, self.factor = dim, factor
        self.per_modality("proj", lambda m, width: nn.Linear(width, factor * dim))
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, factor: int, **_: object) -> int:
        dx, dy = pair_dims(dims)
        return linear_params(dx, factor * dim) + linear_params(dy, factor * dim)

    def expand(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        a = self.part("proj", self.x)(inputs[self.x].pooled)
        return self.dropout(a * self.part("proj", self.y)(inputs[self.y].pooled))

    def pool(self, e: torch.Tensor) -> torch.Tensor:
        return signed_sqrt_l2(e.view(e.shape[0], self.out_dim, self.factor).sum(-1))

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        return self.pool(self.expand(inputs))


class MFHFusion(PairFusion):
    """Multimodal factorised high-order pooling (Yu et al. 2018): ``order`` cascaded MFB blocks.

    ``e_0 = 1``, ``e_i = (A_i x) ⊙ (B_i y) ⊙ e_{i−1} ∈ R^{k·dim}``, ``z_i = signed_sqrt_l2(SumPool_k(e_i))``,
    ``z = [z_1; …; z_order] ∈ R^{order·dim}``. "High order" is the cascade's order in ``x`` and ``y``;
    it stays a pair. Parameters: ``order · ((Dx + 1) k dim + (Dy + 1) k dim)``.
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 128, factor: int = 5, order: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive("mfh", dim=dim, factor=factor, order=order)
        self.dim, self.factor = dim, factor
        self.out_dim = order * dim
        self.per_modality("proj", lambda m, width: nn.ModuleList(nn.Linear(width, factor * dim) for _ in range(order)))
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, factor: int, order: int, **_: object) -> int:
        dx, dy = pair_dims(dims)
        return order * (linear_params(dx, factor * dim) + linear_params(dy, factor * dim))

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        x, y = inputs[self.x].pooled, inputs[self.y].pooled
        e: torch.Tensor | float = 1.0
        outs = []
        for a, b in zip(self.part("proj", self.x), self.part("proj", self.y)):
            e = self.dropout(a(x) * b(y)) * e
            outs.append(signed_sqrt_l2(e.view(e.shape[0], self.dim, self.factor).sum(-1)))
        return torch.cat(outs, dim=-1)


class MutanFusion(PairFusion):
    """MUTAN (Ben-younes et al. 2017): Tucker fusion whose core is constrained to rank ``R``.

    ``x̃ = σ(W_x x)``, ``ỹ = σ(W_y y) ∈ R^m``; ``z = W_o Σ_{r<R} (M_r x̃) ⊙ (N_r ỹ)``, ``z ∈ R^dim``
    (``m = mm_dim``, ``σ = input_activation``). The default ``tanh`` is the authors' first code
    (Cadene/vqa.pytorch, ``activation_v: tanh``, ``activation_q: tanh``); block.bootstrap's and MMF's
    ``Mutan`` have no activation there, which ``input_activation=identity`` gives.
    Parameters: ``(Dx + 1) m + (Dy + 1) m + 2 (m + 1) m R + (m + 1) dim``.
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 256, mm_dim: int = 128, rank: int = 5,
                 dropout: float = 0.0, input_activation: str = "tanh") -> None:
        super().__init__(dims)
        require_positive("mutan", dim=dim, mm_dim=mm_dim, rank=rank)
        self.out_dim, self.mm_dim, self.rank = dim, mm_dim, rank
        self.per_modality("proj", lambda m, width: nn.Linear(width, mm_dim))
        self.input_act = make_activation(input_activation, "input_activation")
        self.per_modality("merge", lambda m, width: nn.Linear(mm_dim, mm_dim * rank))
        self.out = nn.Linear(mm_dim, dim)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, mm_dim: int, rank: int, **_: object) -> int:
        dx, dy = pair_dims(dims)
        return (linear_params(dx, mm_dim) + linear_params(dy, mm_dim)
                + 2 * linear_params(mm_dim, mm_dim * rank) + linear_params(mm_dim, dim))

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        x, y = (self.dropout(self.input_act(self.part("proj", m)(inputs[m].pooled))) for m in (self.x, self.y))
        z = (self.part("merge", self.x)(x) * self.part("merge", self.y)(y)).view(-1, self.rank, self.mm_dim).sum(1)
        return self.out(self.dropout(z))


class TuckerFusion(PairFusion):
    """Tucker decomposition of the bilinear map (Ben-younes et al. 2017 / block.bootstrap ``Tucker``).

    ``x̃ = W_x x``, ``ỹ = W_y y ∈ R^m``; ``c_k = x̃ᵀ T_k ỹ + t_k`` (full core ``T ∈ R^{m×m×m}``);
    ``z = W_o c ∈ R^dim``. Parameters: ``(Dx + 1) m + (Dy + 1) m + m³ + m + (m + 1) dim``.
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 256, mm_dim: int = 48, dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive("tucker", dim=dim, mm_dim=mm_dim)
        self.out_dim = dim
        self.per_modality("proj", lambda m, width: nn.Linear(width, mm_dim))
        # the core T[i, j, k] stored as [m, m·m]; nn.Bilinear would do, but it has no autocast support
        bound = 1 / math.sqrt(mm_dim)
        self.core = nn.Parameter(torch.empty(mm_dim, mm_dim * mm_dim).uniform_(-bound, bound))
        self.core_bias = nn.Parameter(torch.empty(mm_dim).uniform_(-bound, bound))
        self.mm_dim = mm_dim
        self.out = nn.Linear(mm_dim, dim)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, mm_dim: int, **_: object) -> int:
        dx, dy = pair_dims(dims)
        return linear_params(dx, mm_dim) + linear_params(dy, mm_dim) + mm_dim**3 + mm_dim + linear_params(mm_dim, dim)

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        x, y = (self.dropout(self.part("proj", m)(inputs[m].pooled)) for m in (self.x, self.y))
        u = (x @ self.core).view(-1, self.mm_dim, self.mm_dim)  # u[b, j, k] = Σ_i x_i T[i, j, k]
        c = (y.unsqueeze(1) @ u).squeeze(1) + self.core_bias    # c[b, k] = Σ_j y_j u[b, j, k] + t_k
        return self.out(self.dropout(c))


class BlockFusion(PairFusion):
    """BLOCK (Ben-younes et al. 2019): block-superdiagonal tensor decomposition.

    ``x̃ = W_x x``, ``ỹ = W_y y ∈ R^m`` split into ``C`` chunks of size ``s = m / C``; per chunk
    ``z_c = signed_sqrt_l2(Σ_{r<R} (M^c_r x̃_c) ⊙ (N^c_r ỹ_c)) ∈ R^s``; ``z = W_o [z_1; …; z_C] ∈ R^dim``.
    Parameters: ``(Dx + 1) m + (Dy + 1) m + 2 C (s + 1) s R + (m + 1) dim``.
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 256, mm_dim: int = 128, chunks: int = 8,
                 rank: int = 4, dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive("block", dim=dim, mm_dim=mm_dim, chunks=chunks, rank=rank)
        if mm_dim % chunks:
            raise MMFuseError(f"fusion.mm_dim={mm_dim} must be divisible by fusion.chunks={chunks} (block)")
        self.out_dim, self.rank, self.size = dim, rank, mm_dim // chunks
        self.per_modality("proj", lambda m, width: nn.Linear(width, mm_dim))
        self.per_modality("merge", lambda m, width: nn.ModuleList(
            nn.Linear(self.size, self.size * rank) for _ in range(chunks)))
        self.out = nn.Linear(mm_dim, dim)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, mm_dim: int, chunks: int, rank: int, **_: object) -> int:
        dx, dy = pair_dims(dims)
        s = mm_dim // chunks
        return (linear_params(dx, mm_dim) + linear_params(dy, mm_dim)
                + 2 * chunks * linear_params(s, s * rank) + linear_params(mm_dim, dim))

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        xs, ys = (self.dropout(self.part("proj", m)(inputs[m].pooled)).split(self.size, dim=-1)
                  for m in (self.x, self.y))
        chunks = []
        for x, y, m, n in zip(xs, ys, self.part("merge", self.x), self.part("merge", self.y)):
            z = (m(x) * n(y)).view(-1, self.rank, self.size).sum(1)
            chunks.append(signed_sqrt_l2(z))
        return self.out(self.dropout(torch.cat(chunks, dim=-1)))


def count_sketch_matrix(d_in: int, d_out: int, generator: torch.Generator) -> torch.Tensor:
    """Dense form of the count sketch ``Ψ``: ``S[i, h(i)] = s(i)``, ``h(i)`` uniform, ``s(i) = ±1``.

    In the default dtype (its entries 0 / ±1 are exact in any dtype; the module's ``.to`` casts it).
    """
    h = torch.randint(d_out, (d_in,), generator=generator)
    s = torch.randint(2, (d_in,), generator=generator) * 2 - 1
    sketch = torch.zeros(d_in, d_out)
    sketch[torch.arange(d_in), h] = s.to(sketch.dtype)
    return sketch


class MCBFusion(PairFusion):
    """Multimodal compact bilinear pooling (Fukui et al. 2016).

    ``Ψ(x ⊗ y) = Ψ_x(x) * Ψ_y(y) = IFFT(FFT(Ψ_x x) ⊙ FFT(Ψ_y y)) ∈ R^d`` (count sketches ``Ψ`` with fixed
    random hashes and signs, ``d = sketch_dim``), ``c = signed_sqrt_l2(Ψ(x ⊗ y))``, ``z = W_o c ∈ R^dim``.
    The sketches are buffers ``sketch_<x>``, ``sketch_<y>`` (saved with the model, never trained), drawn
    from ``sketch_seed`` in that order. Parameters: ``(d + 1) dim``.
    The sketch and FFT run in the inputs' dtype promoted to at least float32: float32 under a half
    autocast dtype, float64 for float64 inputs (``.double()`` or a float64 default dtype).
    """

    stage = "mid"

    def __init__(self, dims: Mapping[str, int], dim: int = 256, sketch_dim: int = 1024, sketch_seed: int = 0,
                 dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive("mcb", dim=dim, sketch_dim=sketch_dim)
        self.out_dim, self.sketch_dim = dim, sketch_dim
        g = torch.Generator().manual_seed(int(sketch_seed))
        for m, width in self.dims.items():
            self.register_buffer(f"sketch_{m}", count_sketch_matrix(width, sketch_dim, g))
        self.out = nn.Linear(sketch_dim, dim)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dim: int, sketch_dim: int, **_: object) -> int:
        return linear_params(sketch_dim, dim)

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        x, y = inputs[self.x].pooled, inputs[self.y].pooled
        dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(dtype) @ getattr(self, f"sketch_{self.x}").to(dtype)
            y = y.to(dtype) @ getattr(self, f"sketch_{self.y}").to(dtype)
            conv = torch.fft.irfft(torch.fft.rfft(x, dim=-1) * torch.fft.rfft(y, dim=-1), n=self.sketch_dim, dim=-1)
            c = signed_sqrt_l2(conv)
        return self.out(self.dropout(c.to(self.out.weight.dtype)))
