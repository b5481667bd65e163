"""Token-level fusions by cross-attention between token sequences: ``cross_attention`` and ``co_attention``
(ViLBERT) between a pair ``x``, ``y`` (image and text: ``X = (x_1..x_N)``, ``Y = (y_1..y_S)``, with their
masks), and ``mult`` (MulT) over any number of modalities.

Every sequence is first projected to a common width ``d`` (``X' = X W_x``, ``Y' = Y W_y``; ``proj_<modality>``).
Blocks are pre-norm (see ``layers.py``): ``Cross(Q, C)`` lets ``Q`` attend to ``C`` then applies a
feed-forward layer; ``Self(Q)`` is a transformer encoder layer. Padded tokens are never attended to and
never pooled. With ``d = dim``, ``f = ff_mult · d``, ``L = layers``:
``P_cross(d) = 4d² + 4d + 6d + (d+1)f + (f+1)d`` and ``P_self(d) = 4d² + 4d + 4d + (d+1)f + (f+1)d``.
``cross_attention`` and ``co_attention`` are pairwise (``PairFusion``: ``x`` plays the image's role, ``y``
the text's; with more modalities the builder pairs each with ``fusion.context``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import Fusion, PairFusion, linear_params, masked_mean, require_positive
from mmfuse.fusion.layers import (
    CrossBlock,
    SelfBlock,
    check_heads,
    cross_block_params,
    norm_params,
    self_block_params,
    sinusoidal_positions,
    stream_order,
)
from mmfuse.types import EncoderOutput

DIRECTIONS = ("text_to_image", "image_to_text", "both")
READOUTS = ("mean", "bilinear")


def project_tokens(fusion: Fusion, dim: int, heads: int, layers: int, ff_mult: int) -> None:
    """Checks the widths and registers ``proj_<modality> = Linear(D_m, dim)`` for each modality, in order."""
    require_positive(type(fusion).__name__, dim=dim, layers=layers, ff_mult=ff_mult)
    check_heads(dim, heads)
    fusion.dim, fusion.ff = dim, ff_mult * dim
    fusion.per_modality("proj", lambda m, width: nn.Linear(width, dim))


def projection_params(dims: Mapping[str, int], dim: int) -> int:
    """``Σ_m (D_m + 1) d``: the ``proj_<modality>`` layers of ``project_tokens``."""
    return sum(linear_params(d, dim) for d in dims.values())


def stack(block: type[nn.Module], n: int, dim: int, heads: int, ff: int, dropout: float,
          *args: bool) -> nn.ModuleList:
    return nn.ModuleList(block(dim, heads, ff, dropout, *args) for _ in range(n))


class CrossAttentionFusion(PairFusion):
    """Cross-attention: the ``y`` (text) tokens attend to the ``x`` (image) tokens (and / or the reverse),
    then pool. A pair (``PairFusion``).

    ``direction=text_to_image``: ``Y⁰ = Y'``, ``Y^(l) = Cross(Y^(l−1), X')`` for ``l = 1..L`` (the image
    side stays fixed); ``z = mean_{s real} LN(Y^(L))_s ∈ R^d``.
    ``image_to_text`` swaps the roles; ``both`` runs the two stacks and concatenates (``z ∈ R^{2d}``).
    For another pair the names keep their roles: ``text_to_image`` is ``y`` attending to ``x`` (for
    video + text, the words attend to the frames; for video + audio, the audio to the frames).
    ``self_attention=true``: each layer first lets the query tokens attend to each other (ALBEF's fusion
    encoder: self-attention, cross-attention, feed-forward), so that the words can compare what they
    found in the image; adds ``P_sa = 4d² + 4d + 2d`` per layer.
    ``global_token=true``: the pooled ``x`` vector joins the ``x`` tokens, ``X' = [x; X] W_x`` (ViLBERT's
    IMG token), so "is this colour anywhere" is one attention step away.
    ``readout=bilinear``: instead of the mean, each word is compared multiplicatively with what it
    gathered from the image, ``z = mean_s tanh(P Y⁰_s) ⊙ tanh(Q LN(Y^(L))_s)`` (an MLB per token, as in
    bilinear attention networks); adds ``2 (d + 1) d`` per direction.
    Parameters: ``(Dx + 1) d + (Dy + 1) d + n_dir (L (P_cross + [self_attention] P_sa) + 2d
    + [bilinear] 2 (d + 1) d)``.
    """

    stage = "mid"
    needs_tokens = True

    def __init__(self, dims: Mapping[str, int], dim: int = 64, heads: int = 4, layers: int = 2,
                 ff_mult: int = 2, direction: str = "text_to_image", self_attention: bool = True,
                 global_token: bool = False, readout: str = "mean", dropout: float = 0.0) -> None:
        super().__init__(dims)
        project_tokens(self, dim, heads, layers, ff_mult)
        if direction not in DIRECTIONS:
            raise MMFuseError(f"fusion.direction={direction!r} (cross_attention): expected one of {DIRECTIONS}")
        if readout not in READOUTS:
            raise MMFuseError(f"fusion.readout={readout!r} (cross_attention): expected one of {READOUTS}")
        self.readout = readout
        self.direction, self.global_token = direction, bool(global_token)
        self.directions = ("text_to_image", "image_to_text") if direction == "both" else (direction,)
        self.stacks = nn.ModuleDict({
            d: stack(CrossBlock, layers, dim, heads, self.ff, dropout, bool(self_attention)) for d in self.directions
        })
        self.norms = nn.ModuleDict({d: nn.LayerNorm(dim) for d in self.directions})
        if readout == "bilinear":
            self.before = nn.ModuleDict({d: nn.Linear(dim, dim) for d in self.directions})
            self.after = nn.ModuleDict({d: nn.Linear(dim, dim) for d in self.directions})
        self.out_dim = dim * len(self.directions)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, layers: int, ff_mult: int, direction: str,
                      self_attention: bool, readout: str, **_: object) -> int:
        n_dir = 2 if direction == "both" else 1
        block = cross_block_params(dim, ff_mult * dim, bool(self_attention))
        head = 2 * linear_params(dim, dim) if readout == "bilinear" else 0
        return projection_params(dims, dim) + n_dir * (layers * block + norm_params(dim) + head)

    @property
    def token_dim(self) -> int:
        """The width of ``fused_tokens``: ``d`` (with ``direction=both`` each direction's sequence is ``d``
        wide; they are joined along ``T``, so ``token_dim = d`` while ``out_dim = 2d``)."""
        return self.dim

    def sequences(self, inputs: Mapping[str, EncoderOutput]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(Q_dir [B, T_dir, d], mask_dir [B, T_dir])]`` per direction (``self.directions`` order): the
        queries' sequence ``LN(Y^(L))`` (or, ``readout=bilinear``, ``tanh(P Y⁰) ⊙ tanh(Q LN(Y^(L)))``) with
        the queries' mask; ``T = S`` (text) for ``text_to_image``, ``N`` (+1 with ``global_token``) for
        ``image_to_text``."""
        first, second = inputs[self.x], inputs[self.y]
        tokens, mask = first.tokens, first.mask
        if self.global_token:
            tokens = torch.cat([first.pooled.unsqueeze(1).to(tokens.dtype), tokens], dim=1)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        x, y = self.part("proj", self.x)(tokens), self.part("proj", self.y)(second.tokens)
        streams = {"text_to_image": (y, second.mask, x, mask), "image_to_text": (x, mask, y, second.mask)}
        out = []
        for name in self.directions:
            q0, q_mask, c, c_mask = streams[name]
            q = q0
            for block in self.stacks[name]:
                q = block(q, c, c_mask, q_mask)
            q = self.norms[name](q)
            if self.readout == "bilinear":
                q = torch.tanh(self.before[name](q0)) * torch.tanh(self.after[name](q))
            out.append((q, q_mask))
        return out

    def fused_tokens(self, inputs: Mapping[str, EncoderOutput]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, T, d], mask [B, T])``: the direction sequences of ``sequences`` joined along ``T``
        (``both``: ``[text_to_image; image_to_text]``, ``T = S + N``), their masks likewise.
        ``forward`` is ``[masked_mean(Q_dir, mask_dir)]_dir`` over the same sequences (concatenated
        along the features)."""
        seqs = self.sequences(inputs)
        return torch.cat([q for q, _ in seqs], dim=1), torch.cat([m for _, m in seqs], dim=1)

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        return torch.cat([masked_mean(q, m) for q, m in self.sequences(inputs)], dim=-1)


class CoAttentionFusion(PairFusion):
    """Two-stream co-attention (ViLBERT, Lu et al. 2019) between ``x`` (the image) and ``y`` (the text).

    Layer ``l``: ``X̂ = Cross_x(X, Y)``, ``Ŷ = Cross_y(Y, X)`` (both from the previous layer's streams),
    then ``X = Self_x(X̂)``, ``Y = Self_y(Ŷ)``. Output (ViLBERT's alignment head input):
    ``z = mean_n LN(X)_n ⊙ mean_s LN(Y)_s ∈ R^d``. A pair (``PairFusion``); the stacks are
    ``cross_<x>``, ``cross_<y>``, ``self_<x>``, ``self_<y>``, ``norm_<x>``, ``norm_<y>``.
    Parameters: ``(Dx + 1) d + (Dy + 1) d + 2 L (P_cross + P_self) + 4d``.
    """

    stage = "mid"
    needs_tokens = True

    def __init__(self, dims: Mapping[str, int], dim: int = 64, heads: int = 4, layers: int = 2,
                 ff_mult: int = 2, dropout: float = 0.0) -> None:
        super().__init__(dims)
        project_tokens(self, dim, heads, layers, ff_mult)
        self.out_dim = dim
        for part, block in (("cross", CrossBlock), ("self", SelfBlock)):
            for m in (self.x, self.y):
                self.add_module(f"{part}_{m}", stack(block, layers, dim, heads, self.ff, dropout))
        for m in (self.x, self.y):
            self.add_module(f"norm_{m}", nn.LayerNorm(dim))

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, layers: int, ff_mult: int, **_: object) -> int:
        f = ff_mult * dim
        return (projection_params(dims, dim)
                + 2 * layers * (cross_block_params(dim, f) + self_block_params(dim, f)) + 2 * norm_params(dim))

    @property
    def token_dim(self) -> int:
        """The width of ``fused_tokens``: ``d``."""
        return self.dim

    def streams(self, inputs: Mapping[str, EncoderOutput]) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """``((LN(X) [B, N, d], mask_x), (LN(Y) [B, S, d], mask_y))``: both streams after the last layer, normed."""
        first, second = inputs[self.x], inputs[self.y]
        x, y = self.part("proj", self.x)(first.tokens), self.part("proj", self.y)(second.tokens)
        mx, my = first.mask, second.mask
        layers = zip(self.part("cross", self.x), self.part("cross", self.y),
                     self.part("self", self.x), self.part("self", self.y))
        for cx, cy, sx, sy in layers:
            x, y = cx(x, y, my), cy(y, x, mx)
            x, y = sx(x, mx), sy(y, my)
        return (self.part("norm", self.x)(x), mx), (self.part("norm", self.y)(y), my)

    def fused_tokens(self, inputs: Mapping[str, EncoderOutput]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, N + S, d], mask [B, N + S])``: ``[LN(X); LN(Y)]`` along ``T`` (``x`` stream first),
        masks likewise. ``forward`` is ``masked_mean(LN X) ⊙ masked_mean(LN Y)`` of the same streams."""
        (x, mx), (y, my) = self.streams(inputs)
        return torch.cat([x, y], dim=1), torch.cat([mx, my], dim=1)

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        (x, mx), (y, my) = self.streams(inputs)
        return masked_mean(x, mx) * masked_mean(y, my)


class MulTFusion(Fusion):
    """Multimodal transformer (MulT, Tsai et al. 2019) over N modalities: one crossmodal transformer per
    ordered pair (target ``t`` ← source ``s``), ``N (N − 1)`` of them (6 for text, audio and video, as
    in the paper; 2 for image + text).

    ``X_m⁰ = X_m W_m + PE`` (sinusoidal positions) for each modality. Crossmodal transformer ``s → t``:
    ``Z_{s→t}^(l) = Cross(Z_{s→t}^(l−1), X_s⁰)`` with ``Z_{s→t}⁰ = X_t⁰`` (keys / values always from
    the source's low-level ``X_s⁰``), ``l = 1..L``. Each target concatenates its crossmodal outputs
    along the features, ``Z_t = [Z_{s_1→t}; …; Z_{s_{N−1}→t}] ∈ R^{T_t × (N−1)d}`` (sources in
    ``MODALITIES`` order), then ``self_layers`` self-attention layers of width ``(N − 1) d`` (feed-forward
    ``ff_mult (N − 1) d``, as the paper's ``2d`` for three modalities); ``z = [mean LN(Z_t)]_t ∈
    R^{N (N−1) d}``, targets text first then ``MODALITIES`` order (``layers.stream_order``). For image +
    text: ``Y^(l) = Cross(Y^(l−1), X⁰)``, ``X^(l) = Cross(X^(l−1), Y⁰)``, ``z = [mean LN(Y); mean LN(X)]
    ∈ R^{2d}``, the two-modality MulT.
    Modules: ``to_<t>`` (the crossmodal stack when ``t`` has one source, N = 2) or ``to_<t>_from_<s>``
    (N > 2), ``self_<t>``, ``norm_<t>``.
    Parameters, ``d' = (N − 1) d``: ``Σ_m (D_m + 1) d + N (N − 1) L P_cross(d) + N (S P_self(d') + 2d')``
    (``P_self(d')`` with ``f = ff_mult d'``); for two: ``(Dx + 1) d + (Dy + 1) d + 2 (L P_cross + S P_self + 2d)``.
    """

    stage = "mid"
    needs_tokens = True

    def __init__(self, dims: Mapping[str, int], dim: int = 64, heads: int = 4, layers: int = 2,
                 self_layers: int = 1, ff_mult: int = 2, dropout: float = 0.0) -> None:
        super().__init__(dims)
        project_tokens(self, dim, heads, layers, ff_mult)
        if self_layers < 0:
            raise MMFuseError(f"fusion.self_layers={self_layers} (mult): must be >= 0, e.g. fusion.self_layers=1")
        self.targets = stream_order(self.modalities)
        self.sources = {t: tuple(s for s in self.modalities if s != t) for t in self.targets}
        width = (len(self.modalities) - 1) * dim
        self.out_dim = len(self.targets) * width
        for t in self.targets:
            for s in self.sources[t]:
                self.add_module(self.crossmodal_name(t, s), stack(CrossBlock, layers, dim, heads, self.ff, dropout))
        for t in self.targets:
            self.add_module(f"self_{t}", stack(SelfBlock, self_layers, width, heads, ff_mult * width, dropout))
        for t in self.targets:
            self.add_module(f"norm_{t}", nn.LayerNorm(width))

    def crossmodal_name(self, target: str, source: str) -> str:
        """``to_<target>`` when the target has one source (N = 2: the two-input keys), else ``to_<target>_from_<source>``."""
        return f"to_{target}" if len(self.sources[target]) == 1 else f"to_{target}_from_{source}"

    def crossmodal(self, target: str, source: str) -> nn.ModuleList:
        """The ``L`` blocks of the crossmodal transformer ``source → target``."""
        return getattr(self, self.crossmodal_name(target, source))

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, layers: int, self_layers: int, ff_mult: int,
                      **_: object) -> int:
        n = len(dims)
        width = (n - 1) * dim
        per_target = self_layers * self_block_params(width, ff_mult * width) + norm_params(width)
        return (projection_params(dims, dim) + n * (n - 1) * layers * cross_block_params(dim, ff_mult * dim)
                + n * per_target)

    @property
    def token_dim(self) -> int:
        """The width of ``fused_tokens``: ``d' = (N − 1) d`` (every target's ``Z_t`` has it)."""
        return (len(self.modalities) - 1) * self.dim

    def fused_tokens(self, inputs: Mapping[str, EncoderOutput]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, Σ_t T_t, d'], mask)``: ``[LN(Z_{t_1}); …; LN(Z_{t_N})]`` along ``T``, targets in
        ``self.targets`` order (text first), each target's mask. ``forward`` is ``[masked_mean(LN Z_t)]_t``
        of the same sequences, concatenated along the features (``out_dim = N d'``)."""
        seqs = self.sequences(inputs)
        return torch.cat([z for z, _ in seqs], dim=1), torch.cat([m for _, m in seqs], dim=1)

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        return torch.cat([masked_mean(z, m) for z, m in self.sequences(inputs)], dim=-1)

    def sequences(self, inputs: Mapping[str, EncoderOutput]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(LN(Z_t) [B, T_t, d'], mask_t)]`` for each target ``t`` in ``self.targets`` order."""
        low = {m: self.part("proj", m)(inputs[m].tokens) for m in self.modalities}
        low = {m: x + sinusoidal_positions(x.shape[1], self.dim, x.device, x.dtype) for m, x in low.items()}
        masks = {m: inputs[m].mask for m in self.modalities}
        fused = {}
        for t in self.targets:  # every crossmodal stack before any self-attention, as the two-input code
            outs = []
            for s in self.sources[t]:
                z = low[t]
                for block in self.crossmodal(t, s):
                    z = block(z, low[s], masks[s])
                outs.append(z)
            fused[t] = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        for t in self.targets:
            for block in self.part("self", t):
                fused[t] = block(fused[t], masks[t])
        return [(self.part("norm", t)(fused[t]), masks[t]) for t in self.targets]
