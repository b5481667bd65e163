"""The pure-PyTorch model: two encoders and a fusion (no Lightning, so plain loops can use it too)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from mmfuse.encoders.base import Encoder
from mmfuse.fusion.base import Fusion
from mmfuse.types import EncoderOutput, LateOutput


class FusionModel(nn.Module):
    """``fusion(image_encoder(batch["image"]), text_encoder(batch["input_ids"], batch["attention_mask"]))``.

    A batch may carry precomputed encoder outputs instead (``image_features`` / ``text_features``, as
    ``EncoderOutput``), as the feature cache provides; then that encoder is not run, and floating
    features are cast to the default dtype (the cache may store float16). A fully frozen encoder
    runs under ``torch.no_grad()``. ``encoded_samples`` counts the samples each encoder
    has encoded (the feature cache encodes through ``encode_image`` / ``encode_text`` too).
    ``image_memory_format`` (``torch.channels_last`` for CNNs on a GPU) is applied to the images
    before the image encoder.

    ``dynamic_shapes`` (set when ``trainer.compile`` compiles the parts, unless it passes ``dynamic``):
    the batch size of every encoder and fusion input, and the text length, are marked as dynamic for
    ``torch.compile`` (``torch._dynamo.maybe_mark_dynamic``). Text batches are as long as their longest
    text and an epoch's last batch is smaller; without the marks each new shape recompiles the encoders
    (a static graph, then one dynamic in length, then one in batch size); with them, once. Text is
    then also padded to a multiple of 8 tokens (masked), the alignment compiled GPU kernels assume, for
    the text encoder only: its token states are cut back to the batch's length.
    """

    def __init__(self, image_encoder: Encoder, text_encoder: Encoder, fusion: Fusion) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.fusion = fusion
        self.encoded_samples = {"image": 0, "text": 0}
        self.image_memory_format = torch.contiguous_format
        self.dynamic_shapes = False
        pad_id = getattr(getattr(getattr(text_encoder, "tokenizer", None), "tokenizer", None), "pad_token_id", None)
        self.text_pad_id = pad_id if isinstance(pad_id, int) else 0

    def encode_image(self, batch: dict[str, Any]) -> EncoderOutput:
        if "image_features" in batch:
            return self._cast(batch["image_features"])
        images = batch["image"]
        self.encoded_samples["image"] += images.shape[0]
        if self.image_memory_format is not torch.contiguous_format:
            images = images.contiguous(memory_format=self.image_memory_format)
        self._mark_dynamic(images, 0)
        with _no_grad_if(self.image_encoder.fully_frozen):
            return self.image_encoder(images)

    def encode_text(self, batch: dict[str, Any]) -> EncoderOutput:
        if "text_features" in batch:
            return self._cast(batch["text_features"])
        self.encoded_samples["text"] += batch["input_ids"].shape[0]
        ids, mask = batch["input_ids"], batch["attention_mask"]
        length = ids.shape[1]
        if self.dynamic_shapes:
            ids, mask = self._pad_text(ids, mask)
        self._mark_dynamic(ids, 0, 1)
        self._mark_dynamic(mask, 0, 1)
        with _no_grad_if(self.text_encoder.fully_frozen):
            out = self.text_encoder(ids, mask)
        if ids.shape[1] != length and out.tokens.shape[1] == ids.shape[1]:  # the padding stays inside the encoder
            out = EncoderOutput(out.pooled, out.tokens[:, :length], out.mask[:, :length])
        return out

    def _cast(self, features: EncoderOutput) -> EncoderOutput:
        dtype = torch.get_default_dtype()  # float32, or the dtype Lightning's "16-true" / "bf16-true" set
        return EncoderOutput(*(t.to(dtype) if t.is_floating_point() else t for t in features))

    def _pad_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad the text length to a multiple of 8 (at most the tokenizer's ``max_length``), with masked
        padding tokens: compiled kernels specialise on 8-aligned lengths, and any other length would
        compile the text encoder a second time."""
        length = ids.shape[1]
        target = -(-length // 8) * 8
        limit = getattr(getattr(self.text_encoder, "tokenizer", None), "max_length", None)
        if limit is not None:
            target = max(length, min(target, int(limit)))
        if target == length:
            return ids, mask
        pad = (0, target - length)
        return torch.nn.functional.pad(ids, pad, value=self.text_pad_id), torch.nn.functional.pad(mask, pad, value=0)

    def _mark_dynamic(self, tensor: torch.Tensor, *dims: int) -> None:
        if self.dynamic_shapes:
            for dim in dims:
                torch._dynamo.maybe_mark_dynamic(tensor, dim)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor | LateOutput:
        image, text = self.encode_image(batch), self.encode_text(batch)
        for t in (*image, text.pooled):
            self._mark_dynamic(t, 0)
        self._mark_dynamic(text.tokens, 0, 1)  # the text length
        self._mark_dynamic(text.mask, 0, 1)
        return self.fusion(image, text)


def _no_grad_if(condition: bool) -> contextlib.AbstractContextManager:
    return torch.no_grad() if condition else contextlib.nullcontext()
