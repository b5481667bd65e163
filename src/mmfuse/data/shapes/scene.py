"""Procedural scenes of coloured shapes and the captions that describe them.

A scene holds two objects with distinct colours and distinct shapes. Its caption names both objects and
the spatial relation between them: ``"a red circle to the left of a blue square"``. Relations are
decided by the dominant axis of the offset between the two centres (image y grows downwards)::

    dx, dy = B.x - A.x, B.y - A.y
    |dx| >= |dy|:  A is "left" of B if dx > 0 else "right"
    |dy| >  |dx|:  A is "above" B if dy > 0 else "below"

Everything is deterministic given a ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 70, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 50, 200),
    "white": (235, 235, 235),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
RELATION_PHRASES: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
FLIPPED: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    x: float  # centre, pixels
    y: float
    radius: float


@dataclass(frozen=True)
class Caption:
    """``a {color_a} {shape_a} {relation} a {color_b} {shape_b}``."""

    color_a: str
    shape_a: str
    relation: str
    color_b: str
    shape_b: str

    def text(self) -> str:
        phrase = RELATION_PHRASES[self.relation]
        return f"a {self.color_a} {self.shape_a} {phrase} a {self.color_b} {self.shape_b}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, Obj]


def relation_between(a: Obj, b: Obj) -> str:
    """The relation that holds for ``a`` with respect to ``b`` (see the module docstring)."""
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "left" if dx > 0 else "right"
    return "above" if dy > 0 else "below"


def find(scene: Scene, color: str, shape: str) -> Obj | None:
    for obj in scene.objects:
        if obj.color == color and obj.shape == shape:
            return obj
    return None


def caption_is_true(scene: Scene, caption: Caption) -> bool:
    """True when the scene has both named objects and the named relation holds between them."""
    a = find(scene, caption.color_a, caption.shape_a)
    b = find(scene, caption.color_b, caption.shape_b)
    if a is None or b is None or a is b:
        return False
    return relation_between(a, b) == caption.relation


def sample_scene(rng: np.random.Generator, image_size: int) -> Scene:
    """Two objects with distinct colours and shapes, separated clearly along one axis.

    The separation along the dominant axis exceeds the other axis by a margin, so that the relation is
    unambiguous to a viewer and survives the drawing's pixel rounding.
    """
    colors = rng.choice(len(COLORS), size=2, replace=False)
    shapes = rng.choice(len(SHAPES), size=2, replace=False)
    names = list(COLORS)
    radius_lo, radius_hi = 0.13 * image_size, 0.17 * image_size
    radii = rng.uniform(radius_lo, radius_hi, size=2)
    margin = 0.12 * image_size
    while True:
        lo = radius_hi + 1
        hi = image_size - radius_hi - 1
        xy = rng.uniform(lo, hi, size=(2, 2))
        d = np.abs(xy[1] - xy[0])
        major, minor = d.max(), d.min()
        if major >= radii.sum() + 1 and major - minor >= margin:
            break
    objs = tuple(
        Obj(names[colors[i]], SHAPES[shapes[i]], float(xy[i, 0]), float(xy[i, 1]), float(radii[i]))
        for i in range(2)
    )
    return Scene(objs)  # type: ignore[arg-type]


def describe(scene: Scene, rng: np.random.Generator) -> Caption:
    """A true caption; which object is mentioned first is random."""
    first = int(rng.integers(2))
    a, b = scene.objects[first], scene.objects[1 - first]
    return Caption(a.color, a.shape, relation_between(a, b), b.color, b.shape)


def shape_mask(shape: str, xs: np.ndarray, ys: np.ndarray, obj: Obj) -> np.ndarray:
    dx, dy, r = xs - obj.x, ys - obj.y, obj.radius
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":
        top, height = -r, 1.9 * r
        half_width = r * (dy - top) / height
        return (dy >= top) & (dy <= top + height) & (np.abs(dx) <= half_width)
    if shape == "cross":
        arm = 0.36 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def draw(scene: Scene, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Render to a ``uint8`` array ``[3, H, W]``: dark noisy background, jittered object colours."""
    grid = np.arange(image_size, dtype=np.float32) + 0.5
    xs, ys = np.meshgrid(grid, grid)
    img = rng.normal(30.0, 8.0, size=(image_size, image_size, 3))
    for obj in scene.objects:
        mask = shape_mask(obj.shape, xs, ys, obj)
        color = np.asarray(COLORS[obj.color], dtype=np.float64) + rng.normal(0, 12, size=3)
        img[mask] = color + rng.normal(0, 6, size=(int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def vocabulary() -> list[str]:
    """Every word a shapes caption can contain."""
    words = {"a"} | set(COLORS) | set(SHAPES)
    for phrase in RELATION_PHRASES.values():
        words |= set(phrase.split())
    return sorted(words)
