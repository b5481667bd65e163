"""Token-level fusions by cross-attention between the image tokens ``X = (x_1..x_N)`` and the text tokens
``Y = (y_1..y_S)`` (with their masks): ``cross_attention``, ``co_attention`` (ViLBERT), ``mult`` (MulT).

Both sequences are first projected to a common width ``d`` (``X' = X W_x``, ``Y' = Y W_y``). Blocks are
pre-norm (see ``layers.py``): ``Cross(Q, C)`` lets ``Q`` attend to ``C`` then applies a feed-forward
layer; ``Self(Q)`` is a transformer encoder layer. Padded tokens are never attended to and never pooled.
With ``d = dim``, ``f = ff_mult · d``, ``L = layers``: ``P_cross = 4d² + 4d + 6d + (d+1)f + (f+1)d`` and
``P_self = 4d² + 4d + 4d + (d+1)f + (f+1)d``.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import Fusion, linear_params, masked_mean, require_positive
from mmfuse.fusion.layers import (
    CrossBlock,
    SelfBlock,
    check_heads,
    cross_block_params,
    norm_params,
    self_block_params,
    sinusoidal_positions,
)
from mmfuse.types import EncoderOutput

DIRECTIONS = ("text_to_image", "image_to_text", "both")
READOUTS = ("mean", "bilinear")


class _TokenFusion(Fusion):
    """Projects both token sequences to ``dim``; subclasses add the layers."""

    needs_tokens = True

    def __init__(self, image_dim: int, text_dim: int, dim: int, heads: int, layers: int, ff_mult: int) -> None:
        super().__init__(image_dim, text_dim)
        require_positive(type(self).__name__, dim=dim, layers=layers, ff_mult=ff_mult)
        check_heads(dim, heads)
        self.dim, self.ff = dim, ff_mult * dim
        self.proj_image = nn.Linear(image_dim, dim)
        self.proj_text = nn.Linear(text_dim, dim)

    @staticmethod
    def projection_params(image_dim: int, text_dim: int, dim: int) -> int:
        return linear_params(image_dim, dim) + linear_params(text_dim, dim)


class CrossAttentionFusion(_TokenFusion):
    """Cross-attention: text tokens attend to image tokens (and / or the reverse), then pool.

    ``direction=text_to_image``: ``Y⁰ = Y'``, ``Y^(l) = Cross(Y^(l−1), X')`` for ``l = 1..L`` (the image
    side stays fixed); ``z = mean_{s real} LN(Y^(L))_s ∈ R^d``.
    ``image_to_text`` swaps the roles; ``both`` runs the two stacks and concatenates (``z ∈ R^{2d}``).
    ``self_attention=true``: each layer first lets the query tokens attend to each other (ALBEF's fusion
    encoder: self-attention, cross-attention, feed-forward), so that the words can compare what they
    found in the image; adds ``P_sa = 4d² + 4d + 2d`` per layer.
    ``global_token=true``: the pooled image vector joins the image tokens, ``X' = [x; X] W_x`` (ViLBERT's
    IMG token), so "is this colour anywhere" is one attention step away.
    ``readout=bilinear``: instead of the mean, each word is compared multiplicatively with what it
    gathered from the image, ``z = mean_s tanh(P Y⁰_s) ⊙ tanh(Q LN(Y^(L))_s)`` (an MLB per token, as in
    bilinear attention networks); adds ``2 (d + 1) d`` per direction.
    Parameters: ``(Dx + 1) d + (Dy + 1) d + n_dir (L (P_cross + [self_attention] P_sa) + 2d
    + [bilinear] 2 (d + 1) d)``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 64, heads: int = 4, layers: int = 2,
                 ff_mult: int = 2, direction: str = "text_to_image", self_attention: bool = True,
                 global_token: bool = False, readout: str = "mean", dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim, dim, heads, layers, ff_mult)
        if direction not in DIRECTIONS:
            raise MMFuseError(f"fusion.direction={direction!r} (cross_attention): expected one of {DIRECTIONS}")
        if readout not in READOUTS:
            raise MMFuseError(f"fusion.readout={readout!r} (cross_attention): expected one of {READOUTS}")
        self.readout = readout
        self.direction, self.global_token = direction, bool(global_token)
        self.directions = ("text_to_image", "image_to_text") if direction == "both" else (direction,)
        self.stacks = nn.ModuleDict({
            d: nn.ModuleList(CrossBlock(dim, heads, self.ff, dropout, bool(self_attention)) for _ in range(layers))
            for d in self.directions
        })
        self.norms = nn.ModuleDict({d: nn.LayerNorm(dim) for d in self.directions})
        if readout == "bilinear":
            self.before = nn.ModuleDict({d: nn.Linear(dim, dim) for d in self.directions})
            self.after = nn.ModuleDict({d: nn.Linear(dim, dim) for d in self.directions})
        self.out_dim = dim * len(self.directions)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, layers: int, ff_mult: int, direction: str,
                      self_attention: bool, readout: str, **_: object) -> int:
        n_dir = 2 if direction == "both" else 1
        block = cross_block_params(dim, ff_mult * dim, bool(self_attention))
        head = 2 * linear_params(dim, dim) if readout == "bilinear" else 0
        return (_TokenFusion.projection_params(image_dim, text_dim, dim)
                + n_dir * (layers * block + norm_params(dim) + head))

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        tokens, mask = image.tokens, image.mask
        if self.global_token:
            tokens = torch.cat([image.pooled.unsqueeze(1).to(tokens.dtype), tokens], dim=1)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        x, y = self.proj_image(tokens), self.proj_text(text.tokens)
        streams = {"text_to_image": (y, text.mask, x, mask), "image_to_text": (x, mask, y, text.mask)}
        pooled = []
        for name in self.directions:
            q0, q_mask, c, c_mask = streams[name]
            q = q0
            for block in self.stacks[name]:
                q = block(q, c, c_mask, q_mask)
            q = self.norms[name](q)
            if self.readout == "bilinear":
                q = torch.tanh(self.before[name](q0)) * torch.tanh(self.after[name](q))
            pooled.append(masked_mean(q, q_mask))
        return torch.cat(pooled, dim=-1)


class CoAttentionFusion(_TokenFusion):
    """Two-stream co-attention (ViLBERT, Lu et al. 2019).

    Layer ``l``: ``X̂ = Cross_x(X, Y)``, ``Ŷ = Cross_y(Y, X)`` (both from the previous layer's streams),
    then ``X = Self_x(X̂)``, ``Y = Self_y(Ŷ)``. Output (ViLBERT's alignment head input):
    ``z = mean_n LN(X)_n ⊙ mean_s LN(Y)_s ∈ R^d``.
    Parameters: ``(Dx + 1) d + (Dy + 1) d + 2 L (P_cross + P_self) + 4d``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 64, heads: int = 4, layers: int = 2,
                 ff_mult: int = 2, dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim, dim, heads, layers, ff_mult)
        self.out_dim = dim

        def stack(block: type[nn.Module]) -> nn.ModuleList:
            return nn.ModuleList(block(dim, heads, self.ff, dropout) for _ in range(layers))

        self.cross_image, self.cross_text = stack(CrossBlock), stack(CrossBlock)
        self.self_image, self.self_text = stack(SelfBlock), stack(SelfBlock)
        self.norm_image, self.norm_text = nn.LayerNorm(dim), nn.LayerNorm(dim)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, layers: int, ff_mult: int, **_: object) -> int:
        f = ff_mult * dim
        return (_TokenFusion.projection_params(image_dim, text_dim, dim)
                + 2 * layers * (cross_block_params(dim, f) + self_block_params(dim, f)) + 2 * norm_params(dim))

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        x, y = self.proj_image(image.tokens), self.proj_text(text.tokens)
        mx, my = image.mask, text.mask
        for cx, cy, sx, sy in zip(self.cross_image, self.cross_text, self.self_image, self.self_text):
            x, y = cx(x, y, my), cy(y, x, mx)
            x, y = sx(x, mx), sy(y, my)
        return masked_mean(self.norm_image(x), mx) * masked_mean(self.norm_text(y), my)


class MulTFusion(_TokenFusion):
    """Multimodal transformer (MulT, Tsai et al. 2019), two modalities.

    ``X⁰ = X' + PE``, ``Y⁰ = Y' + PE`` (sinusoidal positions). Crossmodal transformer ``image → text``:
    ``Y^(l) = Cross(Y^(l−1), X⁰)`` (keys / values always from the source's low-level ``X⁰``), ``l = 1..L``;
    likewise ``X^(l) = Cross(X^(l−1), Y⁰)``. Then ``self_layers`` self-attention layers on each target
    stream; ``z = [mean LN(Y); mean LN(X)] ∈ R^{2d}``.
    Parameters: ``(Dx + 1) d + (Dy + 1) d + 2 (L P_cross + S P_self + 2d)``.
    """

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 64, heads: int = 4, layers: int = 2,
                 self_layers: int = 1, ff_mult: int = 2, dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim, dim, heads, layers, ff_mult)
        if self_layers < 0:
            raise MMFuseError(f"fusion.self_layers={self_layers} (mult): must be >= 0")
        self.out_dim = 2 * dim

        def stack(block: type[nn.Module], n: int) -> nn.ModuleList:
            return nn.ModuleList(block(dim, heads, self.ff, dropout) for _ in range(n))

        self.to_text, self.to_image = stack(CrossBlock, layers), stack(CrossBlock, layers)
        self.self_text, self.self_image = stack(SelfBlock, self_layers), stack(SelfBlock, self_layers)
        self.norm_text, self.norm_image = nn.LayerNorm(dim), nn.LayerNorm(dim)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, layers: int, self_layers: int, ff_mult: int,
                      **_: object) -> int:
        f = ff_mult * dim
        per_direction = layers * cross_block_params(dim, f) + self_layers * self_block_params(dim, f) + norm_params(dim)
        return _TokenFusion.projection_params(image_dim, text_dim, dim) + 2 * per_direction

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        x, y = self.proj_image(image.tokens), self.proj_text(text.tokens)
        x = x + sinusoidal_positions(x.shape[1], self.dim, x.device, x.dtype)
        y = y + sinusoidal_positions(y.shape[1], self.dim, y.device, y.dtype)
        mx, my = image.mask, text.mask
        ty, tx = y, x
        for block in self.to_text:
            ty = block(ty, x, mx)
        for block in self.to_image:
            tx = block(tx, y, my)
        for block in self.self_text:
            ty = block(ty, my)
        for block in self.self_image:
            tx = block(tx, mx)
        return torch.cat([masked_mean(self.norm_text(ty), my), masked_mean(self.norm_image(tx), mx)], dim=-1)
