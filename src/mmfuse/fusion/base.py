"""The one interface every fusion implements.

``Fusion(image_dim, text_dim, **options)``; ``forward(image: EncoderOutput, text: EncoderOutput)``
returns the fused representation ``[B, out_dim]`` (``stage`` early / mid) or a ``LateOutput`` of
per-modality embeddings (``stage`` late) that the task combines.

Class attributes:
- ``stage``: ``"early" | "mid" | "late"`` (``"none"`` for unimodal baselines);
- ``needs_tokens``: True when the fusion reads ``tokens`` / ``mask``, not only ``pooled``;
- ``uses_image`` / ``uses_text``: False only for the unimodal baselines.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput, LateOutput

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "identity": nn.Identity}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise MMFuseError(f"fusion.activation={name!r}: expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class Fusion(nn.Module):
    stage: str = "mid"
    needs_tokens: bool = False
    uses_image: bool = True
    uses_text: bool = True
    out_dim: int

    def __init__(self, image_dim: int, text_dim: int) -> None:
        super().__init__()
        self.image_dim = image_dim
        self.text_dim = text_dim

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor | LateOutput:
        raise NotImplementedError
