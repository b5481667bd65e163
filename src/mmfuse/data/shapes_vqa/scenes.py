"""Scenes of 2-4 coloured shapes for ``data=shapes_vqa``, placed by rejection sampling.

Objects reuse ``mmfuse.data.shapes.scene`` (``Obj``, ``COLORS``, ``SHAPES``, ``shape_mask``, ``draw``);
unlike ``data=shapes`` colours and shapes may repeat. Every shape fits in the axis-aligned box of side
``2 r`` around its centre, and two objects never overlap: their boxes are at least 1 px apart,
``max(|dx|, |dy|) >= r_a + r_b + 1``. Radii are drawn from ``[0.11, 0.14] * image_size``; centres keep
the box inside the image with 1 px to spare.

Relations follow ``scene.relation_between`` (dominant axis of the centre offset). Where a question
depends on a relation, every object is *clear* with respect to the reference object: the offset's major
axis exceeds the minor one by ``0.12 * image_size`` (``scene.sample_scene``'s margin), so no object sits
near a diagonal where a viewer could read either relation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mmfuse.data.shapes.scene import Obj, Scene, draw
from mmfuse.errors import MMFuseError

RADIUS = (0.11, 0.14)  # of image_size
MARGIN = 0.12          # of image_size: the relation margin of data=shapes
MAX_TRIES = 65536
BATCH = 64


def separated(xy: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Per candidate ``xy [..., n, 2]``: no two boxes overlap or touch (``max(|dx|, |dy|) >= r_a + r_b + 1``
    for every pair)."""
    gap = np.abs(xy[..., :, None, :] - xy[..., None, :, :]).max(-1)  # [..., n, n]
    need = radii[:, None] + radii[None, :] + 1
    off_diagonal = ~np.eye(len(radii), dtype=bool)
    return ((gap >= need) | ~off_diagonal).all(axis=(-1, -2))


def clear(a: np.ndarray, b: np.ndarray, image_size: int) -> bool:
    """The relation between centres ``a`` and ``b`` is unambiguous (major - minor axis >= the margin)."""
    d = np.abs(b - a)
    return bool(d.max() - d.min() >= MARGIN * image_size)


def place(rng: np.random.Generator, n: int, image_size: int,
          accept: Callable[[np.ndarray], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``[n, 2]`` and radii ``[n]`` of ``n`` separated objects for which ``accept(xy)`` holds."""
    radii = rng.uniform(RADIUS[0] * image_size, RADIUS[1] * image_size, size=n)
    lo, hi = RADIUS[1] * image_size + 1, image_size - RADIUS[1] * image_size - 1
    for _ in range(MAX_TRIES // BATCH):  # candidates drawn BATCH at a time, taken in order
        candidates = rng.uniform(lo, hi, size=(BATCH, n, 2))
        for xy in candidates[separated(candidates, radii)]:
            if accept is None or accept(xy):
                return xy, radii
    raise MMFuseError(f"data.image_size={image_size}: could not place {n} separated objects in {MAX_TRIES} tries; "
                      "Fix: use data.image_size >= 24")


def objects(attrs: Sequence[tuple[str, str]], xy: np.ndarray, radii: np.ndarray) -> tuple[Obj, ...]:
    return tuple(Obj(c, s, float(xy[i, 0]), float(xy[i, 1]), float(radii[i])) for i, (c, s) in enumerate(attrs))


def render(scenes: Sequence[tuple[Obj, ...]], image_size: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8 [n, 3, S, S]``: each scene drawn by ``data=shapes``' ``draw`` (noisy background and colours)."""
    if not scenes:
        return np.zeros((0, 3, image_size, image_size), np.uint8)
    return np.stack([draw(Scene(tuple(objs)), image_size, rng) for objs in scenes])  # type: ignore[arg-type]
