"""Mappers of ``decoder=prefix_lm``: memory ``[B, M, D]`` (+ ``memory_mask [B, M]``) -> the LM's input prefix
``[B, P, H]`` (+ ``prefix_mask [B, P]``, True = a real position).

- ``mlp`` (ClipCap, Mokady et al. 2021, MLP mapper): the masked mean ``m = sum_j mask_j x_j / sum_j mask_j``,
  then ``Linear(D, P H / 2) -> tanh -> Linear(P H / 2, P H)`` reshaped to ``P = prefix_length`` vectors;
- ``transformer`` (ClipCap's transformer mapper): each memory token projected to ``H`` (Linear), followed by
  ``prefix_length`` learned constants, a ``mapper_layers``-layer transformer encoder (``mapper_heads`` heads,
  memory padding masked as keys); the prefix is the output at the constants' positions;
- ``projector`` (LLaVA-1.5): ``Linear(D, H) -> GELU -> Linear(H, H)`` on every memory token; the prefix is
  all ``M`` tokens and ``prefix_mask = memory_mask``.

A masked memory position never changes the prefix's real positions.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.errors import MMFuseError

MAPPERS = ("mlp", "transformer", "projector")


class MLPMapper(nn.Module):
    def __init__(self, memory_dim: int, hidden: int, prefix_length: int) -> None:
        super().__init__()
        self.hidden, self.prefix_length = hidden, prefix_length
        mid = hidden * prefix_length // 2
        self.net = nn.Sequential(nn.Linear(memory_dim, mid), nn.Tanh(), nn.Linear(mid, hidden * prefix_length))

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = memory_mask.unsqueeze(-1).to(memory.dtype)
        pooled = (memory * w).sum(1) / w.sum(1).clamp_min(1.0)
        prefix = self.net(pooled).view(memory.shape[0], self.prefix_length, self.hidden)
        return prefix, torch.ones(prefix.shape[:2], dtype=torch.bool, device=memory.device)


class TransformerMapper(nn.Module):
    def __init__(self, memory_dim: int, hidden: int, prefix_length: int, layers: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise MMFuseError(f"decoder.mapper_heads={heads} does not divide the LM width {hidden}: "
                              "choose a divisor, e.g. decoder.mapper_heads=8")
        self.proj = nn.Linear(memory_dim, hidden)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, hidden))
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=2 * hidden, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, m = memory.shape[:2]
        p = self.prefix_const.shape[0]
        x = torch.cat([self.proj(memory), self.prefix_const.expand(b, -1, -1)], dim=1)
        keep = torch.cat([memory_mask.bool(), memory_mask.new_ones(b, p, dtype=torch.bool)], dim=1)
        prefix = self.encoder(x, src_key_padding_mask=~keep)[:, m:]
        return prefix, torch.ones((b, p), dtype=torch.bool, device=memory.device)


class Projector(nn.Module):
    def __init__(self, memory_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(memory_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(memory), memory_mask.bool()


def build_mapper(name: str, memory_dim: int, hidden: int, prefix_length: int, layers: int, heads: int) -> nn.Module:
    if name not in MAPPERS:
        raise MMFuseError(f"decoder.mapper={name!r}: expected one of {', '.join(MAPPERS)}")
    if name != "projector" and (not isinstance(prefix_length, int) or prefix_length < 1):
        raise MMFuseError(f"decoder.prefix_length={prefix_length!r}: expected a positive integer, e.g. 10")
    if name == "mlp":
        return MLPMapper(memory_dim, hidden, prefix_length)
    if name == "transformer":
        if layers < 1:
            raise MMFuseError(f"decoder.mapper_layers={layers}: expected >= 1, e.g. decoder.mapper_layers=8")
        return TransformerMapper(memory_dim, hidden, prefix_length, layers, heads)
    return Projector(memory_dim, hidden)
