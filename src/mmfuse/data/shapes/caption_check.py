"""The shapes caption grammar check: parse a generated caption and ground each attribute in the scene.

A shapes caption is ``a {color} {shape} {phrase} a {color} {shape}`` with ``phrase`` one of
``RELATION_PHRASES`` (``to the left of``, ``to the right of``, ``above``, ``below``). ``parse_caption``
accepts exactly that word sequence; it tolerates upper case, surrounding (and repeated) whitespace and one
trailing period (``"A red circle above a blue square ."``). Anything else is not grammatical.

``ground(scene, text)`` scores one caption against its scene, every value 0 or 1 unless noted, with
``(c1, s1)``, ``(c2, s2)`` the two mentions and ``A = find(scene, c1, s1)``, ``B = find(scene, c2, s2)``.
Colours and shapes are each unique within a scene (``sample_scene``), so "the object of shape s" and
"the object of colour c" are well defined::

    grammatical = the caption parses
    objects     = A and B exist and A is not B
    color       = mean over the mentions (c, s) of [the scene has an object of shape s and its colour is c]
    shape       = mean over the mentions (c, s) of [the scene has an object of colour c and its shape is s]
    color_named = mean over the mentions (c, s) of [some object of the scene has colour c]
    shape_named = mean over the mentions (c, s) of [some object of the scene has shape s]
    relation    = objects and relation_between(A, B) == the named relation
    correct     = caption_is_true(scene, caption)

``color``, ``shape``, ``color_named`` and ``shape_named`` take 0, 0.5 or 1. Because colours and shapes
are unique within a scene, ``color`` and ``shape`` are always equal: both are the share of mentions that
name an object of the scene (``find(scene, c, s)`` is not None), an attribute *bound to its object*.
``color_named`` / ``shape_named`` score each attribute on its own, so that with ``objects`` they separate
recognising colours or shapes from binding them: a binding error (``a blue circle ... a red square`` for
a red circle and a blue square) scores 0 on objects, color and shape but 1 on color_named and
shape_named. An unparseable caption scores 0 on every key. ``grounding_accuracy`` averages the keys over
captions as ``ground_<key>``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmfuse.data.shapes.scene import (
    COLORS,
    RELATION_PHRASES,
    SHAPES,
    Caption,
    Obj,
    Scene,
    caption_is_true,
    find,
    relation_between,
)

KEYS: tuple[str, ...] = ("grammatical", "objects", "color", "shape", "color_named", "shape_named", "relation",
                         "correct")
_PHRASE_TO_RELATION: dict[tuple[str, ...], str] = {tuple(p.split()): r for r, p in RELATION_PHRASES.items()}


def parse_caption(text: str) -> Caption | None:
    """The ``Caption`` a text states, or None when it does not follow the grammar exactly (see the module
    docstring for what is tolerated)."""
    words = text.strip().lower().split()
    if words and words[-1] == ".":
        words = words[:-1]
    elif words and words[-1].endswith(".") and len(words[-1]) > 1:
        words[-1] = words[-1][:-1]
    if len(words) < 7:  # a c s <phrase of >= 1 word> a c s
        return None
    first, last, phrase = words[:3], words[-3:], tuple(words[3:-3])
    relation = _PHRASE_TO_RELATION.get(phrase)
    if relation is None:
        return None
    for article, color, shape in (first, last):
        if article != "a" or color not in COLORS or shape not in SHAPES:
            return None
    return Caption(first[1], first[2], relation, last[1], last[2])


def _by_shape(scene: Scene, shape: str) -> Obj | None:
    return next((o for o in scene.objects if o.shape == shape), None)


def _by_color(scene: Scene, color: str) -> Obj | None:
    return next((o for o in scene.objects if o.color == color), None)


def ground(scene: Scene, text: str) -> dict[str, float]:
    """``{grammatical, objects, color, shape, color_named, shape_named, relation, correct}`` of one caption
    (module docstring)."""
    caption = parse_caption(text)
    if caption is None:
        return dict.fromkeys(KEYS, 0.0)
    mentions = ((caption.color_a, caption.shape_a), (caption.color_b, caption.shape_b))
    a = find(scene, caption.color_a, caption.shape_a)
    b = find(scene, caption.color_b, caption.shape_b)
    objects = a is not None and b is not None and a is not b
    color_hits = [(o := _by_shape(scene, s)) is not None and o.color == c for c, s in mentions]
    shape_hits = [(o := _by_color(scene, c)) is not None and o.shape == s for c, s in mentions]
    relation = objects and relation_between(a, b) == caption.relation  # type: ignore[arg-type]
    return {
        "grammatical": 1.0,
        "objects": float(objects),
        "color": sum(color_hits) / 2,
        "shape": sum(shape_hits) / 2,
        "color_named": sum(_by_color(scene, c) is not None for c, _ in mentions) / 2,
        "shape_named": sum(_by_shape(scene, s) is not None for _, s in mentions) / 2,
        "relation": float(relation),
        "correct": float(caption_is_true(scene, caption)),
    }


def grounding_accuracy(scenes: Sequence[Scene], texts: Sequence[str]) -> dict[str, float]:
    """``{ground_<key>: mean over the captions of ground(scene_i, text_i)[key]}`` (one caption per scene)."""
    if len(scenes) != len(texts):
        raise ValueError(f"grounding_accuracy: {len(scenes)} scenes but {len(texts)} captions")
    if not texts:
        raise ValueError("grounding_accuracy: no captions to score")
    totals = dict.fromkeys(KEYS, 0.0)
    for scene, text in zip(scenes, texts, strict=True):
        for key, value in ground(scene, text).items():
            totals[key] += value
    return {f"ground_{key}": value / len(texts) for key, value in totals.items()}


def scene_references(scene: Scene) -> list[str]:
    """The two true captions of a scene: ``scene.objects[0]`` first, then ``scene.objects[1]`` first
    (the relation is ``relation_between`` of the first-named object w.r.t. the other, i.e. flipped)."""
    out = []
    for a, b in (scene.objects, scene.objects[::-1]):
        out.append(Caption(a.color, a.shape, relation_between(a, b), b.color, b.shape).text())
    return out
