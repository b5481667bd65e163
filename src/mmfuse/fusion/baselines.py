"""Unimodal baselines: a fusion that looks at one modality only.

A model that scores well with one of these has found a shortcut in the data (the caption or the image
alone gives the label away). On the shapes data both must stay at chance.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.fusion.base import Fusion, linear_params
from mmfuse.types import EncoderOutput


class ImageOnly(Fusion):
    """``z = relu(A x)``: ignores the text. Parameters: ``(Dx + 1) dim``."""

    stage = "none"
    uses_text = False

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256) -> None:
        super().__init__(image_dim, text_dim)
        self.out_dim = dim
        self.proj = nn.Linear(image_dim, dim)

    @staticmethod
    def param_formula(image_dim: int, dim: int, **_: object) -> int:
        return linear_params(image_dim, dim)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        return torch.relu(self.proj(image.pooled))


class TextOnly(Fusion):
    """``z = relu(B y)``: ignores the image. Parameters: ``(Dy + 1) dim``."""

    stage = "none"
    uses_image = False

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256) -> None:
        super().__init__(image_dim, text_dim)
        self.out_dim = dim
        self.proj = nn.Linear(text_dim, dim)

    @staticmethod
    def param_formula(text_dim: int, dim: int, **_: object) -> int:
        return linear_params(text_dim, dim)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        return torch.relu(self.proj(text.pooled))
