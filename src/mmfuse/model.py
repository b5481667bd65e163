"""The pure-PyTorch model: two encoders and a fusion (no Lightning, so plain loops can use it too)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from mmfuse.encoders.base import Encoder
from mmfuse.fusion.base import Fusion
from mmfuse.types import EncoderOutput, LateOutput


class FusionModel(nn.Module):
    """``fusion(image_encoder(batch["image"]), text_encoder(batch["input_ids"], batch["attention_mask"]))``.

    A batch may carry precomputed encoder outputs instead (``image_features`` / ``text_features``, as
    ``EncoderOutput``), as the feature cache provides; then that encoder is not run. A fully frozen
    encoder runs under ``torch.no_grad()``.
    """

    def __init__(self, image_encoder: Encoder, text_encoder: Encoder, fusion: Fusion) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.fusion = fusion

    def encode_image(self, batch: dict[str, Any]) -> EncoderOutput:
        if "image_features" in batch:
            return batch["image_features"]
        with _no_grad_if(self.image_encoder.fully_frozen):
            return self.image_encoder(batch["image"])

    def encode_text(self, batch: dict[str, Any]) -> EncoderOutput:
        if "text_features" in batch:
            return batch["text_features"]
        with _no_grad_if(self.text_encoder.fully_frozen):
            return self.text_encoder(batch["input_ids"], batch["attention_mask"])

    def forward(self, batch: dict[str, Any]) -> torch.Tensor | LateOutput:
        return self.fusion(self.encode_image(batch), self.encode_text(batch))


def _no_grad_if(condition: bool) -> contextlib.AbstractContextManager:
    return torch.no_grad() if condition else contextlib.nullcontext()
