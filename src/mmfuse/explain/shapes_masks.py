"""The pixels of the object each word of a shapes caption names (``data=shapes``, ``shapes_diagnostic``).

A caption's words are ``split()`` on whitespace (``"a red circle to the left of a blue square"``: words 1, 2
name the red circle, 8, 9 the blue square). A colour word names the scene's object of that colour, a shape
word the object of that shape (colours and shapes are distinct within a scene); a word whose colour or shape
is not in the scene (a negative caption's) names nothing. The mask is ``shape_mask`` on the pixel grid
``draw`` uses, so it is exactly the pixels drawn in the object's colour (the two objects never overlap).
Pair ``p`` is the ``p``-th pair of the split as built (``datamodule.splits[split]`` once set up, else
``datamodule.pairs(split)``, the same order), its image ``image_index[p]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmfuse.data.shapes.datamodule import ShapesDataModule
from mmfuse.data.shapes.scene import COLORS, SHAPES, Scene, shape_mask


def scene_masks(scene: Scene, image_size: int) -> list[np.ndarray]:
    grid = np.arange(image_size, dtype=np.float32) + 0.5
    xs, ys = np.meshgrid(grid, grid)
    return [shape_mask(obj.shape, xs, ys, obj) for obj in scene.objects]


def word_masks(scene: Scene, caption: str, image_size: int) -> dict[int, np.ndarray]:
    masks = scene_masks(scene, image_size)
    out = {}
    for i, word in enumerate(caption.split()):
        for obj, mask in zip(scene.objects, masks, strict=True):
            if (word in COLORS and obj.color == word) or (word in SHAPES and obj.shape == word):
                out[i] = mask
    return out


def object_masks(datamodule: Any, split: str, pair_indices: list[int]) -> list[dict[int, np.ndarray]] | None:
    """Per pair, ``{word index: bool mask [H, W]}``; None for a datamodule that is not ``data=shapes``'s."""
    if not isinstance(datamodule, ShapesDataModule):
        return None
    scenes = datamodule.rendered(split)[0]
    built = (getattr(datamodule, "splits", None) or {}).get(split)
    # once built, the split holds a curriculum's current training stage, which pairs("train") does not
    if hasattr(built, "image_index") and getattr(built, "texts", None) is not None:
        image_index = built.image_index.tolist()
        texts = [built.texts[int(t)] for t in built.text_index]
    else:
        image_index, texts, _ = datamodule.pairs(split)
    return [word_masks(scenes[image_index[p]], texts[p], datamodule.image_size) for p in pair_indices]
