"""Scenes for ``data=shapes_dialog``: two or three objects with pairwise distinct colours and shapes.

Distinct colours and shapes make every "the <shape>" / "the <colour> object" name exactly one object,
and make any two objects give different answers to "what colour / shape is it?". The object count is 2
or 3 with probability 1/2 each; colours, shapes and the order of the objects are uniform. Objects do not
overlap (centre distance >= r_a + r_b + 1 pixel). Drawing reuses ``mmfuse.data.shapes.scene.draw``.
Everything is deterministic given a ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmfuse.data.shapes.scene import COLORS, SHAPES, Obj

COUNTS = (2, 3)


@dataclass(frozen=True)
class DialogScene:
    objects: tuple[Obj, ...]


def sample_scene(rng: np.random.Generator, image_size: int) -> DialogScene:
    """Two or three non-overlapping objects with distinct colours and distinct shapes."""
    n = int(rng.choice(COUNTS))
    colors = rng.choice(len(COLORS), size=n, replace=False)
    shapes = rng.choice(len(SHAPES), size=n, replace=False)
    names = list(COLORS)
    radius_lo, radius_hi = 0.11 * image_size, 0.15 * image_size
    radii = rng.uniform(radius_lo, radius_hi, size=n)
    lo, hi = radius_hi + 1, image_size - radius_hi - 1
    while True:
        xy = rng.uniform(lo, hi, size=(n, 2))
        if all(np.hypot(*(xy[i] - xy[j])) >= radii[i] + radii[j] + 1 for i in range(n) for j in range(i)):
            break
    return DialogScene(tuple(Obj(names[colors[i]], SHAPES[shapes[i]], float(xy[i, 0]), float(xy[i, 1]),
                                 float(radii[i])) for i in range(n)))
