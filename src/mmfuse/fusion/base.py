"""The one interface every fusion implements.

``Fusion(dims, **options)`` with ``dims = {modality: width}`` in ``mmfuse.types.MODALITIES`` order
(``{"image": Dx, "text": Dy}`` for an image-text run); ``forward(inputs: {modality: EncoderOutput})``
returns the fused representation ``[B, out_dim]`` (``stage`` early / mid) or a ``LateOutput`` of
per-modality embeddings (``stage`` late) that the task combines.

Class attributes:
- ``stage``: ``"early" | "mid" | "late"`` (``"none"`` for unimodal baselines);
- ``needs_tokens``: True when the fusion reads ``tokens`` / ``mask``, not only ``pooled``; such a
  fusion must give the same output whatever padding (``mask == False``) is appended;
- ``arity``: ``"n"`` (its formula is written for any number of modalities, ``min_inputs`` or more) or
  ``"pair"`` (``PairFusion``: two inputs ``x``, ``y``; with more modalities the builder applies the
  pairwise rule of ``mmfuse.fusion.pairs``); ``max_inputs`` caps ``"n"`` fusions that have a cap;
- ``uses``: the modalities the fusion reads (all of ``dims``, except for the unimodal baselines).

Parameters that belong to one modality are registered as ``<part>_<modality>`` (``proj_image``,
``proj_text``, ...), one per modality in ``dims`` order, so that an image-text fusion keeps the state
dict keys (and the initialisation order) it had when fusions took exactly two inputs.

Every fusion states its parameter count in closed form (``param_formula``, the same arithmetic as its
docstring, written for N modalities); the tests check it against the built module for several sizes
and for 2 and 3 modalities, which catches parameters that are never registered (MultiBench's
low-rank fusion kept its factors in a Python list).
"""

from __future__ import annotations

import contextvars
import inspect
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.types import MODALITIES, EncoderOutput, LateOutput

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


def ordered_dims(owner: str, dims: Mapping[str, int]) -> dict[str, int]:
    """``dims`` in ``MODALITIES`` order, each a known modality with a positive width; else one line."""
    unknown = [m for m in dims if m not in MODALITIES]
    if unknown:
        raise MMFuseError(f"{owner}: unknown modalities {unknown}; known: {list(MODALITIES)}")
    for m, width in dims.items():
        if not is_positive_int(width):
            raise MMFuseError(f"{owner}: the {m} encoder's width is {width!r}; it must be a positive integer")
    return {m: int(dims[m]) for m in MODALITIES if m in dims}


class Fusion(nn.Module):
    stage: str = "mid"
    needs_tokens: bool = False
    arity: str = "n"
    min_inputs: int = 2
    max_inputs: int | None = None
    out_dim: int

    def __init__(self, dims: Mapping[str, int] | int, text_dim: int | None = None) -> None:
        super().__init__()
        owner = f"fusion {type(self).__name__}"
        if text_dim is not None:  # the two-input form of fusions written before N modalities (see two_input)
            dims = {"image": dims, "text": text_dim}
            self.image_dim, self.text_dim = dims["image"], dims["text"]
        self.dims = ordered_dims(owner, dims)
        self.modalities = tuple(self.dims)
        n = len(self.modalities)
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            most = "any number" if self.max_inputs is None else self.max_inputs
            raise MMFuseError(
                f"{owner} fuses {self.min_inputs} to {most} modalities; this run has {n} "
                f"({', '.join(self.modalities) or 'none'}): set the encoder.<modality> groups (or =none) to match")

    @property
    def uses(self) -> tuple[str, ...]:
        """The modalities this fusion reads."""
        return self.modalities

    def per_modality(self, part: str, make: Callable[[str, int], nn.Module]) -> None:
        """Register ``make(modality, width)`` as ``<part>_<modality>`` for each modality, in order."""
        for m, width in self.dims.items():
            self.add_module(f"{part}_{m}", make(m, width))

    def part(self, part: str, modality: str) -> nn.Module:
        """The ``<part>_<modality>`` module of ``per_modality``."""
        return getattr(self, f"{part}_{modality}")

    def forward(self, inputs: Mapping[str, EncoderOutput]) -> torch.Tensor | LateOutput:
        raise NotImplementedError

    @staticmethod
    def param_formula(**args: Any) -> int:
        """The parameter count in closed form, from the constructor's arguments (defaults filled in)."""
        raise NotImplementedError

    @classmethod
    def expected_params(cls, dims: Mapping[str, int], **options: Any) -> int:
        """``param_formula`` with the constructor's defaults for the options not given (``dims`` ordered)."""
        bound = inspect.signature(cls).bind(ordered_dims(cls.__name__, dims), **options)
        bound.apply_defaults()
        return cls.param_formula(**bound.arguments)


def is_two_input(cls: type) -> bool:
    """A fusion written for image + text only, before fusions took N modalities:
    ``__init__(image_dim, text_dim, ...)`` and ``forward(image, text)``."""
    params = list(inspect.signature(cls).parameters)
    return params[:2] == ["image_dim", "text_dim"]


def two_input(make: Callable[..., nn.Module], cls: type, dims: Mapping[str, int]) -> nn.Module:
    """Build a two-input fusion (``is_two_input``) for an image-text run and let it take
    ``{modality: output}``: its ``forward(image, text)`` is called with the two, its parameters and
    state dict keys stay as they were (no wrapper module)."""
    if set(dims) != {"image", "text"}:
        raise MMFuseError(f"fusion {cls.__name__} takes (image_dim, text_dim): image + text only, and this run has "
                          f"{', '.join(dims)}; write it as Fusion(dims) with forward(inputs) (README: Adding your own)")
    fusion = make(image_dim=dims["image"], text_dim=dims["text"])
    fusion.forward = types.MethodType(_two_input_forward, fusion)  # a bound method: deepcopy rebinds it
    return fusion


def _two_input_forward(self: nn.Module, inputs: Mapping[str, EncoderOutput]) -> Any:
    return type(self).forward(self, inputs["image"], inputs["text"])


# (x, y) roles for the next PairFusion built (set by mmfuse.fusion.pairs around each pair it builds)
PAIR_ROLES: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("PAIR_ROLES", default=None)


class PairFusion(Fusion):
    """A fusion defined on two inputs: ``x`` (``self.x``, the first modality in ``MODALITIES`` order)
    and ``y`` (``self.y``: text when text is one of them; in a context pair, the context). With more than two modalities the builder
    wraps it in ``mmfuse.fusion.pairs.ContextPairs`` (one copy per pair with ``fusion.context``)."""

    arity = "pair"
    max_inputs = 2

    def __init__(self, dims: Mapping[str, int]) -> None:
        super().__init__(dims)
        roles = PAIR_ROLES.get()
        self.x, self.y = roles if roles is not None and set(roles) == set(self.modalities) else self.modalities

    @property
    def dim_x(self) -> int:
        return self.dims[self.x]

    @property
    def dim_y(self) -> int:
        return self.dims[self.y]


def pair_dims(dims: Mapping[str, int]) -> tuple[int, int]:
    """``(Dx, Dy)`` of a pairwise fusion's ``dims`` (for ``param_formula``)."""
    dx, dy = ordered_dims("pairwise fusion", dims).values()
    return dx, dy


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Σ_t m_t x_t / Σ_t m_t`` over dim 1 (``x [B, T, D]``, ``mask [B, T]`` True = real token).

    Padded positions are excluded with ``where``, so even a NaN there cannot leak into the mean.
    """
    m = mask.unsqueeze(-1)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)
    return total / m.sum(1).clamp_min(1).to(x.dtype)
