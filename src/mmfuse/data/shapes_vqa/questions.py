"""Questions of ``data=shapes_vqa``: the answer is drawn first, then a scene that makes it true.

Four question types, drawn uniformly; within a type each template and its slots uniformly:

- ``attribute``: ``what colour is the {shape}?`` (answer: one of the 6 colours) /
  ``what shape is the {colour} object?`` (one of the 4 shapes); the named object is the only one in
  the scene with that shape / colour;
- ``relation``: ``what is to the left of | to the right of | above | below the {shape}?`` (answer: one
  of the 3 other shapes); the reference is the only object of its shape, and exactly one other object
  stands in the relation to it (``scene.relation_between(obj, reference)``), every object clear of the
  diagonal (``scenes.clear``);
- ``count``: ``how many {shape}s are there?`` / ``how many {colour} objects are there?`` (answer: the
  digits ``0`` .. ``3``; digits, because the official answer processing maps ``two`` to ``2``);
- ``compare``: ``are the two shapes the same colour?`` / ``... the same shape?`` (``yes`` / ``no``) on
  a scene of exactly two objects.

Balance: the answer is uniform over the answers its question text allows (6 colours, 4 shapes, 3 shapes
other than the reference's, 4 counts, yes / no), independently of the text, and the scene is then
sampled to make it true: 2-4 objects (at least ``count`` for a count), distractors drawn uniformly among
the attributes that keep the answer true (repeats allowed). So a model that reads the question alone
is at chance on every question text (``question_prior`` measures it on the data).

``VOCABULARY`` (the classifier's classes, in this order): the colours, the shapes, ``0`` .. ``3``,
``yes``, ``no``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmfuse.data.shapes.scene import COLORS, RELATIONS, SHAPES, Obj, relation_between
from mmfuse.data.shapes_vqa.scenes import clear, objects, place

QUESTION_TYPES: tuple[str, ...] = ("attribute", "relation", "count", "compare")
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
COUNTS: tuple[str, ...] = ("0", "1", "2", "3")
VOCABULARY: tuple[str, ...] = (*COLOR_NAMES, *SHAPES, *COUNTS, "yes", "no")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
RELATION_WORDS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


@dataclass(frozen=True)
class Question:
    type: str    # one of QUESTION_TYPES
    text: str
    answer: str  # one of VOCABULARY


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _others(rng: np.random.Generator, k: int, colors: tuple[str, ...] | list[str],
            shapes: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    return [(_pick(rng, colors), _pick(rng, shapes)) for _ in range(k)]


def _attribute(rng: np.random.Generator, size: int) -> tuple[Question, tuple[Obj, ...]]:
    n = int(rng.integers(2, 5))
    if rng.integers(2) == 0:
        shape, answer = _pick(rng, SHAPES), _pick(rng, COLOR_NAMES)
        attrs = [(answer, shape), *_others(rng, n - 1, COLOR_NAMES, [s for s in SHAPES if s != shape])]
        text = f"what colour is the {shape}?"
    else:
        color, answer = _pick(rng, COLOR_NAMES), _pick(rng, SHAPES)
        attrs = [(color, answer), *_others(rng, n - 1, [c for c in COLOR_NAMES if c != color], SHAPES)]
        text = f"what shape is the {color} object?"
    return Question("attribute", text, answer), objects(attrs, *place(rng, n, size))


def _relation(rng: np.random.Generator, size: int) -> tuple[Question, tuple[Obj, ...]]:
    n = int(rng.integers(2, 5))
    relation, ref = _pick(rng, RELATIONS), _pick(rng, SHAPES)
    answer = _pick(rng, [s for s in SHAPES if s != ref])
    # object 0: the reference, 1: the answer, 2..: distractors (not of the reference's shape, not in the relation)
    attrs = [(_pick(rng, COLOR_NAMES), ref), (_pick(rng, COLOR_NAMES), answer),
             *_others(rng, n - 2, COLOR_NAMES, [s for s in SHAPES if s != ref])]

    def accept(xy: np.ndarray) -> bool:
        def rel(i: int) -> str:
            return relation_between(Obj("", "", *xy[i], 0.0), Obj("", "", *xy[0], 0.0))

        return (all(clear(xy[i], xy[0], size) for i in range(1, n)) and rel(1) == relation
                and all(rel(i) != relation for i in range(2, n)))

    text = f"what is {RELATION_WORDS[relation]} the {ref}?"
    return Question("relation", text, answer), objects(attrs, *place(rng, n, size, accept))


def _count(rng: np.random.Generator, size: int) -> tuple[Question, tuple[Obj, ...]]:
    k = int(rng.integers(len(COUNTS)))
    n = int(rng.integers(max(2, k), 5))
    if rng.integers(2) == 0:
        shape = _pick(rng, SHAPES)
        rest = [s for s in SHAPES if s != shape]
        attrs = [*_others(rng, k, COLOR_NAMES, [shape]), *_others(rng, n - k, COLOR_NAMES, rest)]
        text = f"how many {PLURAL[shape]} are there?"
    else:
        color = _pick(rng, COLOR_NAMES)
        rest = [c for c in COLOR_NAMES if c != color]
        attrs = [*_others(rng, k, [color], SHAPES), *_others(rng, n - k, rest, SHAPES)]
        text = f"how many {color} objects are there?"
    order = rng.permutation(n)  # the counted objects are not always drawn first
    return Question("count", text, COUNTS[k]), objects([attrs[i] for i in order], *place(rng, n, size))


def _compare(rng: np.random.Generator, size: int) -> tuple[Question, tuple[Obj, ...]]:
    attribute, same = ("colour", "shape")[int(rng.integers(2))], bool(rng.integers(2) == 0)
    values = COLOR_NAMES if attribute == "colour" else SHAPES
    first = _pick(rng, values)
    second = first if same else _pick(rng, [v for v in values if v != first])
    other = [_pick(rng, SHAPES if attribute == "colour" else COLOR_NAMES) for _ in range(2)]
    attrs = [(first, other[0]), (second, other[1])] if attribute == "colour" else [(other[0], first),
                                                                                    (other[1], second)]
    text = f"are the two shapes the same {attribute}?"
    return Question("compare", text, "yes" if same else "no"), objects(attrs, *place(rng, 2, size))


SAMPLERS = {"attribute": _attribute, "relation": _relation, "count": _count, "compare": _compare}


def sample(rng: np.random.Generator, image_size: int) -> tuple[Question, tuple[Obj, ...]]:
    """One question (type uniform), its answer, and a scene in which that answer is true."""
    return SAMPLERS[_pick(rng, QUESTION_TYPES)](rng, image_size)
