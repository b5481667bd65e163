"""mmfuse.explain: the maps (attention, Grad-CAM, integrated gradients), the checks (pointing game,
randomisation) and the command, with exact values where there are any."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from conftest import FAST, compose_config
from mmfuse.data.shapes.datamodule import ShapesDataModule
from mmfuse.data.shapes.scene import COLORS
from mmfuse.explain.attention import attention_maps, rollout
from mmfuse.explain.gradcam import gradcam
from mmfuse.explain.integrated_gradients import integrated_gradients
from mmfuse.explain.pointing import hit, pointing_score, uniform_score
from mmfuse.explain.run import explain
from mmfuse.explain.sanity import randomized_copy, rank_correlation
from mmfuse.explain.shapes_masks import object_masks, word_masks
from mmfuse.fusion.cross import CrossAttentionFusion
from mmfuse.fusion.layers import recording_attention
from mmfuse.train import train
from mmfuse.types import EncoderOutput


def test_pointing_score_exact():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # the top-left quarter
    assert pointing_score(mask.astype(float), mask) == 1.0
    assert pointing_score(np.ones((2, 2)), mask) == pytest.approx(uniform_score(mask)) == 0.25
    assert pointing_score(np.ones((8, 8)), mask) == 0.25  # a map finer than the mask
    assert pointing_score(np.array([[3.0, 1.0], [0.0, 0.0]]), mask) == pytest.approx(0.75)
    # a 2x2 grid over a mask that fills half of the top-left cell
    half = np.zeros((4, 4), bool)
    half[0, :2] = True
    assert pointing_score(np.array([[1.0, 0.0], [0.0, 1.0]]), half) == pytest.approx(0.25)
    assert pointing_score(np.array([[2.0, -5.0], [0.0, 0.0]]), mask) == 1.0  # negatives clipped
    assert pointing_score(np.zeros((2, 2)), mask) == 0.25  # no mass: scored as uniform
    assert hit(np.array([[0.0, 1.0], [0.0, 0.0]]), mask) is False and hit(np.array([[2.0, 1.0], [0.0, 0.0]]), mask)
    # sizes that do not divide: 3 cells over 4 pixel rows, by area (cell 1 spans rows 4/3 to 8/3, half in the mask)
    odd = np.zeros((4, 4), bool)
    odd[:2] = True
    assert pointing_score(np.array([[1.0], [1.0], [1.0]]), odd) == pytest.approx((1 + 0.5 + 0) / 3)


def test_the_intensity_control_is_the_mean_brightness_per_cell():
    from mmfuse.explain.run import intensity_maps

    image = np.zeros((3, 4, 4), np.uint8)
    image[:, 0, 0] = 90
    image[0, 3, 3] = 30  # one channel of three
    got = intensity_maps([image], grid=2)
    assert got.shape == (1, 2, 2) and np.allclose(got[0], [[90 / 4, 0], [0, 10 / 4]])


def test_rank_correlation_is_spearmans_with_ties_and_zero_for_constant_maps():
    a = np.array([[1.0, 2.0], [2.0, 5.0]])
    b = np.array([[0.1, 0.3], [0.3, 0.2]])
    assert rank_correlation(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic)
    assert rank_correlation(a, a * 3 + 1) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, np.ones((2, 2))) == 0.0


def test_randomized_copy_redraws_every_parameter_and_leaves_the_original():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Conv2d(1, 2, 3))
    model.extra = nn.Parameter(torch.ones(5))  # no reset_parameters reaches it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = randomized_copy(model, seed=1), randomized_copy(model, seed=1)
    for name, p in a.named_parameters():
        assert not torch.equal(p, before[name]), name
        assert torch.equal(p, dict(b.named_parameters())[name])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    c = randomized_copy(model, seed=2)
    assert not torch.equal(c[0].weight, a[0].weight)


def test_object_masks_are_exactly_the_drawn_pixels(tmp_path):
    dm = ShapesDataModule(num_train=0, num_val=20, num_test=0, cache_dir=None)
    scenes, _, images = dm.rendered("val")
    image_index, texts, types = dm.pairs("val")
    masks = object_masks(dm, "val", list(range(6)))
    for p, by_word in enumerate(masks):
        scene, image = scenes[image_index[p]], images[image_index[p]].numpy().astype(int)
        words = texts[p].split()
        if types[p] == 0:  # a true caption: both objects named by colour and shape (words 1, 2, 8/6, 9/7)
            assert len(by_word) == 4
        for i, mask in by_word.items():
            obj = next(o for o in scene.objects if words[i] in (o.color, o.shape))
            colour = np.array(COLORS[obj.color])[:, None]
            inside = image[:, mask]
            assert np.abs(inside.mean(1) - colour[:, 0]).max() < 40  # the object's colour (jittered)
        union = np.logical_or.reduce(list(by_word.values())) if by_word else np.zeros((32, 32), bool)
        if types[p] == 0:
            assert image[:, ~union].mean() < 60  # the rest is the dark background
    assert word_masks(scenes[0], "a pink hexagon", 32) == {}
    assert object_masks(SimpleNamespace(), "val", [0]) is None


class GridEncoder(nn.Module):
    """Its last 4-D activation is the image itself (a 1x1 conv with identity weights), and it pools."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))

    def forward(self, x):
        grid = self.conv(x)
        return EncoderOutput(grid.amax((2, 3)), grid.flatten(2).transpose(1, 2), torch.ones(x.shape[0], 16, dtype=torch.bool))


class OneCellTask(nn.Module):
    """logit = 2 · (channel 0 of the grid cell (2, 1))."""

    def logits(self, model, batch):
        return 2 * model.encode("image", batch).tokens[:, 2 * 4 + 1, 0]


class StubModel(nn.Module):
    modalities = ("image",)

    def __init__(self):
        super().__init__()
        self.image_encoder = GridEncoder()

    @property
    def encoders(self):
        return {"image": self.image_encoder}

    def encode(self, modality, batch):
        return self.image_encoder(batch["image"])


def test_gradcam_of_a_logit_that_reads_one_cell_peaks_at_that_cell():
    image = torch.zeros(1, 2, 4, 4)
    image[0, 0] = 0.2  # channel 0 everywhere, brightest at the read cell
    image[0, 0, 2, 1] = 1.0
    image[0, 1] = 3.0  # channel 1: bright but never read
    module = SimpleNamespace(model=StubModel(), task=OneCellTask())
    cam = gradcam(module, {"image": image}, lambda m, b: m.task.logits(m.model, b))
    assert cam.shape == (1, 4, 4)
    assert torch.allclose(cam[0], image[0, 0] * 2 / 16)  # α_0 = 2/16, α_1 = 0
    assert int(cam[0].argmax()) == 2 * 4 + 1


class LinearText(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 3)
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))

    def forward(self, ids):
        return (self.embed(ids) * self.w).sum(-1)  # [B, T]: linear in the embeddings


def test_integrated_gradients_are_exact_for_a_model_linear_in_the_embeddings():
    text = LinearText()
    model = SimpleNamespace(encoders={"text": text})
    module = SimpleNamespace(model=model)
    ids = torch.tensor([[1, 4, 7]])
    explained = lambda m, b: (text(b["input_ids"]) * torch.tensor([1.0, 2.0, 3.0])).sum(-1) + 0.5  # noqa: E731
    ig, full, empty = integrated_gradients(module, {"input_ids": ids}, explained, steps=4)
    per_token = (text.embed(ids) * text.w).sum(-1).detach() * torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(ig, per_token, atol=1e-6)
    assert float(ig.sum()) == pytest.approx(float(full - empty), abs=1e-5)


def test_attention_maps_sum_to_one_over_real_image_tokens_and_recording_keeps_the_output():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion({"image": 6, "text": 5}, dim=8, heads=2, layers=2).eval()
    image_mask = torch.tensor([[True] * 7 + [False] * 2] * 2)
    text_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    inputs = {"image": EncoderOutput(torch.randn(2, 6), torch.randn(2, 9, 6), image_mask),
              "text": EncoderOutput(torch.randn(2, 5), torch.randn(2, 4, 5), text_mask)}
    plain = fusion(inputs)
    with recording_attention() as recorded:
        again = fusion(inputs)
    assert torch.equal(fusion(inputs), plain)
    assert torch.allclose(again, plain, atol=1e-6)
    module = SimpleNamespace(model=SimpleNamespace(fusion=fusion, __call__=None))
    module.model = type("M", (), {"fusion": fusion, "__call__": lambda self, batch: fusion(inputs)})()
    weights = attention_maps(module, {})
    assert weights.shape == (2, 2, 2, 4, 9) and len(recorded) == 2
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 2, 4))
    assert float(weights[..., 7:].abs().sum()) == 0  # padded image tokens get nothing
    assert torch.allclose(rollout(weights).sum(-1), torch.ones(2, 4))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain")
    ckpts = {}
    for fusion in ("cross_attention", "mul", "text_only"):
        cfg = compose_config(out / fusion, [*FAST, f"fusion={fusion}", "data.num_val=100"])
        train(cfg)
        ckpts[fusion] = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return out, ckpts


def test_a_fusion_that_ignores_the_image_gets_no_image_map(checkpoints):
    out, ckpts = checkpoints
    result = explain(compose_config(out / "x_text_only", [f"ckpt_path={ckpts['text_only']}", "n=2", "ig_steps=2"],
                                    "explain"))
    assert result["methods"]["gradcam"] == {"skipped": "TextOnly does not read the image"}
    assert "randomisation_spearman" in result["methods"]["ig"]


@pytest.mark.parametrize("fusion", ["cross_attention", "mul"])
def test_explain_writes_pngs_an_index_and_the_checks(checkpoints, fusion):
    out, ckpts = checkpoints
    cfg = compose_config(out / f"x_{fusion}", [f"ckpt_path={ckpts[fusion]}", "n=3", "ig_steps=4"], "explain")
    result = explain(cfg)
    run_dir = Path(cfg.paths.output_dir)
    saved = json.loads((run_dir / "explain.json").read_text())
    assert saved["n"] == 3 and saved["fusion"] == fusion and saved["task"] == "itm"
    drawn = ["attention", "gradcam", "ig", "intensity"] if fusion == "cross_attention" else ["gradcam", "ig", "intensity"]
    for method in drawn:
        assert sorted(p.name for p in run_dir.glob(f"{method}_*.png")) == [f"{method}_{k:03d}.png" for k in range(3)]
        assert -1 <= saved["methods"][method]["randomisation_spearman"] <= 1
    if fusion == "mul":
        assert "no text-to-image attention" in saved["methods"]["attention"]["skipped"]
    page = (run_dir / "index.html").read_text()
    assert all(f'src="{s["pngs"][m]}"' in page for s in saved["samples"] for m in drawn)
    assert all(s["label"] == 1.0 for s in saved["samples"])  # positives only
    gc = saved["methods"]["gradcam"]
    assert gc["pointed"] == 3 and 0 <= gc["pointing"] <= 1 and 0 < gc["uniform"] < 1
    if fusion == "cross_attention":
        assert saved["methods"]["attention"]["pointed"] == 3 * 4  # colour + shape of both objects
        raw = np.load(run_dir / "attention_000.npy")  # [layers, heads, text tokens, image tokens]
        assert raw.shape[:2] == (2, 4) and raw.shape[3] == 64
        assert np.allclose(raw.sum(-1), 1, atol=1e-5)
    assert result["methods"] == saved["methods"]
    control = saved["methods"]["intensity"]  # the same map whatever the weights: the check must fail it
    assert control["randomisation_spearman"] == pytest.approx(1.0) and control["randomisation"] == "FAIL"


@pytest.mark.slow
def test_the_command_line_reads_the_checkpoints_groups(checkpoints, tmp_path):
    import os
    import subprocess
    import sys

    _, ckpts = checkpoints
    out = tmp_path / "cli"
    env = {**os.environ, "MMFUSE_OUTPUTS": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mmfuse.explain", f"ckpt_path={ckpts['mul']}", "n=2",
                           "methods=[gradcam]", f"out={out}"], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((out / "explain.json").read_text())
    assert saved["n"] == 2 and list(saved["methods"]) == ["gradcam"] and (out / "gradcam_001.png").is_file()
    bad = subprocess.run([sys.executable, "-m", "mmfuse.explain", f"ckpt_path={ckpts['mul']}", "methods=[lime]",
                          f"out={out}"], cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "methods=['lime']" in bad.stderr


def test_the_explain_report_aggregates_runs_exactly(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("explain_report", Path(__file__).parents[1] / "experiments" / "explain" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    for k, (p, rho) in enumerate([(0.5, 0.1), (0.3, 0.7)]):
        d = tmp_path / str(k)
        d.mkdir()
        (d / "explain.json").write_text(json.dumps({"fusion": "mul", "methods": {
            "gradcam": {"pointing": p, "uniform": 0.2, "pointed": 3, "randomisation_spearman": rho},
            "attention": {"skipped": "no attention"}}}))
    text, rows = report.table(report.collect([str(tmp_path)]))
    assert text.splitlines()[2] == ("| `mul` | gradcam | 2 | 0.400 ± 0.141 | 0.200 ± 0.000 | 0.200 ± 0.141 | 0.400 ± 0.424 "
                                    "| PASS |")
    assert len(rows) == 1 and rows[0]["gain"] == pytest.approx([0.3, 0.1])


def test_with_a_wandb_logger_the_pngs_go_to_wandb(checkpoints, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out, ckpts = checkpoints
    cfg = compose_config(out / "x_wandb", [f"ckpt_path={ckpts['mul']}", "n=2", "methods=[gradcam]", "logger=wandb"],
                         "explain")
    explain(cfg)
    media = list(Path(cfg.paths.output_dir).glob("wandb/offline-run-*/files/media/images/explain/gradcam_*.png"))
    assert len(media) == 2


class TanhText(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 3)
        self.w = nn.Parameter(torch.tensor([1.5, -2.0, 0.7]))


def test_integrated_gradients_complete_on_nonlinear_models():
    text = TanhText()
    module = SimpleNamespace(model=SimpleNamespace(encoders={"text": text}))
    ids = torch.tensor([[1, 4, 7]])
    # quadratic in the embeddings: the gradient is linear along the path, so the midpoint rule is exact
    quadratic = lambda m, b: ((text.embed(b["input_ids"]) * text.w).sum(-1) ** 2).sum(-1)  # noqa: E731
    ig, full, empty = integrated_gradients(module, {"input_ids": ids}, quadratic, steps=4)
    assert float(ig.sum()) == pytest.approx(float(full - empty), abs=1e-5) and float(full - empty) > 1
    saturating = lambda m, b: torch.tanh((text.embed(b["input_ids"]) * text.w).sum(-1) * 2).sum(-1) ** 2  # noqa: E731
    errors = {}
    for steps in (4, 16):
        ig, full, empty = integrated_gradients(module, {"input_ids": ids}, saturating, steps=steps)
        errors[steps] = abs(float(ig.sum() - (full - empty)))
    assert errors[16] < errors[4] / 10 and errors[16] < 0.03


def test_rollout_is_the_mean_over_layers_and_heads():
    weights = torch.zeros(1, 2, 2, 1, 2)
    weights[0, 0, 0, 0] = torch.tensor([1.0, 0.0])
    weights[0, 0, 1, 0] = torch.tensor([0.5, 0.5])
    weights[0, 1, 0, 0] = torch.tensor([0.0, 1.0])
    weights[0, 1, 1, 0] = torch.tensor([0.5, 0.5])
    assert torch.allclose(rollout(weights), torch.tensor([[[0.5, 0.5]]]))
    weights[0, 1] = torch.tensor([0.0, 1.0])
    assert torch.allclose(rollout(weights), torch.tensor([[[0.375, 0.625]]]))


def test_gradcam_on_a_torchvision_cnn_reaches_its_last_grid_through_the_pooled_vector():
    from mmfuse.encoders.torchvision_image import TorchvisionImageEncoder

    torch.manual_seed(0)
    encoder = TorchvisionImageEncoder("resnet18", pretrained=False, image_size=64).eval()

    class Model(nn.Module):
        modalities = ("image",)

        def __init__(self):
            super().__init__()
            self.image_encoder = encoder

        @property
        def encoders(self):
            return {"image": self.image_encoder}

        def encode(self, modality, batch):
            return self.image_encoder(batch["image"])

    class PooledTask(nn.Module):  # reads the pooled vector only, as a pooled fusion does
        def logits(self, model, batch):
            return model.encode("image", batch).pooled[:, :8].sum(-1)

    image = torch.rand(2, 3, 64, 64)
    cam = gradcam(SimpleNamespace(model=Model(), task=PooledTask()), {"image": image},
                  lambda m, b: m.task.logits(m.model, b))
    assert cam.shape == (2, 2, 2)  # resnet18's last stage: 64 px / 32
    assert float(cam.sum()) > 0
