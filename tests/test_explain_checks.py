"""The checks of an explanation, with exact values: the pointing game (``mmfuse.explain.pointing``), the
model-randomisation test (``mmfuse.explain.sanity``), the shapes object masks (``mmfuse.explain.shapes_masks``)
and the sweep report (``experiments/explain/report.py``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from mmfuse.data.shapes.datamodule import ShapesDataModule
from mmfuse.data.shapes.scene import COLORS, Obj, Scene, draw, shape_mask
from mmfuse.data.shapes_video.datamodule import ShapesVideoDataModule
from mmfuse.errors import MMFuseError
from mmfuse.explain.pointing import hit, pointing_score, uniform_score
from mmfuse.explain.sanity import RANDOMISATION_PASS, randomized_copy, rank_correlation
from mmfuse.explain.shapes_masks import object_masks, word_masks

ROOT = Path(__file__).resolve().parents[1]


def box(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


# --- the pointing game ---------------------------------------------------------------------------------------


def test_a_map_on_the_object_scores_one_and_a_flat_map_its_area_share():
    mask = box((32, 32), slice(8, 24), slice(4, 20))  # 16 x 16 pixels: cells 2..5 x 1..4 of an 8 x 8 grid
    assert pointing_score(mask.astype(float), mask) == 1.0
    heat = np.zeros((8, 8))
    heat[2:6, 1:5] = np.arange(1, 17).reshape(4, 4)  # mass only in cells fully inside the object
    assert pointing_score(heat, mask) == 1.0
    heat[1, 1] = 1.0  # a cell half inside (pixel rows 4..7, the object starts at row 8): no longer perfect
    assert pointing_score(heat, mask) == pytest.approx(136 / 137)
    assert uniform_score(mask) == 0.25
    for grid in [(8, 8), (32, 32), (7, 5), (3, 10), (64, 40)]:  # dividing, not dividing, finer than the mask
        assert pointing_score(np.full(grid, 2.5), mask) == pytest.approx(uniform_score(mask), abs=1e-12), grid
    circle = shape_mask("circle", *np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5), Obj("red", "circle", 11.3, 20.7, 5.1))
    assert pointing_score(np.ones((6, 6)), circle) == pytest.approx(circle.sum() / 1024, abs=1e-12)


def test_pointing_score_on_hand_made_grids():
    # 2 x 2 cells over 4 x 4 pixels: the top-left cell fully inside, the top-right 1 of its 4 pixels,
    # the bottom-left none, the bottom-right 2 of 4: (1·1 + 2·0.25 + 3·0 + 4·0.5) / 10
    mask = np.array([[1, 1, 0, 1],
                     [1, 1, 0, 0],
                     [0, 0, 1, 0],
                     [0, 0, 1, 0]], bool)
    assert pointing_score(np.array([[1.0, 2.0], [3.0, 4.0]]), mask) == pytest.approx(0.35)
    assert hit(np.array([[1.0, 2.0], [3.0, 4.0]]), mask) is True
    assert hit(np.array([[1.0, 2.0], [5.0, 4.0]]), mask) is False  # the peak cell has no mask pixel
    # 3 cells over 4 pixel rows, by area: cell 0 spans rows [0, 4/3), cell 1 [4/3, 8/3), cell 2 [8/3, 4);
    # rows 0 and 3 in the mask: cells 0 and 2 are 3/4 inside, cell 1 not at all
    rows = np.array([[1], [0], [0], [1]], bool)
    assert pointing_score(np.array([[3.0], [0.0], [1.0]]), rows) == pytest.approx(0.75)
    assert pointing_score(np.array([[0.0], [1.0], [0.0]]), rows) == 0.0
    assert hit(np.array([[0.0], [1.0], [0.0]]), rows) is False
    # a map finer than the mask: 8 x 8 cells over 4 x 4 pixels, four cells to a pixel
    fine = np.zeros((8, 8))
    fine[0, 0], fine[7, 7] = 3.0, 1.0  # pixel (0, 0) is in the mask, pixel (3, 3) is not
    assert pointing_score(fine, mask) == pytest.approx(0.75)


def test_negatives_are_clipped_and_a_map_without_mass_scores_as_uniform():
    mask = box((4, 4), slice(0, 2), slice(0, 2))
    assert pointing_score(np.array([[2.0, -5.0], [0.0, -1.0]]), mask) == 1.0
    assert pointing_score(np.array([[1.0, 1.0], [-2.0, 0.0]]), mask) == pytest.approx(0.5)
    assert pointing_score(np.zeros((2, 2)), mask) == 0.25
    assert pointing_score(-np.ones((2, 2)), mask) == 0.25
    assert hit(np.zeros((2, 2)), mask) is False and hit(-np.ones((2, 2)), mask) is False
    assert hit(np.array([[-1.0, 0.0], [0.0, 0.0]]), mask) is False  # the peak is a 0 outside the mask
    with pytest.raises(MMFuseError, match="2-D"):
        pointing_score(np.ones(4), mask)


# --- the randomisation check -----------------------------------------------------------------------------------


def test_rank_correlation_is_spearmans_rho_with_ties_averaged():
    a = np.array([1.0, 2.0, 2.0, 3.0])  # ranks 1, 2.5, 2.5, 4
    b = np.array([1.0, 3.0, 2.0, 4.0])
    assert rank_correlation(a, b) == pytest.approx(4.5 / np.sqrt(4.5 * 5.0))
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 4, size=(8, 8)).astype(float), rng.normal(size=(8, 8))  # many ties in x
        assert rank_correlation(x, y) == pytest.approx(spearmanr(x.ravel(), y.ravel()).statistic)
    assert rank_correlation(a.reshape(2, 2), b) == rank_correlation(a, b)  # over the flattened maps
    assert rank_correlation(a, np.exp(a)) == pytest.approx(1.0)
    assert rank_correlation(np.ones(4), b) == 0.0 and rank_correlation(a, np.zeros(4)) == 0.0
    with pytest.raises(MMFuseError, match="rank_correlation"):
        rank_correlation(a, np.ones(5))
    assert RANDOMISATION_PASS == 0.5


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.norm = nn.LayerNorm(6)  # left at ones and zeros: a reset would not change it
        self.embed = nn.Embedding(10, 6)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)  # has _reset_parameters only
        self.head = nn.Linear(6, 2)
        self.pos = nn.Parameter(torch.ones(3, 6))  # no reset reaches it
        self.register_buffer("ids", torch.arange(5))


def test_randomized_copy_redraws_every_parameter_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.bn.running_mean.fill_(3.0)
        model.bn.running_var.fill_(7.0)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    a = randomized_copy(model, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    b, c = randomized_copy(model, seed=1), randomized_copy(model, seed=2)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert type(a) is Net and [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in original.items()]
    for name, p in a.named_parameters():
        assert not torch.equal(p, original[name]), name
        assert torch.equal(p, dict(b.named_parameters())[name]), name
        assert not torch.equal(p, dict(c.named_parameters())[name]), name
    # the untouched ones drawn from N(0, 0.02²)
    assert float(a.pos.detach().abs().max()) < 0.1 and float(a.norm.weight.detach().abs().max()) < 0.1
    # BatchNorm's reset clears its statistics; other buffers are kept
    assert torch.equal(a.bn.running_mean, torch.zeros(4)) and torch.equal(a.bn.running_var, torch.ones(4))
    assert torch.equal(a.ids, torch.arange(5))
    # MultiheadAttention's in-projection gets its own (xavier) reset, not the fallback's N(0, 0.02²)
    assert float(a.attn.in_proj_weight.detach().std()) > 0.2


def test_the_fallback_draw_is_n_0_002():
    model = nn.Module()
    model.table = nn.Parameter(torch.zeros(200, 200))
    drawn = randomized_copy(model, seed=3).table.detach()
    assert abs(float(drawn.mean())) < 1e-3 and float(drawn.std()) == pytest.approx(0.02, rel=0.02)


# --- shapes object masks ---------------------------------------------------------------------------------------


class NoNoise:
    """A generator for ``draw`` whose every normal draw is its mean: background 30, objects their exact colour."""

    def normal(self, loc, scale, size=None):
        return np.full(size, float(loc)) if size is not None else float(loc)


def test_object_masks_are_exactly_the_pixels_draw_colours():
    dm = ShapesDataModule(num_train=0, num_val=12, num_test=0)
    scenes, _, images = dm.rendered("val")
    image_index, texts, types = dm.pairs("val")
    pairs = list(range(len(texts)))
    masks = object_masks(dm, "val", pairs)
    assert len(masks) == len(pairs) == 24
    for p, by_word in zip(pairs, masks, strict=True):
        scene, words = scenes[image_index[p]], texts[p].split()
        clean = draw(scene, 32, NoNoise())  # the same pixel grid as the dataset's image, without the noise
        for i, mask in by_word.items():
            assert mask.shape == (32, 32) and mask.dtype == bool
            obj = next(o for o in scene.objects if words[i] in (o.color, o.shape))
            colour = np.array(COLORS[obj.color], np.uint8)[:, None, None]
            assert np.array_equal((clean == colour).all(0), mask), (p, i)
        if types[p] == 0:  # a true caption names both objects by colour and by shape
            last = len(words) - 1
            assert sorted(by_word) == [1, 2, last - 1, last]
            assert np.array_equal(by_word[1], by_word[2]) and np.array_equal(by_word[last - 1], by_word[last])
            union = by_word[1] | by_word[last]
            assert np.array_equal(clean.max(0) > 30, union)
            real = images[image_index[p]].numpy()
            assert np.array_equal(real.max(0) > 110, union)  # the jittered image: bright exactly on the objects
    assert object_masks(dm, "val", [5, 0])[0].keys() == masks[5].keys()


def test_each_word_names_the_object_of_its_colour_or_shape_in_the_scene():
    red_circle, blue_square = Obj("red", "circle", 8.0, 16.0, 5.0), Obj("blue", "square", 24.0, 16.0, 5.0)
    scene = Scene((red_circle, blue_square))
    grid = np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5)
    circle, square = shape_mask("circle", *grid, red_circle), shape_mask("square", *grid, blue_square)

    def named(caption: str) -> dict[int, str]:
        out = {}
        for i, m in word_masks(scene, caption, 32).items():
            out[i] = "circle" if np.array_equal(m, circle) else "square" if np.array_equal(m, square) else "?"
        return out

    both = {1: "circle", 2: "circle", 8: "square", 9: "square"}
    assert named("a red circle to the left of a blue square") == both
    assert named("a red circle to the right of a blue square") == both  # relation: the same objects
    assert named("a green circle to the left of a blue square") == {2: "circle", 8: "square", 9: "square"}
    assert named("a red triangle to the left of a blue square") == {1: "circle", 8: "square", 9: "square"}
    assert named("a blue circle to the left of a red square") == {1: "square", 2: "circle", 8: "circle", 9: "square"}
    assert named("a blue square above a red circle") == {1: "square", 2: "square", 5: "circle", 6: "circle"}
    assert named("a green cross below a yellow triangle") == {}


def test_object_masks_on_the_diagnostic_mix_follow_the_word_rule():
    dm = ShapesDataModule(num_train=0, num_val=30, num_test=0,
                          negatives={t: 1.0 for t in ("other", "color", "shape", "relation", "binding")})
    scenes, _, _ = dm.rendered("val")
    image_index, texts, types = dm.pairs("val")
    assert set(types) == {0, 1, 2, 3, 4, 5}
    for p, by_word in enumerate(object_masks(dm, "val", list(range(len(texts))))):
        scene, words = scenes[image_index[p]], texts[p].split()
        present = {o.color for o in scene.objects} | {o.shape for o in scene.objects}
        assert sorted(by_word) == [i for i, w in enumerate(words) if w in present], texts[p]
        # relation and binding negatives name both objects by both words; colour and shape ones one word less
        assert len(by_word) == {0: 4, 2: 3, 3: 3, 4: 4, 5: 4}.get(types[p], len(by_word)), texts[p]


def test_object_masks_read_the_cache_and_the_built_split(tmp_path):
    fresh = object_masks(ShapesDataModule(num_train=0, num_val=8, num_test=0), "val", [0, 3, 7])
    for _ in range(2):  # the first draws and saves, the second loads the file
        cached = object_masks(ShapesDataModule(num_train=0, num_val=8, num_test=0, cache_dir=str(tmp_path)), "val", [0, 3, 7])
        assert [sorted(m) for m in cached] == [sorted(m) for m in fresh]
        assert all(np.array_equal(c[i], f[i]) for c, f in zip(cached, fresh, strict=True) for i in f)
    assert len(list(tmp_path.glob("val-*.pt"))) == 1
    # a curriculum's first stage (colour negatives) as the batches hold it, not the final mix (shape negatives)
    dm = ShapesDataModule(num_train=10, num_val=0, num_test=0, negatives={"shape": 1.0},
                          curriculum=[{"epochs": 1, "negatives": {"color": 1.0}}])
    dm._train_stage = dm.stage_at(0)
    dm.splits = {"train": dm.build_split("train")}
    built = dm.splits["train"]
    scenes = dm.rendered("train")[0]
    for p, by_word in enumerate(object_masks(dm, "train", list(range(20)))):
        text = built.texts[int(built.text_index[p])]
        expected = word_masks(scenes[int(built.image_index[p])], text, 32)
        assert sorted(by_word) == sorted(expected)
        if p % 2:  # a colour negative: one colour word names nothing, both shape words name their object
            assert len(by_word) == 3


def test_object_masks_are_none_for_other_datasets():
    assert object_masks(SimpleNamespace(rendered=None, pairs=None, image_size=32), "val", [0]) is None
    video = ShapesVideoDataModule(num_train=0, num_val=2, num_test=0)  # has rendered / pairs / image_size too
    assert object_masks(video, "val", [0, 1]) is None


# --- the sweep report ------------------------------------------------------------------------------------------


def load_report():
    spec = importlib.util.spec_from_file_location("explain_report", ROOT / "experiments" / "explain" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(root: Path, name: str, fusion: str, methods: dict) -> None:
    d = root / name / "explain"
    d.mkdir(parents=True)
    (d / "explain.json").write_text(json.dumps({"ckpt_path": f"{name}/checkpoints/last.ckpt", "fusion": fusion,
                                                "task": "itm", "n": 16, "split": "val", "methods": methods,
                                                "samples": []}))


def test_the_report_tables_each_fusion_and_method_over_the_seeds(tmp_path):
    sweep, other = tmp_path / "sweep", tmp_path / "other"
    for seed, (p, u, rho, ig) in enumerate([(0.30, 0.10, 0.2, 0.9), (0.50, 0.20, 0.4, 0.5), (0.40, 0.15, 0.3, 0.4)]):
        write_run(sweep, f"cross_{seed}", "cross_attention", {
            "gradcam": {"pointing": p, "uniform": u, "pointed": 16, "randomisation_spearman": rho},
            "attention": {"pointing": 0.1, "uniform": 0.1, "pointed": 32, "randomisation_spearman": 0.5},
            "ig": {"pointing": None, "uniform": None, "pointed": 0, "randomisation_spearman": ig}})
    write_run(other, "late_0", "late", {"gradcam": {"pointing": 0.2, "uniform": 0.1, "pointed": 16,
                                                    "randomisation_spearman": 0.1},
                                        "attention": {"skipped": "LateFusion has no attention"}})
    write_run(other, "late_1", "late", {"gradcam": {"pointing": 0.4, "uniform": 0.3, "pointed": 16,
                                                    "randomisation_spearman": 0.1},
                                        "attention": {"skipped": "LateFusion has no attention"},
                                        "lime": {"randomisation_spearman": 0.7}})
    report = load_report()
    out = tmp_path / "table"
    report.main([str(sweep), str(other), "--out", str(out)])
    lines = (out / "table.md").read_text().splitlines()
    assert lines[0] == "| fusion | method | runs | pointing | uniform map | pointing − uniform | randomisation ρ | check |"
    assert lines[2:] == [
        "| `cross_attention` | attention | 3 | 0.100 ± 0.000 | 0.100 ± 0.000 | 0.000 ± 0.000 | 0.500 ± 0.000 | FAIL |",
        "| `cross_attention` | gradcam | 3 | 0.400 ± 0.100 | 0.150 ± 0.050 | 0.250 ± 0.050 | 0.300 ± 0.100 | PASS |",
        "| `cross_attention` | ig | 3 | - | - | - | 0.600 ± 0.265 | FAIL |",
        "| `late` | gradcam | 2 | 0.300 ± 0.141 | 0.200 ± 0.141 | 0.100 ± 0.000 | 0.100 ± 0.000 | PASS |",
        "| `late` | lime | 1 | - | - | - | 0.700 | FAIL |",
    ]
    rows = json.loads((out / "table.json").read_text())
    assert [(r["fusion"], r["method"], r["runs"], r["randomisation"]) for r in rows] == [
        ("cross_attention", "attention", 3, "FAIL"), ("cross_attention", "gradcam", 3, "PASS"),
        ("cross_attention", "ig", 3, "FAIL"), ("late", "gradcam", 2, "PASS"), ("late", "lime", 1, "FAIL")]
    assert rows[1]["pointing"] == [0.3, 0.5, 0.4] and rows[1]["gain"] == pytest.approx([0.2, 0.3, 0.25])
    assert rows[2]["pointing"] == [] and rows[2]["spearman"] == [0.9, 0.5, 0.4]
    with pytest.raises(SystemExit, match="no explain.json"):
        report.main([str(tmp_path / "nothing"), "--out", str(out)])
