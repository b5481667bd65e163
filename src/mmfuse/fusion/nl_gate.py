"""Non-local gating (Wang et al. 2020, "What makes training multimodal classification networks hard?";
MultiBench ``NLgate``): each image token is gated by what it retrieves from the text."""

from __future__ import annotations

import math

import torch
from torch import nn

from mmfuse.fusion.base import Fusion, linear_params, masked_mean, require_positive
from mmfuse.types import EncoderOutput


class NLGateFusion(Fusion):
    """``a_n = W_x x_n``, ``q_n = W_q a_n``, ``k_s = W_k y_s``, ``v_s = W_v y_s`` (all ``∈ R^d``);
    ``g_n = Σ_s softmax_s(q_n·k_s / √d) v_s`` over the real text tokens; ``z = mean_n (a_n ⊙ g_n)`` over
    the real image tokens, ``z ∈ R^d``.
    Parameters: ``(Dx + 1) d + (d + 1) d + 2 (Dy + 1) d``.
    """

    stage = "mid"
    needs_tokens = True

    def __init__(self, image_dim: int, text_dim: int, dim: int = 64, dropout: float = 0.0) -> None:
        super().__init__(image_dim, text_dim)
        require_positive("nl_gate", dim=dim)
        self.out_dim = dim
        self.proj_image = nn.Linear(image_dim, dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(text_dim, dim)
        self.value = nn.Linear(text_dim, dim)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, **_: object) -> int:
        return linear_params(image_dim, dim) + linear_params(dim, dim) + 2 * linear_params(text_dim, dim)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        a = self.proj_image(image.tokens)
        q, k, v = self.query(a), self.key(text.tokens), self.value(text.tokens)
        scores = torch.einsum("bnd,bsd->bns", q, k) / math.sqrt(self.out_dim)
        scores = scores.masked_fill(~text.mask.unsqueeze(1), float("-inf"))
        g = torch.einsum("bns,bsd->bnd", torch.softmax(scores.float(), dim=-1).to(v.dtype), v)
        return masked_mean(self.dropout(a * g), image.mask)
