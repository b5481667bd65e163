"""``data=shapes_video``: the embedded video + caption ITM benchmark, made on first use.

Each split has ``num_<split>`` procedurally drawn clips (see ``clip.py``). Every clip appears in two
pairs: with its true caption (label 1) and with one negative caption (label 0) whose type is drawn
with probability proportional to ``negatives[type]`` (see ``negatives.py``). Clips depend only on
``(seed, split, size, frames, image_size, step)``; the negatives also on the weights. Rendered clips
are cached under ``cache_dir`` (when set; see ``cache.py``): a ``torch.save`` of plain lists and the
video tensor, read with ``weights_only=True`` (a damaged file is drawn again; one holding other Python
objects, which could run code, is refused with an MMFuseError).

``shuffle_frames: true`` is the control for the time negatives: the val and test clips (never train)
get their frames in a random order, one permutation per clip fixed by ``(seed, split)`` and never the
identity. The true caption and its ``direction`` / ``order`` negative then describe clips with the same
multiset of frames, equally likely to have been shuffled into what the model sees, so a model that
reads time falls to chance on those two types (Youden's J 0), while ``other`` / ``color`` / ``shape``
(read from the frames' content) are unaffected.

Batches: ``video`` float ``[B, T, 3, H, W]`` (the attached ``transforms["video"]`` applied per clip),
``input_ids`` / ``attention_mask``, ``label`` (float 1 / 0), ``pair_type`` (index into
``mmfuse.types.PAIR_TYPES``), ``video_id`` / ``text_id``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import astuple
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfuse.data.pairs import PairDataset, unique_texts
from mmfuse.data.shapes.datamodule import negative_weights as type_weights
from mmfuse.data.shapes_video.cache import cached
from mmfuse.data.shapes_video.clip import (
    Clip,
    Event,
    check_geometry,
    default_step,
    describe,
    draw_clip,
    sample_clip,
)
from mmfuse.data.shapes_video.negatives import NEGATIVE_TYPES, make_negative
from mmfuse.datamodule import MMFuseDataModule
from mmfuse.errors import MMFuseError
from mmfuse.types import PAIR_TYPES

GENERATOR_VERSION = 1
CACHE_FORMAT = 1
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def render_split(split: str, n: int, frames: int, image_size: int, step: int,
                 seed: int) -> tuple[list[Clip], torch.Tensor]:
    """``n`` clips and their videos ``uint8 [n, frames, 3, S, S]``."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], GENERATOR_VERSION])
    clips = [sample_clip(rng, image_size, frames, step) for _ in range(n)]
    shape = (0, frames, 3, image_size, image_size)
    videos = np.stack([draw_clip(c, image_size, frames, rng, step) for c in clips]) if n else np.zeros(shape, np.uint8)
    return clips, torch.from_numpy(videos)


def frame_orders(split: str, n: int, frames: int, seed: int) -> torch.Tensor:
    """``[n, frames]``: one random permutation per clip, never the identity (the shuffle control)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], GENERATOR_VERSION, 2])
    orders = []
    for _ in range(n):
        order = rng.permutation(frames)
        while (order == np.arange(frames)).all():
            order = rng.permutation(frames)
        orders.append(order)
    return torch.from_numpy(np.stack(orders)) if n else torch.zeros((0, frames), dtype=torch.long)


def negative_weights(negatives: Mapping[str, float]) -> np.ndarray:
    """The probability of each of shapes_video's ``NEGATIVE_TYPES`` (``data.shapes`` arithmetic)."""
    return type_weights(negatives, NEGATIVE_TYPES)


def make_pairs(clips: list[Clip], weights: np.ndarray, seed: int, split: str) -> tuple[list[int], list[str], list[int]]:
    """Clip index, caption text and pair type (index into ``PAIR_TYPES``) of every pair."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], GENERATOR_VERSION, 1])
    kinds = rng.choice(len(NEGATIVE_TYPES), size=len(clips), p=weights)
    captions = [describe(c) for c in clips]
    video_index, texts, types = [], [], []
    for i, (clip, caption) in enumerate(zip(clips, captions, strict=True)):
        kind = NEGATIVE_TYPES[kinds[i]]
        negative = make_negative(kind, clip, caption, captions, rng)
        video_index += [i, i]
        texts += [caption.text(), negative.text()]
        types += [PAIR_TYPES.index("positive"), PAIR_TYPES.index(kind)]
    return video_index, texts, types


def encode(clips: list[Clip], videos: torch.Tensor) -> dict[str, Any]:
    """Plain data for the cache: each clip as two tuples of its events' fields."""
    return {"clips": [[astuple(e) for e in c.events] for c in clips], "videos": videos}


def decode(data: dict[str, Any]) -> tuple[list[Clip], torch.Tensor]:
    return [Clip(tuple(Event(*e) for e in events)) for events in data["clips"]], data["videos"]  # type: ignore[arg-type]


class ClipStore:
    """Videos held in memory as one ``uint8 [N, T, 3, H, W]`` tensor; ``load(i)`` is one clip (so that
    ``PairDataset`` applies the video transform clip by clip)."""

    def __init__(self, videos: torch.Tensor) -> None:
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def load(self, i: int) -> torch.Tensor:
        return self.videos[i]

    def fingerprint(self) -> str:
        """sha256 of the clips' dtype, shape (clips, frames, 3, H, W) and bytes: the feature cache's key."""
        v = self.videos.contiguous()
        h = hashlib.sha256(f"{v.dtype}{tuple(v.shape)}".encode())
        if v.numel():
            h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
        return f"clips:{h.hexdigest()}"


class VideoPairDataset(PairDataset):
    """``PairDataset`` over a clip store: its batches name the visual side ``video`` / ``video_id``
    (``video_features`` from a feature store) instead of ``image`` / ``image_id`` (``image_id`` is kept
as well: the item index that ITM and retrieval read); a store of a frozen
    frame encoder's per-frame outputs (``per_frame``, see ``mmfuse.features.store``) gives
    ``video_frame_features``."""

    modality = "video"  # what the item store holds (the feature cache's side)
    RENAMED = {"image": "video", "image_id": "video_id", "image_features": "video_features"}

    def _images(self, idx: torch.Tensor) -> dict[str, Any]:
        if getattr(self.images, "per_frame", False):
            return {"video_frame_features": self.images.features(idx)}
        return super()._images(idx)

    def __getitems__(self, indices: Any) -> dict[str, Any]:
        batch = {self.RENAMED.get(k, k): v for k, v in super().__getitems__(indices).items()}
        if "video_id" in batch:  # the item index ITM and retrieval read (mmfuse.data.pairs)
            batch["image_id"] = batch["video_id"]
        return batch


class ShapesVideoDataModule(MMFuseDataModule):
    modalities = ("video", "text")

    def __init__(
        self,
        num_train: int = 4000,
        num_val: int = 500,
        num_test: int = 500,
        frames: int = 8,
        image_size: int = 32,
        step: int | None = None,
        negatives: Mapping[str, float] | None = None,
        shuffle_frames: bool = False,
        seed: int = 0,
        cache_dir: str | None = None,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.frames = int(frames)
        self.image_size = int(image_size)
        self.step = default_step(self.image_size) if step is None else int(step)
        if self.step < 1:
            raise MMFuseError(f"data.step={step}: pixels per frame must be >= 1 (null: the default for the size)")
        check_geometry(self.frames, self.image_size, self.step)
        self.negatives = dict(negatives or {t: 1.0 for t in NEGATIVE_TYPES})
        self.weights = negative_weights(self.negatives)
        self.shuffle_frames = bool(shuffle_frames)
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._rendered: dict[str, tuple[list[Clip], torch.Tensor]] = {}
        self._pairs: dict[str, tuple[list[int], list[str], list[int]]] = {}

    def rendered(self, split: str) -> tuple[list[Clip], torch.Tensor]:
        """The split's clips and their videos in time order (before any shuffle)."""
        if split not in self._rendered:
            self._rendered[split] = self._load_or_render(split)
        return self._rendered[split]

    def _load_or_render(self, split: str) -> tuple[list[Clip], torch.Tensor]:
        args = (split, self.sizes[split], self.frames, self.image_size, self.step, self.seed)
        return cached(self.cache_dir, split, [GENERATOR_VERSION, CACHE_FORMAT, *args],
                      lambda: encode(*render_split(*args)), decode)

    def videos(self, split: str) -> torch.Tensor:
        """What the split's batches show: the rendered videos, their frames shuffled for val / test under
        ``shuffle_frames``."""
        videos = self.rendered(split)[1]
        if not self.shuffle_frames or split == "train":
            return videos
        orders = frame_orders(split, len(videos), self.frames, self.seed)
        return torch.stack([v[o] for v, o in zip(videos, orders, strict=True)]) if len(videos) else videos

    def pairs(self, split: str) -> tuple[list[int], list[str], list[int]]:
        if split not in self._pairs:
            self._pairs[split] = make_pairs(self.rendered(split)[0], self.weights, self.seed, split)
        return self._pairs[split]

    def train_texts(self) -> list[str]:
        return self.pairs("train")[1]

    def build_split(self, name: str) -> VideoPairDataset | None:
        if self.sizes[name] == 0:
            return None
        video_index, texts, types = self.pairs(name)
        distinct, text_index = unique_texts(texts)
        types_t = torch.tensor(types, dtype=torch.long)
        self.check_video_frames(self.frames, "data=shapes_video")
        return VideoPairDataset(
            images=ClipStore(self.videos(name)),
            text=self.tokenizer(distinct),
            image_index=torch.tensor(video_index, dtype=torch.long),
            text_index=text_index,
            fields={"label": (types_t == PAIR_TYPES.index("positive")).float(), "pair_type": types_t},
            transform=self.transforms["video"],
        )

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"negatives": self.negatives, "frames": self.frames, "image_size": self.image_size,
                               "step": self.step, "shuffle_frames": self.shuffle_frames}
        for name in SPLIT_IDS:
            if self.sizes[name]:
                types = self.pairs(name)[2]
                out[name] = {"clips": self.sizes[name], "pairs": len(types),
                             "pair_types": {t: types.count(i) for i, t in enumerate(PAIR_TYPES) if types.count(i)}}
        return out
