"""The rule for a pairwise fusion given more than two modalities: each one paired with a context.

``z = [f_{m_1}(x_{m_1}, x_c); …; f_{m_k}(x_{m_k}, x_c)]`` for the modalities ``m_i ≠ c`` in
``MODALITIES`` order (``x_m`` in the pairwise fusion's ``x`` role, the context in its ``y`` role,
whatever their order in ``MODALITIES``), where ``c = fusion.context`` (text by default: the caption or question that each
of the other inputs is read against) and each ``f_m`` is its own copy of the pairwise fusion (its own
parameters). ``out_dim = Σ_m out_dim(f_m)``; parameters ``Σ_m P_f(D_m, D_c)``. With two modalities the
builder builds the pairwise fusion itself, so its state dict keys are those of an image-text run.
A pairwise fusion that hands a decoder its fused tokens (``fused_tokens``) hands over each pair's
sequence, concatenated along the tokens in the same order (with their masks; ``token_dim`` is the
pairs' own).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import PAIR_ROLES, Fusion, ordered_dims
from mmfuse.types import EncoderOutput


def context_pairs(dims: Mapping[str, int], context: str) -> list[dict[str, int]]:
    """The ``dims`` of each pair ``(m, context)``, ``m`` in order; one line when ``context`` is absent."""
    dims = ordered_dims("fusion", dims)
    if context not in dims:
        raise MMFuseError(f"fusion.context={context!r}: this run has no {context} encoder (its modalities: "
                          f"{', '.join(dims)}); set fusion.context to the modality each other one is fused with, "
                          f"e.g. fusion.context={next(iter(dims))}")
    return [ordered_dims("fusion", {m: d, context: dims[context]}) for m, d in dims.items() if m != context]


class ContextPairs(Fusion):
    """A pairwise fusion over N > 2 modalities by the context rule of this module."""

    def __init__(self, dims: Mapping[str, int], make: Callable[[dict[str, int]], Fusion], context: str = "text") -> None:
        super().__init__(dims)
        self.context = context
        pairs = context_pairs(self.dims, context)
        built = {}
        for pair in pairs:
            m = next(k for k in pair if k != context)
            token = PAIR_ROLES.set((m, context))  # x = the modality, y = the context, whatever their order
            try:
                built[m] = make(pair)
            finally:
                PAIR_ROLES.reset(token)
        self.pairs = nn.ModuleDict(built)
        first = next(iter(self.pairs.values()))
        self.stage, self.needs_tokens = first.stage, first.needs_tokens
        self.out_dim = sum(f.out_dim for f in self.pairs.values())
        if hasattr(first, "fused_tokens"):
            self.token_dim = first.token_dim
            self.fused_tokens = types.MethodType(_pairs_fused_tokens, self)  # only where the pairs have it

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        return torch.cat([f(self._pair_inputs(m, inputs)) for m, f in self.pairs.items()], -1)

    def _pair_inputs(self, m: str, inputs: Mapping[str, EncoderOutput]) -> dict[str, EncoderOutput]:
        return {m: inputs[m], self.context: inputs[self.context]}

    @staticmethod
    def expected_params_of(cls: type[Fusion], dims: Mapping[str, int], context: str = "text", **options: Any) -> int:
        """``Σ_m P_f(D_m, D_c)`` of ``cls`` with ``options``."""
        return sum(cls.expected_params(pair, **options) for pair in context_pairs(dims, context))


def _pairs_fused_tokens(self: ContextPairs, inputs: Mapping[str, EncoderOutput]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's ``fused_tokens``, concatenated along the tokens (pairs in order), with their masks."""
    parts = [f.fused_tokens(self._pair_inputs(m, inputs)) for m, f in self.pairs.items()]
    return torch.cat([t for t, _ in parts], 1), torch.cat([mask.bool() for _, mask in parts], 1)
