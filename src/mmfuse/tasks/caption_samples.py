"""Qualitative captions: a PNG grid of images with their generated and reference captions, and the same as
a W&B table.

``caption_grid`` lays ``N`` images out in ``rows = ceil(N / cols)`` rows of ``cols = min(columns, N)``
cells; every cell is ``cell_inches = (w, h)`` inches, so the PNG is exactly
``round(cols * w * dpi) x round(rows * h * dpi)`` pixels (no tight bounding box). In a cell the image
fills ``image_box`` (the top ``IMAGE_HEIGHT`` of the cell, aspect kept, centred), and below it the
generated caption in bold, then up to ``max_references`` references, each word-wrapped to the cell's
width and cut to ``GENERATED_LINES`` / ``REFERENCE_LINES`` lines (an ellipsis marks a cut). The file is
written to a temporary file beside ``path`` and renamed onto ``path``: a reader never sees half a PNG,
and the name written is exactly ``path`` (no extension is added).

``wandb_caption_table`` logs one ``wandb.Table`` (columns ``image``, ``generated``, ``references``, the
references joined by ``" | "``) to every Lightning ``WandbLogger`` among the loggers; without one it
does nothing.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfuse.data.atomic import atomic_write_with

IMAGE_TOP = 0.03  # share of the cell's height above the image
IMAGE_HEIGHT = 0.55  # share of the cell's height the image box takes
IMAGE_WIDTH = 0.92  # share of the cell's width the image box takes (centred)
FONT_SIZE = 7.0  # points
GENERATED_LINES = 3
REFERENCE_LINES = 2
TABLE_COLUMNS = ("image", "generated", "references")


def _check(images: Sequence[torch.Tensor], generated: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if not (len(images) == len(generated) == len(references)):
        raise ValueError(f"caption samples: {len(images)} images, {len(generated)} generated captions and "
                         f"{len(references)} reference lists; expected one of each per sample")
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            what = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"caption samples: image {i} is {what}; expected a uint8 tensor [3, H, W]")


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.detach().cpu().permute(1, 2, 0).contiguous().numpy()


def image_box(row: int, col: int, rows: int, cols: int) -> tuple[float, float, float, float]:
    """``(left, bottom, width, height)`` in figure fractions of the image box of cell ``(row, col)``."""
    cell_w, cell_h = 1.0 / cols, 1.0 / rows
    left = (col + (1 - IMAGE_WIDTH) / 2) * cell_w
    bottom = 1.0 - (row + IMAGE_TOP + IMAGE_HEIGHT) * cell_h
    return left, bottom, IMAGE_WIDTH * cell_w, IMAGE_HEIGHT * cell_h


def _wrap(text: str, width: int, lines: int) -> str:
    wrapped = textwrap.wrap(" ".join(str(text).split()), width=width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: max(width - 1, 1)].rstrip() + "…"
    return "\n".join(wrapped)


def caption_grid(images: Sequence[torch.Tensor], generated: Sequence[str], references: Sequence[Sequence[str]],
                 path: str | Path, columns: int = 4, max_references: int = 2,
                 cell_inches: tuple[float, float] = (2.4, 3.2), dpi: int = 100) -> Path:
    """Draw the grid (module docstring) to ``path``; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _check(images, generated, references)
    if not images:
        raise ValueError("caption_grid: no samples to draw")
    if columns < 1 or max_references < 0:
        raise ValueError(f"caption_grid: columns={columns} must be >= 1 and max_references={max_references} >= 0")
    path = Path(path)
    cols = min(columns, len(images))
    rows = math.ceil(len(images) / cols)
    cell_w, cell_h = cell_inches
    chars = max(int(cell_w * IMAGE_WIDTH * 72 / (FONT_SIZE * 0.56)), 8)  # ~0.56 em per bold character
    fig = plt.figure(figsize=(cols * cell_w, rows * cell_h), dpi=dpi, facecolor="white")
    try:
        for i, (image, text, refs) in enumerate(zip(images, generated, references, strict=True)):
            row, col = divmod(i, cols)
            ax = fig.add_axes(image_box(row, col, rows, cols))
            ax.imshow(_hwc(image), interpolation="nearest")
            ax.set_axis_off()
            x = (col + (1 - IMAGE_WIDTH) / 2) / cols
            y = 1.0 - (row + IMAGE_TOP + IMAGE_HEIGHT + 0.02) / rows
            lines = [_wrap(text, chars, GENERATED_LINES)]
            fig.text(x, y, lines[0], fontsize=FONT_SIZE, fontweight="bold", va="top", ha="left")
            ref_text = "\n".join(_wrap(r, chars, REFERENCE_LINES) for r in list(refs)[:max_references])
            if ref_text:
                offset = (lines[0].count("\n") + 1.4) * FONT_SIZE * 1.25 / 72 / (rows * cell_h)
                fig.text(x, y - offset, ref_text, fontsize=FONT_SIZE, color="0.3", va="top", ha="left")
        atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=dpi, facecolor="white"))
    finally:
        plt.close(fig)
    return path


def wandb_caption_table(loggers: Sequence[Any], images: Sequence[torch.Tensor], generated: Sequence[str],
                        references: Sequence[Sequence[str]], key: str = "val/captions",
                        step: int | None = None) -> int:
    """Log the samples as a ``wandb.Table`` under ``key`` to every ``WandbLogger`` in ``loggers``; returns
    how many loggers got it (0: none is a ``WandbLogger``, nothing is imported from W&B)."""
    from lightning.pytorch.loggers import WandbLogger

    targets = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not targets:
        return 0
    _check(images, generated, references)
    import wandb

    for lg in targets:  # fresh wandb.Image objects per run: a media object belongs to the run it is logged to
        rows = [[wandb.Image(_hwc(image)), str(text), " | ".join(str(r) for r in refs)]
                for image, text, refs in zip(images, generated, references, strict=True)]
        lg.log_table(key=key, columns=list(TABLE_COLUMNS), data=rows, step=step)
    return len(targets)
