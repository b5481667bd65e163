"""The small structures that flow between encoders, fusions and tasks."""

from __future__ import annotations

from typing import NamedTuple

import torch


class EncoderOutput(NamedTuple):
    """What every encoder returns.

    - ``pooled``: ``[B, D]`` one vector per sample;
    - ``tokens``: ``[B, T, D]`` the sequence (text tokens, conv grid cells or ViT patches);
    - ``mask``: ``[B, T]`` bool, True where ``tokens`` holds a real token (False = padding).
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


class LateOutput(NamedTuple):
    """What a late fusion returns: one embedding per modality, combined by the task (``[B, D]`` each)."""

    image: torch.Tensor
    text: torch.Tensor


# How an image-text pair was made, for ITM batches (``batch["pair_type"]`` indexes this tuple).
# "positive" is the true caption; the rest are kinds of negative (see mmfuse.data.shapes.negatives;
# "hard" is a negative mined as the most similar wrong caption).
PAIR_TYPES: tuple[str, ...] = ("positive", "other", "color", "shape", "relation", "binding", "hard")
