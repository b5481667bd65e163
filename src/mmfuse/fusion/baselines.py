"""Unimodal baselines: a fusion that looks at one modality only.

A model that scores well with one of these has found a shortcut in the data (the caption, the image,
the clip or the sound alone gives the label away). On the shapes data they must stay at chance.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import Fusion, linear_params, require_positive
from mmfuse.types import EncoderOutput


class UnimodalFusion(Fusion):
    """``z = relu(A x_m)`` for the one modality ``m = modality``; ignores the others.
    Parameters: ``(D_m + 1) dim``.

    ``project=false``: ``z = x_m``, the encoder's pooled features as they are (``out_dim = D_m``, ``dim``
    unused, no parameters): what a non-parametric decoder (``decoder=nearest``) compares."""

    stage = "none"
    min_inputs = 1

    def __init__(self, dims: Mapping[str, int], modality: str = "image", dim: int = 256, project: bool = True) -> None:
        super().__init__(dims)
        if not isinstance(project, bool):
            raise MMFuseError(f"fusion.project={project!r}: expected true (z = relu(A x)) or false (z = x)")
        if project:
            require_positive("unimodal baseline", dim=dim)
        if modality not in self.dims:
            raise MMFuseError(f"fusion.modality={modality!r}: this run has no {modality} encoder (its modalities: "
                              f"{', '.join(self.modalities)}); set fusion.modality to one of them")
        self.modality = modality
        self.project = project
        self.out_dim = dim if project else self.dims[modality]
        if project:
            self.proj = nn.Linear(self.dims[modality], dim)

    @property
    def uses(self) -> tuple[str, ...]:
        return (self.modality,)

    @staticmethod
    def param_formula(dims: Mapping[str, int], modality: str, dim: int, project: bool = True, **_: object) -> int:
        return linear_params(dims[modality], dim) if project else 0

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor:
        x = inputs[self.modality].pooled
        return torch.relu(self.proj(x)) if self.project else x


class ImageOnly(UnimodalFusion):
    """``fusion=image_only``: ``UnimodalFusion`` of the image."""

    def __init__(self, dims: Mapping[str, int], modality: str = "image", dim: int = 256,
                 project: bool = True) -> None:
        super().__init__(dims, modality, dim, project)


class TextOnly(UnimodalFusion):
    """``fusion=text_only``: ``UnimodalFusion`` of the text."""

    def __init__(self, dims: Mapping[str, int], modality: str = "text", dim: int = 256,
                 project: bool = True) -> None:
        super().__init__(dims, modality, dim, project)
