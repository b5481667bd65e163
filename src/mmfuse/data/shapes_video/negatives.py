"""ITM negatives for shapes_video clips, each of a recorded type (``NEGATIVE_TYPES``).

- ``other``: the caption of another clip, redrawn until it is false for this clip;
- ``color``: one event's colour replaced by a colour absent from the clip;
- ``shape``: one event's shape replaced by a shape absent from the clip;
- ``direction``: one event's direction reversed (left <-> right, up <-> down);
- ``order``: the two events swapped ("the blue square moves up, then the red circle moves left").

Every negative caption is distributed exactly like a positive caption (uniform distinct colours,
uniform distinct shapes, independent uniform directions: each edit maps that distribution onto
itself), so no negative type can be recognised from the text alone; every clip appears once with its
caption and once with a negative, so neither from the video alone. ``other`` / ``color`` / ``shape``
can be solved from which colours and shapes appear; ``direction`` and ``order`` negatives describe a
clip with the same multiset of frames as the true one (``negative_clip``; see ``clip.py``), so they
need the order of the frames.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mmfuse.data.shapes.scene import COLORS, SHAPES
from mmfuse.data.shapes_video.clip import (
    REVERSED,
    Clip,
    ClipCaption,
    caption_is_true,
    describe,
    reversed_event,
    swapped,
)

NEGATIVE_TYPES: tuple[str, ...] = ("other", "color", "shape", "direction", "order")


def make_negative(
    kind: str,
    clip: Clip,
    caption: ClipCaption,
    other_captions: list[ClipCaption],
    rng: np.random.Generator,
) -> ClipCaption:
    """A caption of type ``kind`` that is false for ``clip`` (``caption`` is the clip's true one)."""
    if kind == "other":
        for _ in range(1000):
            candidate = other_captions[int(rng.integers(len(other_captions)))]
            if not caption_is_true(clip, candidate):
                return candidate
        raise RuntimeError("could not find another clip's caption that is false for this clip")
    if kind == "color":
        present = {caption.color_a, caption.color_b}
        new = str(rng.choice([c for c in COLORS if c not in present]))
        return replace(caption, **{"color_a" if rng.integers(2) == 0 else "color_b": new})
    if kind == "shape":
        present = {caption.shape_a, caption.shape_b}
        new = str(rng.choice([s for s in SHAPES if s not in present]))
        return replace(caption, **{"shape_a" if rng.integers(2) == 0 else "shape_b": new})
    if kind == "direction":
        which = "direction_a" if rng.integers(2) == 0 else "direction_b"
        return replace(caption, **{which: REVERSED[getattr(caption, which)]})
    if kind == "order":
        return ClipCaption(caption.color_b, caption.shape_b, caption.direction_b,
                           caption.color_a, caption.shape_a, caption.direction_a)
    raise ValueError(f"unknown negative type {kind!r}; expected one of {NEGATIVE_TYPES}")


def negative_clip(clip: Clip, negative: ClipCaption, frames: int, step: int) -> Clip | None:
    """The clip, made of ``clip``'s own frames reordered, that ``negative`` is true for: ``clip`` with
    one event time-reversed (a ``direction`` negative) or its halves swapped (an ``order`` negative);
    None for any other caption."""
    for candidate in (reversed_event(clip, 0, frames, step), reversed_event(clip, 1, frames, step), swapped(clip)):
        if describe(candidate) == negative:
            return candidate
    return None
