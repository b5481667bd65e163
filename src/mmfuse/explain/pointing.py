"""The pointing game: how much of a map's mass lies on the object a word names.

``pointing_score(heat, mask) = Σ_{p ∈ mask} up(heat)_p / Σ_p up(heat)_p``, with ``heat [h, w]`` clipped at 0 and
``up`` mapping the grid onto the ``H × W`` pixels by area: cell ``(r, c)`` covers the rectangle
``[r H/h, (r+1) H/h) × [c W/w, (c+1) W/w)`` and its mass is spread uniformly over that area, so a pixel that
a cell border cuts (``H % h != 0``) gets mass from both cells in proportion to its area in each; a map may be
coarser or finer than the mask. Equivalently, ``Σ_cells heat · (share of the cell's area inside the mask) /
Σ heat``. A uniform map therefore scores the mask's area share exactly (``uniform_score``), and an all-zero map
is scored as uniform. ``hit``: the classic game, whether the map's peak cell (the first, on ties) covers part of
the mask; a map without mass hits nothing.
"""

from __future__ import annotations

import numpy as np

from mmfuse.errors import MMFuseError


def coverage(n_pixels: int, n_cells: int) -> np.ndarray:
    """``[n_cells, n_pixels]``: the share of each cell's extent that lies on each pixel (rows sum to 1).

    In units of ``1 / n_cells`` pixel, cell ``c`` spans ``[c P, (c+1) P)`` and pixel ``i`` spans
    ``[i C, (i+1) C)`` (``P = n_pixels``, ``C = n_cells``), so the overlaps are exact integers.
    """
    c = np.arange(n_cells)[:, None]
    i = np.arange(n_pixels)[None, :]
    overlap = np.minimum((c + 1) * n_pixels, (i + 1) * n_cells) - np.maximum(c * n_pixels, i * n_cells)
    return np.clip(overlap, 0, None) / n_pixels


def inside_share(heat_shape: tuple[int, int], mask: np.ndarray) -> np.ndarray:
    """``[h, w]``: the share of each cell's area that lies inside ``mask``."""
    rows, cols = coverage(mask.shape[0], heat_shape[0]), coverage(mask.shape[1], heat_shape[1])
    return rows @ mask.astype(float) @ cols.T


def checked(heat: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heat, mask = np.asarray(heat, dtype=float), np.asarray(mask, dtype=bool)
    if heat.ndim != 2 or mask.ndim != 2 or 0 in heat.shape or 0 in mask.shape:
        raise MMFuseError(f"pointing: heat {heat.shape} and mask {mask.shape} must both be non-empty 2-D arrays")
    return np.clip(heat, 0, None), mask


def pointing_score(heat: np.ndarray, mask: np.ndarray) -> float:
    heat, mask = checked(heat, mask)
    if heat.sum() <= 0:
        return uniform_score(mask)
    return float((heat * inside_share(heat.shape, mask)).sum() / heat.sum())


def uniform_score(mask: np.ndarray) -> float:
    return float(np.asarray(mask, dtype=bool).mean())


def hit(heat: np.ndarray, mask: np.ndarray) -> bool:
    heat, mask = checked(heat, mask)
    if heat.max() <= 0:
        return False
    return bool(inside_share(heat.shape, mask).flat[int(np.argmax(heat))] > 0)
