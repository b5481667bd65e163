"""``qformer``: BLIP-2's Querying Transformer (Li et al. 2023) as a fusion, and the token hand-over contract.

Token hand-over (what a decoder receives, ``mmfuse.decoders.base``): a fusion that has a fused token
sequence implements ``fused_tokens(inputs: {modality: EncoderOutput}) -> (tokens [B, T, token_dim],
mask [B, T] bool)`` (True = a real position; padded positions of the inputs stay padded, and what a
padded position holds never changes the real ones) and the attribute ``token_dim``. ``forward`` stays
the fusion's vector ``[B, out_dim]``: a documented pooling of that same sequence, computed by the same
code (``forward`` calls the method that ``fused_tokens`` calls, so the two cannot drift). Implemented by
``cross_attention`` (each direction's query sequence, ``both``: the two joined along ``T``),
``co_attention`` (``[LN X; LN Y]`` along ``T``), ``mult`` (each target's ``LN Z_t`` along ``T``, width
``(N − 1) d``), ``single_stream`` (``LN(H^L)`` incl. ``[CLS]``) and ``qformer`` (the queries). A fusion
without the method hands over its fused vector as a memory of one.

``QFormerFusion``: ``K = num_queries`` learned queries ``Q⁰ ∈ R^{K×d}`` (``queries``, shared by all
samples) read the non-text modalities' tokens. The context ``C = [X_{m_1} W_{m_1}; …]`` is every
non-text modality's tokens projected to ``d`` (``proj_<m>``), joined along ``T`` in ``MODALITIES``
order, with their masks (padding is never attended to). When text is an input and
``text_in_self_attention=true``, the text tokens ``T⁰ = Y W_text`` share the queries' self-attention
(BLIP-2's shared self-attention layers, bidirectional mask as in its image-text matching) and then
have their own feed-forward; otherwise text is not read (``uses`` leaves it out). Layer ``l`` (pre-norm,
``layers.py``'s conventions):

    [Q; T] ← [Q; T] + SA(LN_s [Q; T]; mask [1_K; mask_text])      (SA over Q alone without text)
    Q ← Q + CA(LN_q Q, LN_kv C; mask_C)
    Q ← Q + FFN_q(LN_2 Q)
    T ← T + FFN_t(LN_t T)                                           (layers 1 .. L − 1 only: the last
                                                                     one's would feed nothing)

``fused_tokens = (LN(Q^L) [B, K, d], all True)``; ``forward = mean_k LN(Q^L)_k ∈ R^d`` (``out_dim = d``).
N-ary with ``min_inputs = 1`` (it runs on the image alone); at least one non-text modality is needed.
Parameters, ``f = ff_mult d``, ``t = 1`` when text is read (else 0):
``Σ_{m read} (D_m + 1) d + K d + L P_q + t (L − 1) (2d + (d+1)f + (f+1)d) + 2d`` with
``P_q = 2d + (4d² + 4d) + 3·2d + (4d² + 4d) + (d+1)f + (f+1)d`` (``layers.cross_block_params(d, f, True)``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import Fusion, linear_params, require_positive
from mmfuse.fusion.layers import FeedForward, check_heads, cross_block_params, ffn_params, norm_params
from mmfuse.types import EncoderOutput


class QFormerLayer(nn.Module):
    """One Q-Former layer: shared self-attention over ``[Q; T]``, cross-attention of ``Q`` to the context,
    ``Q``'s feed-forward, and (``text_ffn``) the text's own feed-forward (module docstring)."""

    def __init__(self, d: int, heads: int, f: int, dropout: float, text_ffn: bool) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm_q, self.norm_kv, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(d, f, dropout)
        if text_ffn:
            self.norm_text, self.ffn_text = nn.LayerNorm(d), FeedForward(d, f, dropout)
        self.text_ffn = text_ffn

    def forward(self, q: torch.Tensor, text: torch.Tensor | None, text_mask: torch.Tensor | None,
                context: torch.Tensor, context_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = q.shape[1]
        joint = q if text is None else torch.cat([q, text], dim=1)
        joint_mask = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)
        if text is not None:
            joint_mask = torch.cat([joint_mask, text_mask], dim=1)
        h = self.norm_self(joint)
        joint = joint + self.self_attn(h, h, h, key_padding_mask=~joint_mask, need_weights=False)[0]
        q, text = joint[:, :k], (None if text is None else joint[:, k:])
        kv = self.norm_kv(context)
        q = q + self.attn(self.norm_q(q), kv, kv, key_padding_mask=~context_mask, need_weights=False)[0]
        q = q + self.ffn(self.norm2(q))
        if text is not None and self.text_ffn:
            text = text + self.ffn_text(self.norm_text(text))
        return q, text


class QFormerFusion(Fusion):
    """BLIP-2's Q-Former over the non-text modalities' tokens (and the text in its self-attention): see
    the module docstring for the layer, the output and the parameter count."""

    stage = "mid"
    needs_tokens = True
    min_inputs = 1

    def __init__(self, dims: Mapping[str, int], dim: int = 64, heads: int = 4, layers: int = 2,
                 num_queries: int = 8, ff_mult: int = 2, text_in_self_attention: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__(dims)
        require_positive("qformer", dim=dim, layers=layers, num_queries=num_queries, ff_mult=ff_mult)
        check_heads(dim, heads)
        self.visual = tuple(m for m in self.modalities if m != "text")
        if not self.visual:
            raise MMFuseError("fusion=qformer: its queries read the tokens of a non-text modality and this run has "
                              "text only; set encoder.image (or video / audio), or use another fusion")
        self.read_text = bool(text_in_self_attention) and "text" in self.modalities
        self.dim = self.out_dim = self.token_dim = dim
        for m in self.uses:  # proj_<m> in dims order (text last)
            self.add_module(f"proj_{m}", nn.Linear(self.dims[m], dim))
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)  # BLIP-2: normal(0, 0.02)
        self.blocks = nn.ModuleList(
            QFormerLayer(dim, heads, ff_mult * dim, dropout, self.read_text and i < layers - 1) for i in range(layers))
        self.norm = nn.LayerNorm(dim)

    @property
    def uses(self) -> tuple[str, ...]:
        """The non-text modalities, and text when ``text_in_self_attention`` (``MODALITIES`` order)."""
        return tuple(m for m in self.modalities if m != "text" or self.read_text)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, layers: int, num_queries: int, ff_mult: int,
                      text_in_self_attention: bool, **_: object) -> int:
        f = ff_mult * dim
        text = bool(text_in_self_attention) and "text" in dims
        read = {m: w for m, w in dims.items() if m != "text" or text}
        text_ffn = (layers - 1) * (norm_params(dim) + ffn_params(dim, f)) if text else 0
        return (sum(linear_params(w, dim) for w in read.values()) + num_queries * dim
                + layers * cross_block_params(dim, f, True) + text_ffn + norm_params(dim))

    def fused_tokens(self, inputs: Mapping[str, EncoderOutput]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(LN(Q^L) [B, K, d], mask [B, K])`` with ``mask`` all True: the queries' outputs."""
        context = torch.cat([self.part("proj", m)(inputs[m].tokens) for m in self.visual], dim=1)
        context_mask = torch.cat([inputs[m].mask for m in self.visual], dim=1)
        batch = context.shape[0]
        q = self.queries.unsqueeze(0).expand(batch, -1, -1).to(context.dtype)
        text = text_mask = None
        if self.read_text:
            text, text_mask = self.proj_text(inputs["text"].tokens), inputs["text"].mask
        for block in self.blocks:
            q, text = block(q, text, text_mask, context, context_mask)
        return self.norm(q), torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        """``mean_k LN(Q^L)_k ∈ R^d``: the mean of ``fused_tokens`` over the queries."""
        return self.fused_tokens(inputs)[0].mean(dim=1)
