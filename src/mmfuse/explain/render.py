"""PNG figures (image | heat map over it | the text with per-word weights) and the static index page."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``heat [h, w]`` to ``size`` by nearest cell (each pixel takes its cell's value, as the pointing game)."""
    rows = (np.arange(size[0]) * heat.shape[0]) // size[0]
    cols = (np.arange(size[1]) * heat.shape[1]) // size[1]
    return heat[rows[:, None], cols[None, :]]


def figure(path: Path, image: np.ndarray, heat: np.ndarray | None, words: list[str],
           weights: list[float] | None, title: str) -> None:
    """``image uint8 [3, H, W]``; ``heat [h, w]`` or None; ``weights`` one per word or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6, 3.4))
    rgb = image.transpose(1, 2, 0)
    axes[0].imshow(rgb)
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(rgb)
    if heat is not None:
        h = upsample(heat, rgb.shape[:2])
        axes[1].imshow(h / h.max() if h.max() > 0 else h, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axes[1].set_title(title, fontsize=8)
    for ax in axes:
        ax.axis("off")
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        scale = np.abs(w).max() or 1.0
        x = 0.02
        for word, v in zip(words, w, strict=True):
            colour = (1, 0, 0, min(1.0, abs(v) / scale)) if v >= 0 else (0, 0, 1, min(1.0, abs(v) / scale))
            text = fig.text(x, 0.04, word, fontsize=8, bbox={"facecolor": colour, "edgecolor": "none", "pad": 1})
            x += 0.012 * (len(word) + 1)
            del text
    else:
        fig.text(0.02, 0.04, " ".join(words), fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def word_figure(path: Path, image: np.ndarray, maps: list[tuple[str, np.ndarray | None]], title: str) -> None:
    """The image, then one panel per word with that word's map over the image (None: a word without tokens)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb = image.transpose(1, 2, 0)
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(1.6 * (len(maps) + 1), 2.0), squeeze=False)
    axes = axes[0]
    axes[0].imshow(rgb)
    axes[0].set_title(title, fontsize=6)
    for ax, (word, heat) in zip(axes[1:], maps, strict=True):
        ax.imshow(rgb)
        if heat is not None:
            h = upsample(heat, rgb.shape[:2])
            ax.imshow(h / h.max() if h.max() > 0 else h, cmap="jet", alpha=0.55, vmin=0, vmax=1)
        ax.set_title(word, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def index_page(path: Path, samples: list[dict[str, Any]], methods: list[str], title: str) -> None:
    head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    rows = []
    for s in samples:
        cells = "".join(f'<td><img src="{html.escape(s["pngs"][m])}" width="320"></td>' if m in s["pngs"] else "<td>-</td>"
                        for m in methods)
        rows.append(f"<tr><td>{s['index']}</td><td>{html.escape(s['text'])}</td><td>{s['label']}</td>"
                    f"<td>{s['target']:.3f}</td>{cells}</tr>")
    path.write_text(f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<h1>{html.escape(title)}</h1><table border='1'><tr><th>pair</th><th>text</th><th>label</th>"
                    f"<th>target</th>{head}</tr>{''.join(rows)}</table>\n")
