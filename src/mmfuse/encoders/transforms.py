"""Image preprocessing shared by encoders: ``uint8 [.., 3, H, W] -> float``, resized and normalised."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class ImageTransform:
    """``x -> (resize(x) / 255 - mean) / std``; works on one image ``[3, H, W]`` or a batch.

    ``size=None`` keeps the input size. Resizing is bilinear with antialiasing, to a square.
    """

    def __init__(self, size: int | None, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            batched = x.dim() == 4
            x = F.interpolate(x if batched else x[None], size=(self.size, self.size), mode="bilinear",
                              antialias=True, align_corners=False)
            x = x if batched else x[0]
        if images.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean.to(x.device)) / self.std.to(x.device)  # on the images' device (GPU decoding)

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
