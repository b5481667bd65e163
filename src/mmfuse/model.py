"""The pure-PyTorch model: one encoder per modality and a fusion (no Lightning, so plain loops can use it too)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from mmfuse.encoders.base import Encoder
from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import Fusion
from mmfuse.types import MODALITIES, EncoderOutput, LateOutput


class FusionModel(nn.Module):
    """``fusion({m: encoder_m(batch) for each modality m})``: for image + text,
    ``fusion({"image": image_encoder(batch["image"]), "text": text_encoder(batch["input_ids"],
    batch["attention_mask"])})``; video reads ``batch["video"] [B, T, 3, H, W]`` (and ``video_mask
    [B, T]`` when frames are padded), audio ``batch["audio"] [B, S]`` and ``audio_mask [B, S]``.

    The model's modalities are those with an encoder (``image_encoder``, ``video_encoder``,
    ``audio_encoder``, ``text_encoder``; each may be None), in ``MODALITIES`` order; each encoder is
    the submodule ``<modality>_encoder``, so image-text checkpoints keep their keys.
    A batch may carry precomputed encoder outputs instead (``<modality>_features``, an
    ``EncoderOutput``), as the feature cache provides; then that encoder is not run, and floating
    features are cast to the default dtype (the cache may store float16). A fully frozen encoder
    runs under ``torch.no_grad()``. ``encoded_samples`` counts the samples each encoder
    has encoded (the feature cache encodes through ``encode`` too).
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

    def __init__(self, image_encoder: Encoder | None, text_encoder: Encoder | None, fusion: Fusion,
                 video_encoder: Encoder | None = None, audio_encoder: Encoder | None = None) -> None:
        super().__init__()
        given = {"image": image_encoder, "video": video_encoder, "audio": audio_encoder, "text": text_encoder}
        for m in MODALITIES:
            setattr(self, f"{m}_encoder", given[m])
        self.modalities = tuple(m for m in MODALITIES if given[m] is not None)
        if not self.modalities:
            raise MMFuseError("the model has no encoder: configure at least one of encoder.image, encoder.video, "
                              "encoder.audio, encoder.text")
        self.fusion = fusion
        self.encoded_samples = {m: 0 for m in self.modalities}
        self.image_memory_format = torch.contiguous_format
        self.dynamic_shapes = False
        pad_id = getattr(getattr(getattr(text_encoder, "tokenizer", None), "tokenizer", None), "pad_token_id", None)
        self.text_pad_id = pad_id if isinstance(pad_id, int) else 0

    @property
    def encoders(self) -> dict[str, Encoder]:
        """``{modality: encoder}`` in ``MODALITIES`` order."""
        return {m: getattr(self, f"{m}_encoder") for m in self.modalities}

    @property
    def item_modality(self) -> str:
        """The modality matched against the text in ITM and retrieval (image, video or audio): the one
        modality besides text; one line when there is not exactly one."""
        items = [m for m in self.modalities if m != "text"]
        if "text" not in self.modalities or len(items) != 1:
            raise MMFuseError(f"matching and retrieval pair text with one other modality; this model has "
                              f"{', '.join(self.modalities)}: configure text and one of image / video / audio")
        return items[0]

    def encode(self, modality: str, batch: dict[str, Any]) -> EncoderOutput:
        """The ``modality`` encoder's output for ``batch`` (or its cached ``<modality>_features``)."""
        if modality not in self.modalities:
            raise MMFuseError(f"the model has no {modality} encoder (its modalities: {', '.join(self.modalities)})")
        return getattr(self, f"encode_{modality}")(batch)

    def encode_video(self, batch: dict[str, Any]) -> EncoderOutput:
        """The video encoder's output; from cached ``video_features`` as is, from cached per-frame outputs
        (``video_frame_features``, a frozen frame encoder's ``encode_frames``) through the temporal model
        only (``temporal_forward``, with ``video_mask`` when the batch has one): then no clip is counted
        in ``encoded_samples``, which counts the clips the frame encoder runs on."""
        if "video_features" in batch:
            return self._cast(batch["video_features"])
        if "video_frame_features" in batch:
            return self.video_encoder.temporal_forward(self._cast(batch["video_frame_features"]),
                                                       batch.get("video_mask"))
        video = _required(batch, "video")
        self.encoded_samples["video"] += video.shape[0]
        self._mark_dynamic(video, 0)
        with _no_grad_if(self.video_encoder.fully_frozen):
            return self.video_encoder(video, batch.get("video_mask"))

    def encode_audio(self, batch: dict[str, Any]) -> EncoderOutput:
        if "audio_features" in batch:
            return self._cast(batch["audio_features"])
        audio = _required(batch, "audio")
        self.encoded_samples["audio"] += audio.shape[0]
        self._mark_dynamic(audio, 0)
        with _no_grad_if(self.audio_encoder.fully_frozen):
            return self.audio_encoder(audio, batch.get("audio_mask"))

    def encode_image(self, batch: dict[str, Any]) -> EncoderOutput:
        if "image_features" in batch:
            return self._cast(batch["image_features"])
        images = _required(batch, "image")
        self.encoded_samples["image"] += images.shape[0]
        if self.image_memory_format is not torch.contiguous_format:
            images = images.contiguous(memory_format=self.image_memory_format)
        self._mark_dynamic(images, 0)
        with _no_grad_if(self.image_encoder.fully_frozen):
            return self.image_encoder(images)

    def encode_text(self, batch: dict[str, Any]) -> EncoderOutput:
        if "text_features" in batch:
            return self._cast(batch["text_features"])
        self.encoded_samples["text"] += _required(batch, "input_ids").shape[0]
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

    def encode_all(self, batch: dict[str, Any]) -> dict[str, EncoderOutput]:
        """``{modality: encoder output}`` for every modality of the model, in order."""
        inputs = {m: self.encode(m, batch) for m in self.modalities}
        for m, out in inputs.items():
            self._mark_dynamic(out.pooled, 0)
            # the batch size; the text length too (for the others the number of tokens is fixed)
            self._mark_dynamic(out.tokens, *((0, 1) if m == "text" else (0,)))
            self._mark_dynamic(out.mask, *((0, 1) if m == "text" else (0,)))
        return inputs

    def forward(self, batch: dict[str, Any]) -> torch.Tensor | LateOutput:
        return self.fusion(self.encode_all(batch))


def _required(batch: dict[str, Any], key: str) -> torch.Tensor:
    if key not in batch:
        raise MMFuseError(f"the batch has no {key!r} (its keys: {sorted(batch)}): the dataset does not provide the "
                          f"input of a configured encoder; set that encoder.<modality>=none or choose a dataset that has it")
    return batch[key]


def _no_grad_if(condition: bool) -> contextlib.AbstractContextManager:
    return torch.no_grad() if condition else contextlib.nullcontext()
