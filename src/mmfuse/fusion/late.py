"""Late fusion: each modality is embedded on its own; the task combines them at the very end."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from mmfuse.fusion.base import Fusion, linear_params, require_positive
from mmfuse.types import EncoderOutput, LateOutput


class LateFusion(Fusion):
    """``u_m = A_m x_m ∈ R^dim`` for each modality, returned as ``LateOutput({m: u_m})``: no
    interaction inside.

    The task combines them: for matching (ITM) the dual-encoder score ``s · cos(u, v) + b`` of the text
    and the other modality (``tasks.heads.SimilarityHead``, CLIP / ALIGN style; with more modalities,
    ``s`` times the mean cosine of the text with each other modality, plus ``b``); classification sums
    the per-modality heads' logits. Parameters: ``Σ_m (D_m + 1) dim``.
    """

    stage = "late"

    def __init__(self, dims: Mapping[str, int], dim: int = 256) -> None:
        super().__init__(dims)
        require_positive("late", dim=dim)
        self.out_dim = dim
        self.per_modality("proj", lambda m, width: nn.Linear(width, dim))

    @staticmethod
    def param_formula(dims: Mapping[str, int], dim: int, **_: object) -> int:
        return sum(linear_params(d, dim) for d in dims.values())

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> LateOutput:
        return LateOutput({m: self.part("proj", m)(inputs[m].pooled) for m in self.modalities})
