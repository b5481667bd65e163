"""The embedded shapes data: deterministic, captions true to the pixels, negatives false and typed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfuse.data.shapes.datamodule import ShapesDataModule, make_pairs, negative_weights, render_split
from mmfuse.data.shapes.negatives import NEGATIVE_TYPES, make_negative
from mmfuse.data.shapes.scene import (
    COLORS,
    FLIPPED,
    Caption,
    caption_is_true,
    describe,
    draw,
    relation_between,
    sample_scene,
    shape_mask,
)
from mmfuse.errors import MMFuseError
from mmfuse.types import PAIR_TYPES

SIZE = 32


def test_same_seed_same_data_other_seed_other_data():
    s1, c1, im1 = render_split("train", 50, SIZE, seed=3)
    s2, c2, im2 = render_split("train", 50, SIZE, seed=3)
    s3, _, im3 = render_split("train", 50, SIZE, seed=4)
    assert s1 == s2 and c1 == c2 and torch.equal(im1, im2)
    assert s1 != s3 and not torch.equal(im1, im3)
    _, _, val = render_split("val", 50, SIZE, seed=3)
    assert not torch.equal(im1, val), "splits must differ"


def nearest_color(rgb: np.ndarray) -> str:
    names = list(COLORS)
    d = [np.abs(rgb - np.array(COLORS[n])).sum() for n in names]
    return names[int(np.argmin(d))]


def test_colours_shapes_and_relations_named_are_the_ones_drawn():
    rng = np.random.default_rng(0)
    grid = np.arange(SIZE) + 0.5
    xs, ys = np.meshgrid(grid, grid)
    for _ in range(200):
        scene = sample_scene(rng, SIZE)
        image = draw(scene, SIZE, rng).transpose(1, 2, 0).astype(float)
        caption = describe(scene, rng)
        assert caption_is_true(scene, caption)
        centroids = {}
        for obj in scene.objects:
            mask = shape_mask(obj.shape, xs, ys, obj)
            assert mask.sum() >= 12, "every object is visible"
            assert nearest_color(image[mask].mean(0)) == obj.color
            # the pixels of that colour are where the object is: its centroid is the object's centre
            colored = np.array([nearest_color(p) == obj.color and p.sum() > 200 for p in image.reshape(-1, 3)])
            ys_c, xs_c = np.nonzero(colored.reshape(SIZE, SIZE))
            centroids[obj.color] = (xs_c.mean() + 0.5, ys_c.mean() + 0.5)
        # the relation read off the pixels agrees with the caption
        (ax, ay), (bx, by) = centroids[caption.color_a], centroids[caption.color_b]
        dx, dy = bx - ax, by - ay
        seen = ("left" if dx > 0 else "right") if abs(dx) >= abs(dy) else ("above" if dy > 0 else "below")
        assert seen == caption.relation, caption.text()


def test_shape_masks_differ():
    from mmfuse.data.shapes.scene import Obj

    grid = np.arange(SIZE) + 0.5
    xs, ys = np.meshgrid(grid, grid)
    masks = {s: shape_mask(s, xs, ys, Obj("red", s, 16, 16, 5)) for s in ("circle", "square", "triangle", "cross")}
    areas = {s: int(m.sum()) for s, m in masks.items()}
    assert areas["circle"] == pytest.approx(np.pi * 25, rel=0.15)
    assert areas["square"] == pytest.approx((2 * 0.85 * 5) ** 2, rel=0.25)
    assert areas["triangle"] < areas["square"] and areas["cross"] < areas["circle"]
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (masks[a] != masks[b]).sum() >= 8, (a, b)


def test_relation_is_the_dominant_axis():
    from mmfuse.data.shapes.scene import Obj

    a = Obj("red", "circle", 5, 10, 3)
    assert relation_between(a, Obj("blue", "square", 20, 14, 3)) == "left"
    assert relation_between(a, Obj("blue", "square", 1, 8, 3)) == "right"
    assert relation_between(a, Obj("blue", "square", 7, 25, 3)) == "above"
    assert relation_between(a, Obj("blue", "square", 3, 1, 3)) == "below"


@pytest.mark.parametrize("kind", NEGATIVE_TYPES)
def test_negatives_are_false_and_of_their_type(kind):
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng, SIZE) for _ in range(300)]
    captions = [describe(s, rng) for s in scenes]
    for scene, caption in zip(scenes, captions):
        neg = make_negative(kind, scene, caption, captions, rng)
        assert not caption_is_true(scene, neg), (kind, caption.text(), neg.text())
        colors = {o.color for o in scene.objects}
        shapes = {o.shape for o in scene.objects}
        if kind == "color":
            assert (neg.shape_a, neg.relation, neg.shape_b) == (caption.shape_a, caption.relation, caption.shape_b)
            assert len({neg.color_a, neg.color_b} - colors) == 1
        elif kind == "shape":
            assert (neg.color_a, neg.relation, neg.color_b) == (caption.color_a, caption.relation, caption.color_b)
            assert len({neg.shape_a, neg.shape_b} - shapes) == 1
        elif kind == "relation":
            assert neg.relation == FLIPPED[caption.relation]
        elif kind == "binding":
            assert {neg.color_a, neg.color_b} == colors and {neg.shape_a, neg.shape_b} == shapes
        # no negative repeats a colour or a shape: a repeated word would give the label away
        assert neg.color_a != neg.color_b and neg.shape_a != neg.shape_b


def test_pairs_one_positive_one_negative_per_image_and_mix_follows_weights():
    scenes, captions, _ = render_split("train", 3000, SIZE, seed=0)
    weights = negative_weights({"other": 1, "color": 1, "shape": 2})
    image_index, texts, types = make_pairs(scenes, captions, weights, seed=0, split="train")
    assert image_index[0::2] == image_index[1::2] == list(range(3000))
    assert all(t == 0 for t in types[0::2]) and all(t != 0 for t in types[1::2])
    counts = {PAIR_TYPES[t]: types[1::2].count(t) for t in set(types[1::2])}
    assert set(counts) == {"other", "color", "shape"}
    assert counts["shape"] / 3000 == pytest.approx(0.5, abs=0.04)
    assert counts["color"] / 3000 == pytest.approx(0.25, abs=0.04)


def test_bad_negative_mix_is_a_clear_error():
    with pytest.raises(MMFuseError, match="unknown types"):
        negative_weights({"colour": 1})
    with pytest.raises(MMFuseError, match="positive sum"):
        negative_weights({"color": 0})


def test_rendered_scenes_are_cached_and_a_damaged_cache_is_redrawn(tmp_path):
    dm = ShapesDataModule(num_train=40, num_val=0, num_test=0, cache_dir=str(tmp_path))
    _, _, images = dm.rendered("train")
    files = list(tmp_path.glob("train-*.pt"))
    assert len(files) == 1
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncate
    again = ShapesDataModule(num_train=40, num_val=0, num_test=0, cache_dir=str(tmp_path))
    assert torch.equal(again.rendered("train")[2], images)


def test_captions_carry_no_label_statistics():
    """Word counts of positive and negative captions match (a leak would show up here first)."""
    scenes, captions, _ = render_split("train", 6000, SIZE, seed=0)
    weights = negative_weights({t: 1 for t in NEGATIVE_TYPES})
    _, texts, types = make_pairs(scenes, captions, weights, seed=0, split="train")
    pos = [t for t, k in zip(texts, types) if k == 0]
    neg = [t for t, k in zip(texts, types) if k != 0]
    for word in list(COLORS) + ["circle", "square", "triangle", "cross", "left", "right", "above", "below"]:
        p = sum(word in t.split() for t in pos) / len(pos)
        n = sum(word in t.split() for t in neg) / len(neg)
        assert abs(p - n) < 0.035, (word, p, n)
    assert Caption("red", "circle", "left", "blue", "square").text() == "a red circle to the left of a blue square"
