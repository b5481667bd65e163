"""Image encoders from torchvision: resnet18/50/101, mobilenet_v2, efficientnet_b0, convnext_tiny, vit_b_16
(any classification model of ``torchvision.models`` whose family is listed in ``_body``).

``pretrained``:
- ``true``: the architecture's default weights (``<Arch>_Weights.DEFAULT``) through torchvision's
  weights API, read from ``weights_dir`` (default ``$TORCH_HOME/hub/checkpoints``, where torchvision
  itself caches them) or downloaded there;
- a weights name such as ``IMAGENET1K_V1``: that member of the architecture's weights enum;
- a path: a local state dict (or a Lightning checkpoint's ``state_dict``);
- ``false``: random initialisation.

Preprocessing (``preprocess``): ``auto`` uses the loaded weights' own ``transforms()`` (resize, centre
crop, ImageNet normalisation; for a local state dict those of the architecture's default weights) and,
for random weights, a square resize to ``image_size`` with ImageNet statistics; a weights name (e.g.
``IMAGENET1K_V1``, for a local copy of those weights) uses that member's ``transforms()``; ``resize``
always resizes to ``image_size``.

Offline: a missing weights file is downloaded only when the download host answers within 3 s;
otherwise the error names the weights, the cache folder and the fixes. No hang, no retry loop.

Tokens: the last convolutional grid ``[B, h*w, C]`` (pooled = grid mean, what the classifier sees) or
the ViT patch tokens after the final LayerNorm (pooled = the class token). ``trainable_last=N`` with
``freeze=true`` fine-tunes the last N blocks: residual stages (ResNet), ``features`` entries
(MobileNet, EfficientNet, ConvNeXt) or transformer layers (ViT, with the final LayerNorm).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from mmfuse.encoders.base import Encoder, load_local_state_dict
from mmfuse.encoders.network import reachable as host_reachable
from mmfuse.encoders.transforms import ImageTransform
from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS = ("auto", "resize")  # or a weights name


def default_weights_dir() -> Path:
    """Where torchvision caches weight files: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(arch: str, pretrained: bool | str | None, what: str = "pretrained") -> WeightsEnum | None:
    """The weights enum member that ``pretrained`` names, or None (random weights or a local path)."""
    if pretrained is None or pretrained is False:
        return None
    enum = torchvision.models.get_model_weights(arch)
    if pretrained is True:
        return enum.DEFAULT
    name = str(pretrained)
    if name in ("DEFAULT", *enum.__members__) and not Path(name).exists():
        return enum[name]
    if "/" not in name and "." not in name and name.isupper():
        raise MMFuseError(f"encoder.image.{what}={name!r} is not a weights name of {arch}: "
                          f"known: {sorted(enum.__members__)}; or give true, false or a state dict path")
    return None


def load_weights_file(weights: WeightsEnum, weights_dir: str | Path | None, arch: str) -> dict:
    """The state dict of ``weights``: from ``weights_dir`` if there, else downloaded when reachable."""
    folder = Path(weights_dir).expanduser() if weights_dir else default_weights_dir()
    path = folder / os.path.basename(weights.url)
    fixes = (f"Fix: put {path.name} into {folder} (set TORCH_HOME, or encoder.image.weights_dir, to the "
             f"folder that has it), or encoder.image.pretrained=<path of a local state dict>, or "
             f"encoder.image.pretrained=false for random weights.")
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise MMFuseError(f"encoder.image={arch}: cannot read {path} ({type(e).__name__}: {e}); "
                              f"delete it to download it again. {fixes}") from None
    if not host_reachable(weights.url):
        raise MMFuseError(f"encoder.image={arch}: the weights {weights} are not in the cache folder {folder} "
                          f"and {urlparse(weights.url).hostname} is unreachable (offline). {fixes}")
    try:
        return torch.hub.load_state_dict_from_url(weights.url, model_dir=str(folder), progress=True,
                                                  check_hash=True, map_location="cpu")
    except Exception as e:
        raise MMFuseError(f"encoder.image={arch}: downloading {weights.url} into {folder} failed "
                          f"({type(e).__name__}: {e}). {fixes}") from None


class TorchvisionImageEncoder(Encoder):
    def __init__(
        self,
        arch: str = "resnet50",
        pretrained: bool | str = False,
        freeze: bool = False,
        trainable_last: int = 0,
        image_size: int = 224,
        preprocess: str = "auto",
        weights_dir: str | None = None,
        load_weights: bool = True,
    ) -> None:
        super().__init__(freeze=freeze, trainable_last=trainable_last)
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise MMFuseError(f"encoder.image.arch={arch!r} is not a torchvision classification model")
        self.arch = arch
        weights = resolve_weights(arch, pretrained)
        local = pretrained not in (None, False, True) and weights is None
        recipe = weights or (torchvision.models.get_model_weights(arch).DEFAULT if local else None)
        if preprocess not in PREPROCESS:
            recipe = resolve_weights(arch, preprocess, "preprocess")
            if recipe is None:
                raise MMFuseError(f"encoder.image.preprocess={preprocess!r}: expected auto, resize or a weights "
                                  f"name of {arch} ({sorted(torchvision.models.get_model_weights(arch).__members__)})")
        if recipe is not None and preprocess != "resize":
            self.transform = recipe.transforms()
            self.input_size = int(self.transform.crop_size[0])
        else:
            self.transform = ImageTransform(size=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
            self.input_size = int(image_size)
        extra = {}
        if arch.startswith("vit_"):
            patch = int(arch.rsplit("_", 1)[-1])
            if self.input_size % patch:
                raise MMFuseError(f"encoder.image={arch}: image_size={self.input_size} must be a multiple of "
                                  f"the patch size {patch}")
            extra = {"image_size": self.input_size}
        net = torchvision.models.get_model(arch, weights=None, **extra)
        if weights is not None and load_weights:
            net.load_state_dict(load_weights_file(weights, weights_dir, arch))
        elif local and load_weights:
            load_local_state_dict(net, pretrained, f"encoder.image ({arch})")
        self.weights_name = str(weights) if weights is not None else (str(pretrained) if local else None)
        self._build_body(net)
        self.apply_freeze()

    def _build_body(self, net: nn.Module) -> None:
        arch = self.arch
        self.is_vit = arch.startswith("vit_")
        if self.is_vit:
            self.vit = net
            self.vit.heads = nn.Identity()  # the classifier is not part of the encoder
            self.out_dim = net.hidden_dim
            layers = list(net.encoder.layers)
            self._blocks = layers[:-1] + [nn.ModuleList([layers[-1], net.encoder.ln])]
        elif arch.startswith(("resnet", "resnext", "wide_resnet")):
            self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                      net.layer1, net.layer2, net.layer3, net.layer4)
            self.out_dim = net.fc.in_features
            self._blocks = [net.layer1, net.layer2, net.layer3, net.layer4]
        elif hasattr(net, "features"):
            self.body = net.features
            self.out_dim = _out_channels(net.features, self.input_size)
            self._blocks = list(net.features)
        else:
            raise MMFuseError(f"encoder.image.arch={arch!r}: no feature extractor defined for this family")

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
