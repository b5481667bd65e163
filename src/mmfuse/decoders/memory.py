"""What a fusion hands over to a decoder: its *memory*, a sequence with a padding mask.

``task.memory``:
- ``auto``: a fusion with a fused token sequence (``fused_tokens(inputs) -> (tokens, mask)``, width
  ``token_dim``: cross_attention, co_attention, mult, single_stream, qformer) hands over that sequence;
  a late fusion its per-modality embeddings as a sequence of ``M`` tokens; any other fusion its fused
  vector ``[B, out_dim]`` as a sequence of one;
- ``pooled``: the fused vector (``forward``) as a sequence of one, whatever the fusion (late: its
  embeddings, as for ``auto``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput, LateOutput

MEMORY_MODES = ("auto", "pooled")


def check_mode(mode: str) -> str:
    if mode not in MEMORY_MODES:
        raise MMFuseError(f"task.memory={mode!r}: expected one of {list(MEMORY_MODES)}")
    return mode


def uses_tokens(fusion: nn.Module, mode: str) -> bool:
    return check_mode(mode) == "auto" and hasattr(fusion, "fused_tokens")


def memory_dim(fusion: nn.Module, mode: str) -> int:
    """The width of the memory ``fusion`` hands over under ``mode``."""
    return int(fusion.token_dim) if uses_tokens(fusion, mode) else int(fusion.out_dim)


def memory_of(fusion: nn.Module, inputs: Mapping[str, EncoderOutput], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(memory [B, M, D], memory_mask [B, M] bool)`` as the module docstring states."""
    if uses_tokens(fusion, mode):
        tokens, mask = fusion.fused_tokens(inputs)
        return tokens, mask.bool()
    out = fusion(inputs)
    tokens = torch.stack(list(out.values()), dim=1) if isinstance(out, LateOutput) else out[:, None]
    return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
