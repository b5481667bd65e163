"""Image encoders from torchvision (ResNet, MobileNet, EfficientNet, ConvNeXt, ViT).

``pretrained``: ``true`` -> the architecture's default ImageNet weights through torchvision's weights
API (cached under ``$TORCH_HOME/hub/checkpoints``), with the weights' own ``transforms()``;
``<path>`` -> a local state dict; ``false`` -> random initialisation. Without pretrained weights the
transform resizes to ``image_size`` and normalises with the ImageNet statistics.

Tokens: the last convolutional grid (``[B, h*w, C]``) or the ViT patch tokens; pooled: the grid mean
(CNNs) or the class token (ViT).
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import torch
import torchvision
from torch import nn

from mmfuse.encoders.base import Encoder, load_local_state_dict
from mmfuse.encoders.transforms import ImageTransform
from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def weights_cache_file(weights: torchvision.models.WeightsEnum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_default_weights(arch: str) -> tuple[dict, torchvision.models.WeightsEnum]:
    """The default weights' state dict: from the cache, else downloaded; fails fast when offline."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = weights_cache_file(weights)
    try:
        return weights.get_state_dict(progress=False, check_hash=False), weights
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise MMFuseError(
            f"encoder.image={arch}: the weights {weights} are not in the cache ({cached}) and could not "
            f"be downloaded from {weights.url} ({e.__class__.__name__}: {e}). Fix: "
            f"encoder.image.pretrained=false for random weights, or encoder.image.pretrained=<path of a "
            f"local state dict>, or put {cached.name} into {cached.parent} (set TORCH_HOME to move it)."
        ) from None


class TorchvisionImageEncoder(Encoder):
    def __init__(
        self,
        arch: str = "resnet50",
        pretrained: bool | str = False,
        freeze: bool = False,
        trainable_last: int = 0,
        image_size: int = 224,
        load_weights: bool = True,
    ) -> None:
        super().__init__(freeze=freeze, trainable_last=trainable_last)
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise MMFuseError(f"encoder.image.arch={arch!r} is not a torchvision classification model")
        self.arch = arch
        net = torchvision.models.get_model(arch, weights=None)
        if pretrained is True:
            weights = torchvision.models.get_model_weights(arch).DEFAULT
            if load_weights:
                net.load_state_dict(load_default_weights(arch)[0])
            self.transform = weights.transforms()
        else:
            if pretrained and load_weights:
                load_local_state_dict(net, pretrained, f"encoder.image ({arch})")
            self.transform = ImageTransform(size=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.is_vit = arch.startswith("vit_")
        if self.is_vit:
            self.vit = net
            self.out_dim = net.hidden_dim
            self._blocks = list(net.encoder.layers)
        elif arch.startswith(("resnet", "resnext", "wide_resnet")):
            self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                      net.layer1, net.layer2, net.layer3, net.layer4)
            self.out_dim = net.fc.in_features
            self._blocks = [net.layer1, net.layer2, net.layer3, net.layer4]
        elif hasattr(net, "features"):
            self.body = net.features
            self.out_dim = _out_channels(net.features, image_size)
            self._blocks = list(net.features)
        else:
            raise MMFuseError(f"encoder.image.arch={arch!r}: no feature extractor defined for this family")
        self.apply_freeze()

    def blocks(self) -> list[nn.Module]:
        return self._blocks

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        if self.is_vit:
            vit = self.vit
            x = vit._process_input(images)
            cls = vit.class_token.expand(x.shape[0], -1, -1)
            x = vit.encoder(torch.cat([cls, x], dim=1))
            pooled, tokens = x[:, 0], x[:, 1:]
        else:
            grid = self.body(images)
            tokens = grid.flatten(2).transpose(1, 2)
            pooled = tokens.mean(1)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(pooled, tokens, mask)


def _out_channels(features: nn.Module, image_size: int) -> int:
    with torch.no_grad():
        was_training = features.training
        features.eval()
        out = features(torch.zeros(1, 3, max(image_size, 32), max(image_size, 32)))
        features.train(was_training)
    return int(out.shape[1])
