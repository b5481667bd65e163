"""ITM negatives for shapes scenes, each of a recorded type.

Types (``NEGATIVE_TYPES``; index 0 is reserved for positives):

- ``other``: the caption of another scene, redrawn until it is false for this scene;
- ``color``: one object's colour replaced by a colour absent from the scene;
- ``shape``: one object's shape replaced by a shape absent from the scene;
- ``relation``: the relation flipped (left <-> right, above <-> below);
- ``binding``: the two objects' colours swapped (same words, wrong attribute-object binding).

Every negative caption is distributed exactly like a positive caption (uniform colours and shapes,
distinct within a caption, uniform relation), so no negative type can be recognised from the text
alone, and every image appears once with its caption and once with a negative, so neither from the
image alone. ``color`` / ``shape`` / ``other`` can be solved by checking which colours and shapes are
present; ``relation`` and ``binding`` need attributes bound to objects and their positions.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mmfuse.data.shapes.scene import COLORS, FLIPPED, SHAPES, Caption, Scene, caption_is_true

ITM_TYPES: tuple[str, ...] = ("positive", "other", "color", "shape", "relation", "binding")
NEGATIVE_TYPES: tuple[str, ...] = ITM_TYPES[1:]


def make_negative(
    kind: str,
    scene: Scene,
    caption: Caption,
    other_captions: list[Caption],
    rng: np.random.Generator,
) -> Caption:
    """A caption of type ``kind`` that is false for ``scene`` (``caption`` is the scene's true one)."""
    if kind == "other":
        for _ in range(1000):
            candidate = other_captions[int(rng.integers(len(other_captions)))]
            if not caption_is_true(scene, candidate):
                return candidate
        raise RuntimeError("could not find another scene's caption that is false for this scene")
    if kind == "color":
        present = {o.color for o in scene.objects}
        new = str(rng.choice([c for c in COLORS if c not in present]))
        which = "color_a" if rng.integers(2) == 0 else "color_b"
        return replace(caption, **{which: new})
    if kind == "shape":
        present = {o.shape for o in scene.objects}
        new = str(rng.choice([s for s in SHAPES if s not in present]))
        which = "shape_a" if rng.integers(2) == 0 else "shape_b"
        return replace(caption, **{which: new})
    if kind == "relation":
        return replace(caption, relation=FLIPPED[caption.relation])
    if kind == "binding":
        return replace(caption, color_a=caption.color_b, color_b=caption.color_a)
    raise ValueError(f"unknown negative type {kind!r}; expected one of {NEGATIVE_TYPES}")
