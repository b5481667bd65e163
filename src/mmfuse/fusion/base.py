"""The one interface every fusion implements.

``Fusion(image_dim, text_dim, **options)``; ``forward(image: EncoderOutput, text: EncoderOutput)``
returns the fused representation ``[B, out_dim]`` (``stage`` early / mid) or a ``LateOutput`` of
per-modality embeddings (``stage`` late) that the task combines.

Class attributes:
- ``stage``: ``"early" | "mid" | "late"`` (``"none"`` for unimodal baselines);
- ``needs_tokens``: True when the fusion reads ``tokens`` / ``mask``, not only ``pooled``; such a
  fusion must give the same output whatever padding (``mask == False``) is appended;
- ``uses_image`` / ``uses_text``: False only for the unimodal baselines.

Every fusion states its parameter count in closed form (``param_formula``, the same arithmetic as its
docstring); the tests check it against the built module for several sizes, which catches parameters
that are never registered (MultiBench's low-rank fusion kept its factors in a Python list).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput, LateOutput

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "identity": nn.Identity}


def make_activation(name: str, field: str = "activation") -> nn.Module:
    """The activation ``name`` of ``ACTIVATIONS``; ``field`` is the config key the error names."""
    if name not in ACTIVATIONS:
        raise MMFuseError(f"fusion.{field}={name!r}: expected one of {sorted(ACTIVATIONS)}, "
                          f"e.g. fusion.{field}=relu")
    return ACTIVATIONS[name]()


def linear_params(d_in: int, d_out: int) -> int:
    """Parameters of ``nn.Linear(d_in, d_out)``: ``(d_in + 1) d_out``."""
    return (d_in + 1) * d_out


# every width / count key of the fusions (conf/fusion/*.yaml) with an example value, for the error
# messages (``fusion.<name>=<example>``) here and in mmfuse.validate
EXAMPLES = {"dim": 256, "mm_dim": 128, "chunks": 8, "rank": 4, "heads": 4, "layers": 2, "self_layers": 1,
            "ff_mult": 2, "sketch_dim": 1024, "factor": 5, "order": 2, "hidden": 32, "image_tokens": 64}


def is_positive_int(value: object) -> bool:
    """An ``int`` >= 1 (not a bool, not a float such as ``2.5`` or ``2.0``)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def require_positive(owner: str, **values: object) -> None:
    """Each ``values[name]`` is a positive ``int``; else one line naming ``fusion.<name>`` and an example.

    No ``int(value)``: it would turn ``2.5`` into ``2`` and build a model other than the one asked for.
    """
    for name, value in values.items():
        if not is_positive_int(value):
            example = f"fusion.{name}={EXAMPLES.get(name, 64)}"
            raise MMFuseError(f"fusion.{name}={value!r} for {owner}: must be a positive integer, e.g. {example}")


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

    @staticmethod
    def param_formula(**args: Any) -> int:
        """The parameter count in closed form, from the constructor's arguments (defaults filled in)."""
        raise NotImplementedError

    @classmethod
    def expected_params(cls, image_dim: int, text_dim: int, **options: Any) -> int:
        """``param_formula`` with the constructor's defaults for the options not given."""
        bound = inspect.signature(cls).bind(image_dim, text_dim, **options)
        bound.apply_defaults()
        return cls.param_formula(**bound.arguments)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Σ_t m_t x_t / Σ_t m_t`` over dim 1 (``x [B, T, D]``, ``mask [B, T]`` True = real token).

    Padded positions are excluded with ``where``, so even a NaN there cannot leak into the mean.
    """
    m = mask.unsqueeze(-1)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)
    return total / m.sum(1).clamp_min(1).to(x.dtype)
