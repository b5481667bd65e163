"""Transformer blocks shared by the token-level fusions, with their closed-form parameter counts.

All blocks are pre-norm (``x + f(LN(x))``) and take boolean masks with True = real token; padded keys
get no attention weight, so padding never changes the real positions' outputs.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from mmfuse.errors import MMFuseError


def attention_params(d: int) -> int:
    """``nn.MultiheadAttention(d, h)``: in-projection ``3 d² + 3 d``, out-projection ``d² + d``."""
    return 4 * d * d + 4 * d


def ffn_params(d: int, f: int) -> int:
    """``Linear(d, f) . GELU . Linear(f, d)``."""
    return (d + 1) * f + (f + 1) * d


def norm_params(d: int) -> int:
    return 2 * d


def self_block_params(d: int, f: int) -> int:
    return 2 * norm_params(d) + attention_params(d) + ffn_params(d, f)


def cross_block_params(d: int, f: int, self_attention: bool = False) -> int:
    own = norm_params(d) + attention_params(d) if self_attention else 0
    return own + 3 * norm_params(d) + attention_params(d) + ffn_params(d, f)


def stream_order(modalities: Sequence[str]) -> tuple[str, ...]:
    """Text first (when present), then the others in ``modalities``' (``MODALITIES``) order.

    The order of ``single_stream``'s joint sequence and of ``mult``'s readout (MulT's ``[h_L; h_A; h_V]``,
    language first); for image + text it is ``(text, image)``, the order these fusions had with two inputs.
    """
    return tuple(m for m in modalities if m == "text") + tuple(m for m in modalities if m != "text")


def check_heads(dim: int, heads: int) -> None:
    if heads < 1 or dim % heads:
        raise MMFuseError(f"fusion.dim={dim} must be divisible by fusion.heads={heads}")


class FeedForward(nn.Sequential):
    def __init__(self, d: int, f: int, dropout: float) -> None:
        super().__init__(nn.Linear(d, f), nn.GELU(), nn.Dropout(dropout), nn.Linear(f, d), nn.Dropout(dropout))


class SelfBlock(nn.Module):
    """``x ← x + MHA(LN x, LN x, LN x; mask)``, ``x ← x + FFN(LN x)``."""

    def __init__(self, d: int, heads: int, f: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(d, f, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        recorded = _RECORDED.get()
        if recorded is None:
            x = x + self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)[0]
        else:
            out, weights = self.attn(h, h, h, key_padding_mask=~mask, need_weights=True, average_attn_weights=False)
            recorded.append((self, weights.detach()))
            x = x + out
        return x + self.ffn(self.norm2(x))


# set by ``recording_attention``: where the attention blocks append their weights
_RECORDED: contextvars.ContextVar[list | None] = contextvars.ContextVar("_RECORDED", default=None)


@contextlib.contextmanager
def recording_attention() -> Iterator[list[tuple[nn.Module, torch.Tensor]]]:
    """Within the block, every ``CrossBlock`` (its cross-attention) and ``SelfBlock`` appends
    ``(block, weights [B, heads, T_q, T_c])`` (softmax over the context tokens, per head) to the yielded list,
    in execution order. Outside it the blocks run as always
    (``need_weights=False``); inside, ``nn.MultiheadAttention`` takes its weight-returning path, which gives
    the same outputs up to floating-point rounding."""
    recorded: list[tuple[nn.Module, torch.Tensor]] = []
    token = _RECORDED.set(recorded)
    try:
        yield recorded
    finally:
        _RECORDED.reset(token)


class CrossBlock(nn.Module):
    """``q ← q + MHA(LN_q q, LN_kv c, LN_kv c; mask_c)``, ``q ← q + FFN(LN q)``: ``q`` attends to ``c``.

    ``self_attention=True`` (a BERT layer with cross-attention, as in ALBEF's fusion encoder) first
    lets the queries attend to each other: ``q ← q + MHA(LN q, LN q, LN q; mask_q)``.
    """

    def __init__(self, d: int, heads: int, f: int, dropout: float = 0.0, self_attention: bool = False) -> None:
        super().__init__()
        if self_attention:
            self.norm_self = nn.LayerNorm(d)
            self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.self_attention = self_attention
        self.norm_q, self.norm_kv, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(d, f, dropout)

    def forward(self, q: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
                q_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.self_attention:
            if q_mask is None:
                raise ValueError("CrossBlock(self_attention=True) needs the queries' mask")
            h = self.norm_self(q)
            q = q + self.self_attn(h, h, h, key_padding_mask=~q_mask, need_weights=False)[0]
        kv = self.norm_kv(context)
        recorded = _RECORDED.get()
        if recorded is None:
            q = q + self.attn(self.norm_q(q), kv, kv, key_padding_mask=~context_mask, need_weights=False)[0]
        else:
            out, weights = self.attn(self.norm_q(q), kv, kv, key_padding_mask=~context_mask, need_weights=True,
                                     average_attn_weights=False)
            recorded.append((self, weights.detach()))
            q = q + out
        return q + self.ffn(self.norm2(q))


def sinusoidal_positions(n: int, d: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``PE[t, 2i] = sin(t / 10000^(2i/d))``, ``PE[t, 2i+1] = cos(...)`` (Vaswani et al.), ``[n, d]``."""
    t = torch.arange(n, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d, device=device)
    pe[:, 0::2] = torch.sin(t * freq)
    pe[:, 1::2] = torch.cos(t * freq)[:, : d // 2]
    return pe.to(dtype)
