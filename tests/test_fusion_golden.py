"""Image + text fusions are bit for bit what they were before fusions took N modalities.

``fusion_golden_2modal.json`` was written by the two-input code of commit 6fb9b69 (``Fusion(image_dim,
text_dim)``, ``forward(image, text)``): for every conf/fusion config, built with ``torch.manual_seed(0)``
at widths 24 (image) and 16 (text), the state dict keys in order, the sum of every floating tensor, and
the output on fixed inputs (3 rows, text padded to 7, 5 and 3 tokens). The same keys mean old
checkpoints load; the same sums mean the same initialisation (the recorded runs' numbers); the same
outputs mean the same arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR
from mmfuse.builder import build_fusion
from mmfuse.types import EncoderOutput, LateOutput

GOLDEN = json.loads((Path(__file__).parent / "fusion_golden_2modal.json").read_text())


def golden_inputs() -> dict[str, EncoderOutput]:
    g = torch.Generator().manual_seed(1)
    b = 3
    image = EncoderOutput(torch.randn(b, 24, generator=g), torch.randn(b, 6, 24, generator=g),
                          torch.ones(b, 6, dtype=torch.bool))
    mask = torch.arange(7).unsqueeze(0) < torch.tensor([[7], [5], [3]])
    text = EncoderOutput(torch.randn(b, 16, generator=g), torch.randn(b, 7, 16, generator=g), mask)
    return {"image": image, "text": text}


FFT_FUSIONS = {"mcb"}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_image_text_fusion_is_unchanged(name):
    cfg = OmegaConf.create({"fusion": OmegaConf.load(CONF_DIR / "fusion" / f"{name}.yaml")})
    if name == "single_stream":  # recorded with the [CLS] readout, the config's default then (pooling=text: test_fusion_tokens)
        cfg.fusion.pooling = "cls"
    torch.manual_seed(0)
    fusion = build_fusion(cfg, {"image": 24, "text": 16}).eval()
    want = GOLDEN[name]
    state = fusion.state_dict()
    assert list(state) == want["keys"]
    sums = [round(float(p.double().sum()), 6) for p in state.values() if p.is_floating_point()]
    assert sums == pytest.approx(want["params"], abs=1e-6)
    with torch.no_grad():
        out = fusion(golden_inputs())
    parts = [out["image"], out["text"]] if isinstance(out, LateOutput) else [out]
    # mcb's count sketch goes through an FFT, whose rounding depends on the CPU's vector instructions
    # (2.2e-5 apart between two x86 machines); a changed formula moves the outputs by far more
    tol = 1e-4 if name in FFT_FUSIONS else 2e-6
    for got, first, total in zip(parts, want["output"], want["output_sum"]):
        assert got.flatten()[:12].tolist() == pytest.approx(first, abs=tol), name
        assert float(got.double().sum()) == pytest.approx(total, abs=10 * tol if name in FFT_FUSIONS else 2e-5), name
