"""mmfuse.explain on more fusions and tasks: co_attention and single_stream attention maps, the
single-stream rollout (Abnar & Zuidema), and the dual-encoder retrieval target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import FAST, compose_config
from mmfuse.explain.attention import attention_maps, joint_rollout, summary, supports
from mmfuse.explain.run import explain
from mmfuse.explain.targets import target
from mmfuse.fusion.cross import CoAttentionFusion
from mmfuse.fusion.layers import recording_attention
from mmfuse.fusion.single_stream import SingleStreamFusion
from mmfuse.train import train
from mmfuse.types import EncoderOutput, LateOutput


def inputs_with_padding() -> dict[str, EncoderOutput]:
    """Two pairs, 9 image tokens (the last 2 padded) and 4 text tokens (the second text has 2)."""
    torch.manual_seed(0)
    image_mask = torch.tensor([[True] * 7 + [False] * 2] * 2)
    text_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    return {"image": EncoderOutput(torch.randn(2, 6), torch.randn(2, 9, 6), image_mask),
            "text": EncoderOutput(torch.randn(2, 5), torch.randn(2, 4, 5), text_mask)}


def wrapped(fusion: nn.Module, inputs: dict[str, EncoderOutput]):
    model = type("M", (nn.Module,), {"forward": lambda self, batch: self.fusion(inputs)})()
    model.fusion = fusion
    return type("Module", (), {"model": model})()


@pytest.mark.parametrize("fusion_class", [CoAttentionFusion, SingleStreamFusion])
def test_token_fusions_give_text_to_image_maps_and_recording_keeps_the_output(fusion_class):
    inputs = inputs_with_padding()
    fusion = fusion_class({"image": 6, "text": 5}, dim=8, heads=2, layers=3).eval()
    plain = fusion(inputs)
    with recording_attention() as recorded:
        again = fusion(inputs)
    assert torch.equal(fusion(inputs), plain)  # outside the context: the same path, bit for bit
    assert torch.allclose(again, plain, atol=1e-6)
    assert supports(fusion) is None
    weights = attention_maps(wrapped(fusion, inputs), {})
    assert weights.shape == (2, 3, 2, 4, 9)  # [B, L, H, S text, N image]
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 2, 4))
    assert float(weights[..., 7:].abs().sum()) == 0  # padded image tokens get nothing
    if fusion_class is CoAttentionFusion:  # the text stream's cross-attention, layer by layer
        text_blocks = list(fusion.cross_text)
        expected = torch.stack([w for b, w in recorded if any(b is t for t in text_blocks)], dim=1)
        assert torch.allclose(weights, expected, atol=1e-7)
        assert torch.allclose(summary(wrapped(fusion, inputs), {}), weights.mean(dim=(1, 2)))
    else:  # the joint sequence is [CLS; 4 text; 9 image]: rows 1..4, columns 5..13, renormalised
        joint = torch.stack([w for _, w in recorded], dim=1)
        block = joint[..., 1:5, 5:14]
        assert torch.allclose(weights, block / block.sum(-1, keepdim=True))
        rolled = joint_rollout(joint)[:, 1:5, 5:14]
        assert torch.allclose(summary(wrapped(fusion, inputs), {}), rolled / rolled.sum(-1, keepdim=True))


def test_joint_rollout_is_abnar_and_zuidemas_product_in_layer_order():
    weights = torch.zeros(1, 2, 1, 2, 2)
    weights[0, 0, 0] = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # Â_1 = [[1, 0], [.5, .5]]
    weights[0, 1, 0] = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # Â_2 = [[.5, .5], [0, 1]]
    assert torch.allclose(joint_rollout(weights), torch.tensor([[[0.75, 0.25], [0.5, 0.5]]]))  # Â_2 Â_1
    heads = torch.zeros(1, 1, 2, 2, 2)
    heads[0, 0, 0] = torch.eye(2)
    heads[0, 0, 1] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # head mean [[.5, .5], [.5, .5]]
    assert torch.allclose(joint_rollout(heads), torch.tensor([[[0.75, 0.25], [0.25, 0.75]]]))


def test_supports_names_the_fusions_it_reads():
    mul_like = nn.Linear(1, 1)
    assert supports(mul_like) == ("Linear has no text-to-image attention "
                                  "(read: cross_attention, co_attention, single_stream)")
    video = CoAttentionFusion({"video": 6, "text": 5}, dim=8, heads=2, layers=1)
    assert supports(video) == "CoAttentionFusion between video and text, not image and text"


class DualEncoderTask(nn.Module):  # the name is what target() dispatches on
    pass


class LateModel(nn.Module):
    item_modality = "image"

    def forward(self, batch):
        return LateOutput({"image": batch["u"], "text": batch["v"]})


def test_the_retrieval_target_of_a_dual_encoder_is_the_pairs_cosine_similarity():
    module = type("Module", (), {"task": DualEncoderTask(), "model": LateModel()})()
    batch = {"u": torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "v": torch.tensor([[1.0, 1.0], [0.0, -3.0]])}
    assert torch.allclose(target(module, batch), torch.tensor([2 ** -0.5, -1.0]))


@pytest.mark.parametrize("fusion", ["co_attention", "single_stream"])
def test_explain_draws_attention_for_co_attention_and_single_stream(tmp_path, fusion):
    cfg = compose_config(tmp_path / "train", [*FAST, f"fusion={fusion}", "data.num_val=40"])
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    run = compose_config(tmp_path / "x", [f"ckpt_path={ckpt}", "n=2", "methods=[attention]"], "explain")
    explain(run)
    run_dir = Path(run.paths.output_dir)
    saved = json.loads((run_dir / "explain.json").read_text())
    entry = saved["methods"]["attention"]
    assert "skipped" not in entry and entry["pointed"] == 2 * 4  # colour + shape of both objects
    assert sorted(p.name for p in run_dir.glob("attention_*.png")) == ["attention_000.png", "attention_001.png"]
    assert f'src="{saved["samples"][1]["pngs"]["attention"]}"' in (run_dir / "index.html").read_text()
