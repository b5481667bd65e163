"""Batches of ``data=shapes_av``: video, audio, text and the label, gathered from one split.

``AVDataset[indices]`` (``__getitems__``, a list or 1-D tensor of sample indices) is a dict:

- ``video`` float ``[B, T, 3, H, W]``: each clip ``uint8 [T, 3, H, W]`` through ``video_transform``;
- ``audio`` float ``[B, S]``: each soundtrack (made for the batch, see ``clips.render_audio``) through
  ``audio_transform(wave, sample_rate)``; ``audio_mask`` bool ``[B, S]``, all True (every clip has the
  same length);
- ``input_ids`` / ``attention_mask``: the captions' tokens, trimmed to the batch's longest caption;
- ``target`` (class index, what ``task=classification`` reads), ``rule`` (index into ``RULES``),
  ``interaction_type`` (index into ``INTERACTION_TYPES``), ``sample_id`` (index in the split), long.

A modality whose transform is None (the run has no encoder for it) is left out of the batches.

Feature cache (``mmfuse.features``): ``feature_sources()`` gives the video and audio of the split as
``mmfuse.data.media.FeatureSource``s (fingerprints: the clips' bytes; the rendered soundtracks' bytes);
the cache puts its stores into ``cached`` (``{modality: store}``) and / or ``text``, and batches then
carry ``<modality>_features`` (``video_frame_features`` for per-frame features, ``text_features``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmfuse.data.media import FeatureSource, describe, features_key
from mmfuse.data.shapes_av.clips import AVSplit, render_audio


class AVDataset(Dataset):
    def __init__(self, split: AVSplit, name: str, text: dict[str, torch.Tensor], text_index: torch.Tensor,
                 fields: dict[str, torch.Tensor], frames: int, sample_rate: int, seed: int,
                 video_transform: Callable[[torch.Tensor], torch.Tensor] | None,
                 audio_transform: Callable[[torch.Tensor, int], torch.Tensor] | None) -> None:
        self.split, self.name = split, name
        self.text, self.text_index, self.fields = text, text_index, fields
        self.frames, self.sample_rate, self.seed = frames, sample_rate, seed
        self.video_transform, self.audio_transform = video_transform, audio_transform
        self.cached: dict[str, Any] = {}  # {modality: feature store}, set by the feature cache

    def __len__(self) -> int:
        return len(self.split.texts)

    def _video(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.video_transform(clip) for clip in self.split.video[idx]])

    def _audio(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        waves = render_audio(self.split, self.name, idx.numpy(), self.frames, self.sample_rate, self.seed)
        audio = torch.stack([self.audio_transform(w, self.sample_rate) for w in waves])
        return {"audio": audio, "audio_mask": torch.ones(audio.shape, dtype=torch.bool)}

    def feature_sources(self) -> dict[str, FeatureSource]:
        from mmfuse.features.keys import tensor_digest  # imported late: mmfuse.features imports the model

        n, sources = len(self), {}
        if self.video_transform is not None:
            sources["video"] = FeatureSource(n, lambda i: self._video(torch.tensor([i]))[0],
                                             f"video: {describe(self.video_transform)}",
                                             lambda: tensor_digest(self.split.video))
        if self.audio_transform is not None:
            def waves() -> str:
                return tensor_digest(render_audio(self.split, self.name, np.arange(n), self.frames,
                                                  self.sample_rate, self.seed))
            sources["audio"] = FeatureSource(n, lambda i: self._audio(torch.tensor([i]))["audio"][0],
                                             f"audio: {describe(self.audio_transform)}, rate={self.sample_rate}",
                                             waves)
        return sources

    def _text(self, idx: torch.Tensor) -> dict[str, Any]:
        rows = self.text_index[idx]
        if hasattr(self.text, "features"):
            return {"text_features": self.text.features(rows)}
        mask = self.text["attention_mask"][rows]
        length = max(int(mask.sum(1).max()), 1)  # drop columns that are padding for the whole batch
        return {"input_ids": self.text["input_ids"][rows, :length], "attention_mask": mask[:, :length]}

    def __getitems__(self, indices: Sequence[int] | torch.Tensor) -> dict[str, Any]:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        batch: dict[str, Any] = {features_key(m, store): store.features(idx) for m, store in self.cached.items()}
        if self.video_transform is not None and "video" not in self.cached:
            batch["video"] = self._video(idx)
        if self.audio_transform is not None and "audio" not in self.cached:
            batch.update(self._audio(idx))
        batch.update(self._text(idx))
        batch.update({k: t[idx] for k, t in self.fields.items()})
        return batch

    def __getitem__(self, i: int | torch.Tensor) -> dict[str, Any]:
        """Sample ``i`` (a 1-D index tensor: the batch of those samples)."""
        if isinstance(i, torch.Tensor) and i.ndim == 1:
            return self.__getitems__(i)
        return {k: type(v)(*(t[0] for t in v)) if isinstance(v, tuple) else v[0]
                for k, v in self.__getitems__([int(i)]).items()}
