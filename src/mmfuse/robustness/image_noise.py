"""Image perturbations on ``uint8 [..., 3, H, W]`` pixels, before the encoder's transform.

Each ``f(image, level, rng) -> image`` is exactly the identity at ``level == 0``:
- ``gaussian``: ``clip(x + ε, 0, 255)``, ``ε ~ N(0, (255 · level)²)`` per pixel and channel, rounded;
- ``blur``: a Gaussian blur with ``σ = level · H`` pixels (a fraction of the image's height), reflect padding;
- ``occlusion``: a grey (128) square of side ``round(sqrt(level) · min(H, W))`` at a random position, so that
  it covers ``level`` of a square image's area;
- ``jpeg``: a JPEG round trip at quality ``round(100 · (1 − level))`` (at least 1): level 0 is not encoded.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch

from mmfuse.robustness.seeding import item_rng


def gaussian(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, 255.0 * level, size=image.shape)
    return np.clip(np.rint(image.astype(np.float64) + noise), 0, 255).astype(np.uint8)


def blur(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    sigma = level * image.shape[-2]
    radius = max(1, int(math.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    x = image.astype(np.float64)
    for axis in (-1, -2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect" if x.shape[axis] > radius else "edge")
        x = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), axis, padded)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def occlusion(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[-2:]
    side = min(h, w, int(round(math.sqrt(level) * min(h, w))))
    out = image.copy()
    if side:
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out[..., top:top + side, left:left + side] = 128
    return out


def jpeg(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    quality = max(1, int(round(100 * (1 - level))))
    buffer = io.BytesIO()
    Image.fromarray(image.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB")).transpose(2, 0, 1).copy()


IMAGE_NOISE: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "gaussian": gaussian, "blur": blur, "occlusion": occlusion, "jpeg": jpeg}


def perturb_images(images: torch.Tensor, kind: str, level: float, seed: int) -> torch.Tensor:
    """``images`` (``uint8 [3, H, W]`` or ``[..., 3, H, W]``: a batch, or a clip's frames) perturbed one
    image at a time, each with the generator of ``item_rng(seed, level, its bytes)``; the input itself when
    ``level == 0``."""
    if level == 0:
        return images
    flat = images.reshape(-1, *images.shape[-3:]).cpu().numpy()
    noisy = [IMAGE_NOISE[kind](img, level, item_rng(seed, level, img.tobytes())) for img in flat]
    return torch.from_numpy(np.stack(noisy)).reshape(images.shape).to(images.device)
