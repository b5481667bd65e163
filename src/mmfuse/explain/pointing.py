"""The pointing game: how much of a map's mass lies on the object a word names.

``pointing_score(heat, mask) = Σ_{p ∈ mask} up(heat)_p / Σ_p up(heat)_p``, with ``heat [h, w]`` clipped at 0 and
``up`` spreading each cell's mass uniformly over the pixels it covers (pixel ``(i, j)`` of an ``H × W`` mask
lies in cell ``(⌊i h / H⌋, ⌊j w / W⌋)``, so sizes need not divide; the map is not finer than the mask); equivalently, each cell's mass times the
share of its pixels inside the mask. A uniform map scores the mask's area share (``uniform_score``); an
all-zero map is scored as uniform. ``hit``: the classic game, whether the map's peak cell covers a mask pixel.
"""

from __future__ import annotations

import numpy as np


def cell_of(n_pixels: int, n_cells: int) -> np.ndarray:
    return (np.arange(n_pixels) * n_cells) // n_pixels


def cell_shares(mask: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(inside [h, w], pixels [h, w])``: per cell, the mask pixels it covers and all the pixels it covers."""
    h, w = shape
    rows, cols = cell_of(mask.shape[0], h), cell_of(mask.shape[1], w)
    inside = np.zeros((h, w))
    pixels = np.zeros((h, w))
    np.add.at(inside, (rows[:, None], cols[None, :]), mask.astype(float))
    np.add.at(pixels, (rows[:, None], cols[None, :]), 1.0)
    return inside, pixels


def pointing_score(heat: np.ndarray, mask: np.ndarray) -> float:
    heat = np.clip(np.asarray(heat, dtype=float), 0, None)
    mask = np.asarray(mask, dtype=bool)
    if heat.shape[0] > mask.shape[0] or heat.shape[1] > mask.shape[1]:
        raise ValueError(f"a {heat.shape} map is finer than its {mask.shape} mask")
    if heat.sum() <= 0:
        return uniform_score(mask)
    inside, pixels = cell_shares(mask, heat.shape)
    return float((heat * inside / pixels).sum() / heat.sum())


def uniform_score(mask: np.ndarray) -> float:
    return float(np.asarray(mask, dtype=bool).mean())


def hit(heat: np.ndarray, mask: np.ndarray) -> bool:
    heat = np.asarray(heat, dtype=float)
    inside, _ = cell_shares(np.asarray(mask, dtype=bool), heat.shape)
    return bool(inside.flat[int(np.argmax(heat))] > 0)
