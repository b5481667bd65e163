"""The shapes caption grammar check: parsing, per-attribute grounding, its means, the true references."""

from __future__ import annotations

import numpy as np
import pytest

from mmfuse.data.shapes.caption_check import ground, grounding_accuracy, parse_caption, scene_references
from mmfuse.data.shapes.scene import Caption, Obj, Scene, caption_is_true, sample_scene

# a red circle to the left of a blue square (dx = 40 > |dy| = 5)
SCENE = Scene((Obj("red", "circle", 20.0, 30.0, 8.0), Obj("blue", "square", 60.0, 35.0, 8.0)))
# a green triangle above a yellow cross (dy = 30 > |dx| = 2)
SCENE2 = Scene((Obj("green", "triangle", 30.0, 10.0, 8.0), Obj("yellow", "cross", 32.0, 40.0, 8.0)))


def expected(grammatical, objects, color, shape, color_named, shape_named, relation, correct):
    return {"grammatical": grammatical, "objects": objects, "color": color, "shape": shape,
            "color_named": color_named, "shape_named": shape_named, "relation": relation, "correct": correct}


def test_parse_exact_tolerant_and_rejected():
    assert parse_caption("a red circle to the left of a blue square") == Caption("red", "circle", "left", "blue",
                                                                                   "square")
    assert parse_caption("  A Green Triangle ABOVE a yellow cross.  ") == Caption("green", "triangle", "above",
                                                                                   "yellow", "cross")
    assert parse_caption("a green triangle below a yellow cross .") == Caption("green", "triangle", "below",
                                                                               "yellow", "cross")
    for bad in ("", ".", "a red circle", "a red circle left of a blue square", "the red circle above a blue square",
                "a red circle above a blue square square", "a red circle above a blue", "a red circle above blue square",
                "a pink circle above a blue square", "a red oval above a blue square",
                "a red circle to the left a blue square", "a red circle above a blue square..",
                "a red circle above above a blue square", "a circle red above a blue square"):
        assert parse_caption(bad) is None, bad


@pytest.mark.parametrize(("text", "want"), [
    ("a red circle to the left of a blue square", expected(1, 1, 1, 1, 1, 1, 1, 1)),
    ("a blue square to the right of a red circle", expected(1, 1, 1, 1, 1, 1, 1, 1)),  # flipped phrasing: true
    ("a red circle above a blue square", expected(1, 1, 1, 1, 1, 1, 0, 0)),  # wrong relation
    ("a red circle to the right of a blue square", expected(1, 1, 1, 1, 1, 1, 0, 0)),
    ("a blue circle to the left of a red square", expected(1, 0, 0, 0, 1, 1, 0, 0)),  # colours swapped: binding error
    ("a green circle to the left of a blue square", expected(1, 0, 0.5, 0.5, 0.5, 1, 0, 0)),  # one colour wrong
    ("a red triangle to the left of a blue square", expected(1, 0, 0.5, 0.5, 1, 0.5, 0, 0)),  # one shape wrong
    ("a green triangle to the left of a yellow cross", expected(1, 0, 0, 0, 0, 0, 0, 0)),  # another scene's objects
    ("a green cross to the left of a red circle", expected(1, 0, 0.5, 0.5, 0.5, 0.5, 0, 0)),
    ("a red circle to the left of a red circle", expected(1, 0, 1, 1, 1, 1, 0, 0)),  # the same object twice
    ("a red circle to the right of a red circle", expected(1, 0, 1, 1, 1, 1, 0, 0)),  # relation_between(A, A) = right
    ("red circle left of blue square", expected(0, 0, 0, 0, 0, 0, 0, 0)),  # not grammatical
    ("A red circle to the left of a blue square.", expected(1, 1, 1, 1, 1, 1, 1, 1)),  # trailing period, case
])
def test_ground_on_a_hand_built_scene(text, want):
    assert ground(SCENE, text) == want


def test_grounding_accuracy_means():
    texts = ["a red circle to the left of a blue square", "a green circle to the left of a blue square",
             "a yellow cross below a green triangle", "nonsense"]
    got = grounding_accuracy([SCENE, SCENE, SCENE2, SCENE2], texts)
    assert got == {"ground_grammatical": 0.75, "ground_objects": 0.5, "ground_color": 0.625, "ground_shape": 0.625,
                   "ground_color_named": 0.625, "ground_shape_named": 0.75, "ground_relation": 0.5,
                   "ground_correct": 0.5}
    with pytest.raises(ValueError, match="2 scenes but 1 captions"):
        grounding_accuracy([SCENE, SCENE2], ["a red circle above a blue square"])


def test_scene_references_are_the_two_true_captions():
    assert scene_references(SCENE) == ["a red circle to the left of a blue square",
                                       "a blue square to the right of a red circle"]
    assert scene_references(SCENE2) == ["a green triangle above a yellow cross", "a yellow cross below a green triangle"]
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = sample_scene(rng, 64)
        refs = scene_references(scene)
        assert len(set(refs)) == 2
        for ref in refs:
            assert caption_is_true(scene, parse_caption(ref))
            assert ground(scene, ref) == expected(1, 1, 1, 1, 1, 1, 1, 1)
