"""What image and text encoders share: output width, preprocessing, freezing and weight loading.

Contract: ``ImageEncoder.forward(images [B, 3, H, W] float) -> EncoderOutput`` and
``TextEncoder.forward(input_ids [B, T], attention_mask [B, T]) -> EncoderOutput``. Each encoder also
carries its own preprocessing (``transform`` for images, ``tokenizer`` for text), so that the data
pipeline always matches the weights.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mmfuse.errors import MMFuseError


class Encoder(nn.Module):
    """Base for encoders. ``freeze=True`` stops gradients and keeps the module in eval mode.

    Every encoder also takes ``load_weights``: False builds the architecture and preprocessing of
    ``pretrained`` without reading the weights (when a checkpoint will provide them).

    With ``trainable_last > 0`` (and ``freeze=True``) the last ``trainable_last`` blocks reported by
    ``blocks()`` stay trainable: partial fine-tuning.
    """

    out_dim: int

    def __init__(self, freeze: bool = False, trainable_last: int = 0) -> None:
        super().__init__()
        self.freeze = bool(freeze)
        self.trainable_last = int(trainable_last)

    def blocks(self) -> list[nn.Module]:
        """The encoder's blocks from input to output (for partial fine-tuning)."""
        return []

    def apply_freeze(self) -> None:
        """Call at the end of ``__init__`` of subclasses."""
        if not self.freeze:
            return
        for p in self.parameters():
            p.requires_grad_(False)
        if self.trainable_last > 0:
            blocks = self.blocks()
            if not blocks:
                raise MMFuseError(
                    f"{type(self).__name__} does not support trainable_last; set it to 0 or freeze=false"
                )
            for block in blocks[-self.trainable_last :]:
                for p in block.parameters():
                    p.requires_grad_(True)
        self.train(False)

    def load_own_weights(self, pretrained: bool | str, load_weights: bool, what: str) -> None:
        """For encoders without published weights: ``pretrained`` is false or a local state dict."""
        if pretrained is True:
            raise MMFuseError(f"{what} has no published weights: use pretrained=false or a state dict path")
        if pretrained and load_weights:
            load_local_state_dict(self, pretrained, what)

    @property
    def fully_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> Encoder:
        """Frozen parts stay in eval mode (BatchNorm statistics and dropout do not change)."""
        super().train(mode)
        if self.freeze and mode:
            super().train(False)
            if self.trainable_last > 0:
                for block in self.blocks()[-self.trainable_last :]:
                    block.train(True)
        return self


def load_local_state_dict(module: nn.Module, path: str | Path, what: str) -> None:
    """Load ``path`` (a state dict, or a Lightning checkpoint's ``state_dict``) into ``module``.

    Read with ``mmfuse.checkpoint_io.read_checkpoint``: tensors and plain containers only (a file that
    would run code is refused), its checksum file verified when it has one."""
    from mmfuse.checkpoint_io import read_checkpoint  # imports Lightning: only when a file is read

    path = Path(path).expanduser()
    if not path.is_file():
        raise MMFuseError(
            f"{what}: pretrained={str(path)!r} is not a file. Give the path of a saved state dict, "
            "pretrained=true for the default weights, or pretrained=false for random initialisation."
        )
    state = read_checkpoint(path, field=f"{what}: pretrained",
                            fix="Fix: give a state dict saved with torch.save(model.state_dict(), path)")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing:
        raise MMFuseError(
            f"{what}: {path} lacks {len(missing)} of the model's weights (first: {missing[:3]}); "
            f"it holds {len(state)} tensors, {len(unexpected)} of them unknown to this architecture."
        )
