"""A small CNN for the embedded shapes data: fast on CPU, position-aware grid tokens."""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.encoders.base import Encoder
from mmfuse.encoders.transforms import ImageTransform
from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput


def conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyCNN(Encoder):
    """conv(5 -> w/2, stride 2) . conv(w/2 -> w, stride 2) . conv(w -> w), 3x3, BatchNorm + ReLU each.

    The input gets two coordinate channels (x, y in [-1, 1]) so that features know where they are.
    Tokens: the ``(H/4) x (W/4)`` grid cells plus a learned position embedding, ``[B, HW/16, w]``;
    pooled: the grid's channel-wise max (``pooling=max``: "is this feature anywhere in the image",
    which is what matching a caption to small objects needs) or mean (``pooling=mean``).
    """

    def __init__(
        self,
        width: int = 64,
        image_size: int = 32,
        pooling: str = "max",
        pretrained: bool | str = False,
        freeze: bool = False,
        trainable_last: int = 0,
        load_weights: bool = True,
    ) -> None:
        super().__init__(freeze=freeze, trainable_last=trainable_last)
        if image_size % 4:
            raise MMFuseError(f"encoder.image.image_size={image_size} must be a multiple of 4 for tiny_cnn")
        if pooling not in ("max", "mean"):
            raise MMFuseError(f"encoder.image.pooling={pooling!r}: expected 'max' or 'mean'")
        self.out_dim = width
        self.image_size = image_size
        self.pooling = pooling
        self.stages = nn.Sequential(
            conv_bn(5, width // 2, 2),
            conv_bn(width // 2, width, 2),
            conv_bn(width, width, 1),
        ).to(memory_format=torch.channels_last)
        grid = image_size // 4
        self.position = nn.Parameter(torch.zeros(1, grid * grid, width))
        nn.init.normal_(self.position, std=0.02)
        self.transform = ImageTransform(size=image_size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        self.load_own_weights(pretrained, load_weights, "encoder.image=tiny_cnn")
        self.apply_freeze()

    def blocks(self) -> list[nn.Module]:
        return list(self.stages)

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        b, _, h, w = images.shape
        ys = torch.linspace(-1, 1, h, device=images.device, dtype=images.dtype)
        xs = torch.linspace(-1, 1, w, device=images.device, dtype=images.dtype)
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), 0).expand(b, -1, -1, -1)
        x = torch.cat([images, coords], dim=1).contiguous(memory_format=torch.channels_last)
        grid = self.stages(x)
        pooled = grid.amax(dim=(2, 3)) if self.pooling == "max" else grid.mean(dim=(2, 3))
        tokens = grid.flatten(2).transpose(1, 2)
        if tokens.shape[1] != self.position.shape[1]:
            raise MMFuseError(
                f"tiny_cnn was built for {self.image_size}px images but got {h}x{w}; "
                "set encoder.image.image_size to the data's image size"
            )
        tokens = tokens + self.position
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(pooled, tokens, mask)
