"""Fusions against the implementations they cite (issue 13), recomputed by hand from the parameters.

- ``mcb`` in float64 (``.double()`` and a float64 default dtype).
"""

from __future__ import annotations

import torch
from test_fusions import build, inputs

from mmfuse.types import EncoderOutput

ATOL = 1e-5


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


# -- mcb in float64 ---------------------------------------------------------------------------------------

def mcb_reference(f, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The count sketch of ``x ⊗ y`` (hash ``h_x(i) + h_y(j) mod d``, sign ``s_x(i) s_y(j)``), signed
    square root, L2, then ``W_o``: in the dtype of ``x``."""
    d = f.sketch_dim
    hx, sx = f.sketch_image.abs().argmax(1), f.sketch_image.sum(1).to(x.dtype)
    hy, sy = f.sketch_text.abs().argmax(1), f.sketch_text.sum(1).to(x.dtype)
    outer = torch.einsum("bi,bj->bij", x * sx, y * sy)
    c = torch.zeros(x.shape[0], d, dtype=x.dtype).index_add_(1, ((hx[:, None] + hy[None]) % d).flatten(), outer.flatten(1))
    c = c.sign() * c.abs().sqrt()
    return linear(f.out, c / c.norm(dim=-1, keepdim=True))


def float64_inputs() -> tuple[EncoderOutput, EncoderOutput]:
    return tuple(EncoderOutput(*(t.double() if t.is_floating_point() else t for t in e)) for e in inputs())


def test_mcb_runs_in_float64_after_double():
    f = build("mcb", sketch_dim=16, dim=4).double()
    image, text = float64_inputs()
    out = f(image, text)
    assert out.dtype == torch.float64
    assert torch.allclose(out, mcb_reference(f, image.pooled, text.pooled), atol=1e-12)


def test_mcb_runs_with_a_float64_default_dtype():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        f = build("mcb", sketch_dim=16, dim=4)
        image, text = float64_inputs()
        out = f(image, text)
        assert f.sketch_image.dtype == f.out.weight.dtype == out.dtype == torch.float64
        assert torch.allclose(out, mcb_reference(f, image.pooled, text.pooled), atol=1e-12)
    finally:
        torch.set_default_dtype(before)


def test_mcb_float32_inputs_into_a_double_module_give_float64():
    f = build("mcb", sketch_dim=16, dim=4).double()
    image, text = inputs()
    out = f(image, text)
    assert out.dtype == torch.float64
    assert torch.allclose(out, mcb_reference(f, image.pooled.double(), text.pooled.double()), atol=1e-6)
