"""Non-local gating (Wang et al. 2020, "What makes training multimodal classification networks hard?";
MultiBench ``NLgate``): each token of ``x`` (the image) is gated by what it retrieves from ``y`` (the text).

A pair (``PairFusion``): ``x`` is the pair's first modality in ``MODALITIES`` order, ``y`` the second;
for image + text, the image tokens query the text tokens, as in the paper. For other pairs ``x`` plays
the image's role (video frames or audio frames querying the text, video querying audio), and
``image_tokens`` is ``x``'s token count.

Two forms. ``form=gate`` (the default) is mmfuse's own variant: the retrieved text multiplies the
image token, with scaled dot products, and the tokens are mean-pooled. ``form=multibench`` is the
per-token form of MultiBench's ``NLgate`` formula: the retrieved text is added to the query, with plain
dot products, and the tokens are flattened, so its width depends on the number of image tokens. It is
not MultiBench's module number for number: see ``NLGateFusion``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import PairFusion, linear_params, masked_mean, pair_dims, require_positive
from mmfuse.types import EncoderOutput

FORMS = ("gate", "multibench")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
           temperature: float) -> torch.Tensor:
    """``g_n = Σ_s softmax_s(q_n·k_s / temperature) v_s`` over the keys with ``key_mask`` True."""
    scores = torch.einsum("bnd,bsd->bns", q, k) / temperature
    scores = scores.masked_fill(~key_mask.unsqueeze(1), float("-inf"))
    return torch.einsum("bns,bsd->bnd", torch.softmax(scores.float(), dim=-1).to(v.dtype), v)


class NLGateFusion(PairFusion):
    """``form=gate``: ``a_n = W_x x_n``, ``q_n = W_q a_n``, ``k_s = W_k y_s``, ``v_s = W_v y_s`` (all
    ``∈ R^d``); ``g_n = Σ_s softmax_s(q_n·k_s / √d) v_s`` over the real ``y`` (text) tokens;
    ``z = mean_n (a_n ⊙ g_n)`` over the real ``x`` (image) tokens, ``z ∈ R^d``.
    Parameters: ``(Dx + 1) d + (d + 1) d + 2 (Dy + 1) d``.

    ``form=multibench`` (the formula of MultiBench ``NLgate`` with its three linear layers, per token):
    ``q_n = W_q x_n``, ``k_s = W_k y_s``, ``v_s = W_v y_s``; ``g_n = Σ_s softmax_s(q_n·k_s) v_s`` (no ``√d``);
    ``z = [q_1 + g_1; …; q_N + g_N] ∈ R^{N d}`` with ``N = image_tokens`` (padded ``x`` positions give
    zeros). MultiBench's module differs in two ways, so its numbers are not these: (1) its ``qli`` /
    ``kli`` / ``vli`` map the whole input vector and reshape the result into the token matrix (its test
    ``NLgate(24, 30, 10, None, (10, 300), (10, 300))`` turns a 10-d text vector into a 30 x 10 key
    matrix), where ``W_q`` / ``W_k`` / ``W_v`` here map each token ``x_n`` / ``y_s`` on its own; (2) it
    views the keys as ``[c, tf]`` and multiplies ``q @ k`` without a transpose, where here ``k_s`` is the
    projection of token ``s``, as the paper's non-local block has it.
    Parameters: ``(Dx + 1) d + 2 (Dy + 1) d``.
    """

    stage = "mid"
    needs_tokens = True

    def __init__(self, dims: Mapping[str, int], dim: int = 64, dropout: float = 0.0, form: str = "gate",
                 image_tokens: int | None = None) -> None:
        super().__init__(dims)
        require_positive("nl_gate", dim=dim)
        if form not in FORMS:
            raise MMFuseError(f"fusion.form={form!r} (nl_gate): expected one of {FORMS}")
        self.form = form
        if form == "multibench":
            if image_tokens is None:
                raise MMFuseError(f"fusion.image_tokens is unset (nl_gate form=multibench flattens the {self.x} "
                                  f"tokens): set it to the {self.x} encoder's token count, e.g. 64 for tiny_cnn at 32 px")
            require_positive("nl_gate form=multibench", image_tokens=image_tokens)
            self.image_tokens = image_tokens
            self.out_dim = self.image_tokens * dim
        else:
            if image_tokens is not None:
                raise MMFuseError(f"fusion.image_tokens={image_tokens!r} is read only by nl_gate form=multibench "
                                  f"(form={form} mean-pools the tokens): remove it (fusion.image_tokens=null) "
                                  "or set fusion.form=multibench")
            self.out_dim = dim
            self.add_module(f"proj_{self.x}", nn.Linear(self.dim_x, dim))
        self.dim = dim
        self.query = nn.Linear(dim if form == "gate" else self.dim_x, dim)
        self.key = nn.Linear(self.dim_y, dim)
        self.value = nn.Linear(self.dim_y, dim)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, form: str, **_: object) -> int:
        dx, dy = pair_dims(dims)
        keys_values = 2 * linear_params(dy, dim)
        if form == "multibench":
            return linear_params(dx, dim) + keys_values
        return linear_params(dx, dim) + linear_params(dim, dim) + keys_values

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        x, y = inputs[self.x], inputs[self.y]
        k, v = self.key(y.tokens), self.value(y.tokens)
        if self.form == "multibench":
            return self.multibench(x, k, v, y.mask)
        a = self.part("proj", self.x)(x.tokens)
        g = attend(self.query(a), k, v, y.mask, math.sqrt(self.dim))
        return masked_mean(self.dropout(a * g), x.mask)

    def multibench(self, x: EncoderOutput, k: torch.Tensor, v: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        tokens, mask = x.tokens, x.mask
        n = self.image_tokens
        if tokens.shape[1] < n:
            raise MMFuseError(f"fusion.image_tokens={n} (nl_gate form=multibench) but the {self.x} encoder gives "
                              f"{tokens.shape[1]} tokens: set fusion.image_tokens={tokens.shape[1]}")
        if tokens.shape[1] > n:
            if mask[:, n:].any():
                raise MMFuseError(f"fusion.image_tokens={n} (nl_gate form=multibench) but the {self.x} encoder "
                                  f"gives up to {int(mask.sum(1).max())} real tokens: set fusion.image_tokens to that")
            tokens, mask = tokens[:, :n], mask[:, :n]
        q = self.query(tokens)
        h = torch.where(mask.unsqueeze(-1), q + attend(q, k, v, y_mask, 1.0), torch.zeros((), dtype=q.dtype, device=q.device))
        return self.dropout(h.flatten(1))
