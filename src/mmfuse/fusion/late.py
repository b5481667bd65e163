"""Late fusion: each modality is embedded on its own; the task combines the two at the very end."""

from __future__ import annotations

from torch import nn

from mmfuse.fusion.base import Fusion, linear_params, require_positive
from mmfuse.types import EncoderOutput, LateOutput


class LateFusion(Fusion):
    """``u = A x``, ``v = B y`` (``∈ R^dim``), returned as ``LateOutput(u, v)``: no interaction inside.

    The task combines them: for matching (ITM) the dual-encoder score ``s · cos(u, v) + b``
    (``tasks.heads.SimilarityHead``, CLIP / ALIGN style); a classification task would average or
    weight the per-modality logits. Parameters: ``(Dx + 1) dim + (Dy + 1) dim``.
    """

    stage = "late"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256) -> None:
        super().__init__(image_dim, text_dim)
        require_positive("late", dim=dim)
        self.out_dim = dim
        self.proj_image = nn.Linear(image_dim, dim)
        self.proj_text = nn.Linear(text_dim, dim)

    @staticmethod
    def param_formula(image_dim: int, text_dim: int, dim: int, **_: object) -> int:
        return linear_params(image_dim, dim) + linear_params(text_dim, dim)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> LateOutput:
        return LateOutput(self.proj_image(image.pooled), self.proj_text(text.pooled))
