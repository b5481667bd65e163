"""Procedural clips of two coloured shapes that move one after the other, and their captions.

A clip has ``frames`` frames (even, >= 4) of ``image_size`` pixels and two EVENTS: object A moves in
a direction (``left | right | up | down``; image y grows downwards) during the first ``h = frames / 2``
frames, then object B moves during the last ``h``. The two objects have distinct colours and distinct
shapes (``COLORS`` / ``SHAPES`` / ``shape_mask`` of ``data.shapes``). Its caption names them in that
order: ``"the red circle moves left, then the blue square moves up"``.

Motion: an object moves ``step`` pixels per frame (``default_step``: 2 px at 32 px), its centre in
frame ``k`` of its event is ``start + k * step * MOTION[direction]``, exactly (integer steps, so the
drawn shape is translated pixel for pixel). Start positions are drawn so that the object stays whole
inside the frame for the whole event.

Each object is visible ONLY during its own event (A in the first half, B in the second), and a frame
is a pure function of (the clip's static background, the visible object, its position): the
background noise and each colour's jitter are drawn once per clip, never per frame. Hence:

- ``direction`` negatives: time-reversing A's half is the clip of "A moves <reversed direction>"
  (``reversed_event``): the SAME multiset of frames, in another order;
- ``order`` negatives: swapping the halves is the clip of "B moves ..., then A moves ..."
  (``swapped``): again the same multiset of frames.

So no model that ignores frame order (mean / max pooling over per-frame features, any function of the
set of frames) can tell those captions from the true one: direction and order need time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mmfuse.data.shapes.scene import COLORS, SHAPES, Obj, shape_mask
from mmfuse.errors import MMFuseError

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
REVERSED: dict[str, str] = {"left": "right", "right": "left", "up": "down", "down": "up"}
MOTION: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
RADIUS = (0.13, 0.17)  # object radius range, as a fraction of image_size (as data.shapes)


@dataclass(frozen=True)
class Event:
    """One object and its motion: centre ``(x, y)`` (pixels) in the event's first frame."""

    color: str
    shape: str
    direction: str
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class Clip:
    """Two events: ``events[0]`` fills the first half of the frames, ``events[1]`` the second."""

    events: tuple[Event, Event]


@dataclass(frozen=True)
class ClipCaption:
    """``the {color_a} {shape_a} moves {direction_a}, then the {color_b} {shape_b} moves {direction_b}``."""

    color_a: str
    shape_a: str
    direction_a: str
    color_b: str
    shape_b: str
    direction_b: str

    def text(self) -> str:
        return (f"the {self.color_a} {self.shape_a} moves {self.direction_a}, "
                f"then the {self.color_b} {self.shape_b} moves {self.direction_b}")


def default_step(image_size: int) -> int:
    """Pixels per frame: ``max(1, round(image_size / 16))`` (2 at 32 px: 6 px over a 4-frame event)."""
    return max(1, round(image_size / 16))


def start_range(image_size: int) -> tuple[int, int]:
    """Pixel indices ``[lo, hi]`` where a centre (at the pixel's middle) keeps any object whole."""
    r_max = RADIUS[1] * image_size
    return int(np.ceil(r_max)), int(np.floor(image_size - r_max - 1))


def check_geometry(frames: int, image_size: int, step: int) -> None:
    """MMFuseError unless ``frames`` is even and >= 4 and an event's travel fits in the frame."""
    if frames < 4 or frames % 2:
        raise MMFuseError(f"data.frames={frames}: needs an even number >= 4 (two events of frames/2 frames "
                          "each, at least 2 frames to show motion). Fix: e.g. data.frames=8")
    lo, hi = start_range(image_size)
    travel = (frames // 2 - 1) * step
    if hi - lo < travel:
        raise MMFuseError(f"data.frames={frames} at data.image_size={image_size}: an object moving {step} px "
                          f"per frame for {frames // 2} frames leaves the frame. Fix: fewer frames, a smaller "
                          "data.step or a larger data.image_size")


def positions(event: Event, n: int, step: int) -> list[tuple[float, float]]:
    """The object's centre in each of the ``n`` frames of its event."""
    dx, dy = MOTION[event.direction]
    return [(event.x + k * step * dx, event.y + k * step * dy) for k in range(n)]


def sample_event(rng: np.random.Generator, color: str, shape: str, direction: str, image_size: int,
                 n: int, step: int) -> Event:
    """An event of ``n`` frames whose start is uniform over the pixels that keep the object in frame."""
    lo, hi = start_range(image_size)
    travel = (n - 1) * step
    dx, dy = MOTION[direction]
    start = []
    for d in (dx, dy):
        low, high = (lo + travel, hi) if d < 0 else (lo, hi - travel) if d > 0 else (lo, hi)
        start.append(int(rng.integers(low, high + 1)) + 0.5)
    radius = float(rng.uniform(*RADIUS) * image_size)
    return Event(color, shape, direction, start[0], start[1], radius)


def sample_clip(rng: np.random.Generator, image_size: int, frames: int, step: int | None = None) -> Clip:
    """Two events: distinct colours, distinct shapes, independent uniform directions."""
    step = default_step(image_size) if step is None else step
    check_geometry(frames, image_size, step)
    names = list(COLORS)
    colors = rng.choice(len(names), size=2, replace=False)
    shapes = rng.choice(len(SHAPES), size=2, replace=False)
    directions = rng.integers(len(DIRECTIONS), size=2)
    events = tuple(sample_event(rng, names[colors[i]], SHAPES[shapes[i]], DIRECTIONS[directions[i]],
                                image_size, frames // 2, step) for i in range(2))
    return Clip(events)  # type: ignore[arg-type]


def describe(clip: Clip) -> ClipCaption:
    """The true caption: the events in their order."""
    a, b = clip.events
    return ClipCaption(a.color, a.shape, a.direction, b.color, b.shape, b.direction)


def caption_is_true(clip: Clip, caption: ClipCaption) -> bool:
    return describe(clip) == caption


def reversed_event(clip: Clip, which: int, frames: int, step: int) -> Clip:
    """The clip whose event ``which`` runs backwards: it starts where it ended, in the opposite direction."""
    event = clip.events[which]
    x, y = positions(event, frames // 2, step)[-1]
    events = list(clip.events)
    events[which] = replace(event, direction=REVERSED[event.direction], x=x, y=y)
    return Clip(tuple(events))  # type: ignore[arg-type]


def swapped(clip: Clip) -> Clip:
    """The clip with its two events in the other order."""
    return Clip(clip.events[::-1])


def draw_clip(clip: Clip, image_size: int, frames: int, rng: np.random.Generator,
              step: int | None = None) -> np.ndarray:
    """Render to ``uint8 [frames, 3, H, W]``: a static noisy background, one object per frame.

    The background (``N(30, 8)`` per pixel and channel) and one colour jitter per entry of ``COLORS``
    (``N(0, 12)`` per channel, drawn in ``COLORS`` order whatever the clip holds) are drawn once, so a
    frame depends only on which object is where (see the module docstring).
    """
    step = default_step(image_size) if step is None else step
    grid = np.arange(image_size, dtype=np.float32) + 0.5
    xs, ys = np.meshgrid(grid, grid)
    background = np.clip(rng.normal(30.0, 8.0, size=(image_size, image_size, 3)), 0, 255).astype(np.uint8)
    jitter = dict(zip(COLORS, rng.normal(0, 12, size=(len(COLORS), 3)), strict=True))
    n = frames // 2
    out = np.empty((frames, image_size, image_size, 3), np.uint8)
    for i, event in enumerate(clip.events):
        color = np.clip(np.asarray(COLORS[event.color], np.float64) + jitter[event.color], 0, 255).astype(np.uint8)
        for k, (x, y) in enumerate(positions(event, n, step)):
            frame = background.copy()
            frame[shape_mask(event.shape, xs, ys, Obj(event.color, event.shape, x, y, event.radius))] = color
            out[i * n + k] = frame
    return out.transpose(0, 3, 1, 2)


def vocabulary() -> list[str]:
    """Every word a caption can contain (``"then"`` written with its comma as ``"left,"`` in text)."""
    return sorted({"the", "moves", "then"} | set(COLORS) | set(SHAPES) | set(DIRECTIONS))
