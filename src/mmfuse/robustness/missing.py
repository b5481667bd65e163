"""Removing a modality at the encoder outputs (missing-modality robustness, modality contribution).

While ``removed(model, modalities, mode, seed)`` is active, ``model.encode(m, batch)`` returns, for each
``m`` of ``modalities``, the encoder output (or cached features) replaced by
- ``zeros``: ``pooled = 0``, ``tokens = 0`` (the mask kept);
- ``mean``: the batch's mean, ``pooled_b = (1/B) Σ_b' pooled_b'`` and, per position, the masked mean of the
  tokens over the batch's samples that have that position (evaluation batches, ``data.eval_batch_size``,
  stand in for the split: no extra pass over the data);
- ``shuffle``: the batch's outputs permuted across samples (pooled, tokens and mask together) with a
  permutation drawn from ``seed`` and the call's index, so each sample meets another sample's modality.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput

MODES = ("zeros", "mean", "shuffle")


def replace_output(out: EncoderOutput, mode: str, generator: torch.Generator) -> EncoderOutput:
    pooled, tokens, mask = out
    if mode == "zeros":
        return EncoderOutput(torch.zeros_like(pooled), torch.zeros_like(tokens), mask)
    if mode == "mean":
        m = mask.unsqueeze(-1).to(tokens.dtype)
        token_mean = (tokens * m).sum(0, keepdim=True) / m.sum(0, keepdim=True).clamp_min(1)
        return EncoderOutput(pooled.mean(0, keepdim=True).expand_as(pooled).clone(),
                             token_mean.expand_as(tokens).clone(), mask)
    if mode == "shuffle":
        perm = torch.randperm(pooled.shape[0], generator=generator).to(pooled.device)
        return EncoderOutput(pooled[perm], tokens[perm], mask[perm])
    raise MMFuseError(f"robustness.mode={mode!r}: expected one of {MODES}")


@contextlib.contextmanager
def removed(model: Any, modalities: Sequence[str], mode: str, seed: int = 0) -> Iterator[None]:
    """Within the block, ``model.encode`` removes ``modalities`` (see the module docstring)."""
    if mode not in MODES:
        raise MMFuseError(f"robustness.mode={mode!r}: expected one of {MODES}")
    unknown = [m for m in modalities if m not in model.modalities]
    if unknown:
        raise MMFuseError(f"robustness: the model has no {unknown} encoder (its modalities: {list(model.modalities)})")
    original, own = model.encode, model.__dict__.get("encode")
    calls = [0]

    def encode(modality: str, batch: dict[str, Any]) -> EncoderOutput:
        out = original(modality, batch)
        if modality not in modalities:
            return out
        calls[0] += 1
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + calls[0])
        return replace_output(out, mode, generator)

    model.encode = encode
    try:
        yield
    finally:
        if own is None:
            del model.encode  # the instance attribute: the class's method shows again
        else:
            model.encode = own
