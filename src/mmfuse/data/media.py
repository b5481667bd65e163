"""Datasets whose items are video and / or audio files (with or without an image), paired with captions.

An item is a ``MediaItem``: its files by modality (``{"video": clips/v1.mp4}``, ``{"image": a.jpg,
"audio": a.wav}``). Each file is decoded with the attached encoder's preprocessing
(``MMFuseDataModule.transforms``):

- image: ``transforms["image"](decode_file(path))``, float ``[3, H, W]`` (``mmfuse.data.images``);
- video: ``transforms["video"](read_video(path, t.frames, t.sampling, t.fps, t.stride))``, float
  ``[T, 3, H, W]``: the frames the video encoder's ``FrameTransform`` ``t`` asks for
  (``mmfuse.data.video_files``);
- audio: ``read_audio(path, t.sample_rate, max_seconds)``, float ``[S]`` mono at the audio encoder's
  rate (``AudioTransform.sample_rate``; ``mmfuse.data.audio_files``).

Bad files get the treatment of bad images (``mmfuse.data.validation``, ``mmfuse.data.images``): before
training ``check_media`` finds them (``data.verify_images``: ``none`` checks that the files exist,
``quick`` decodes the first frame / the first 50 ms, ``decode`` decodes what training will), and
``on_bad_sample`` stops or skips their records; a file that still fails in a batch drops its pairs with
a warning and is counted (``MediaFiles.failures()`` -> ``results.json``).

Batches of ``MediaPairDataset``: each modality of the items (``image [B, 3, H, W]``, ``video
[B, T, 3, H, W]``, ``audio [B, S_max]`` right-padded with zeros and ``audio_mask [B, S_max]``, True on
real samples), ``input_ids`` / ``attention_mask``, ``image_id`` (the item's index: what ITM and
retrieval read, whatever the item's modality) / ``text_id``, and the per-pair fields.

Feature cache (``mmfuse.features``): ``feature_sources()`` gives, per decoded modality, a
``FeatureSource`` (``load(i)``: item ``i``'s file as a batch holds it; ``describe()``; ``fingerprint()``:
that modality's paths, sizes and mtimes). The cache puts its stores into ``cached`` (``{modality:
store}``, ``store.features(ids) -> EncoderOutput``) and / or ``text``; those modalities are then not
decoded, batches carry ``<modality>_features`` (``video_frame_features`` for a per-frame store), and an
item whose file failed while the cache encoded it (``store.failed``, ``{index: reason}``) drops its pairs
with the warning an uncached run gives.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmfuse.data.audio_files import read_audio
from mmfuse.data.captions import CaptionDataModule, CaptionSplit
from mmfuse.data.image_size import DEFAULT_MAX_PIXELS
from mmfuse.data.images import decode_file
from mmfuse.data.validation import check_image_file
from mmfuse.data.video_files import read_video
from mmfuse.errors import MMFuseError


def describe(transform: Any) -> str:
    from mmfuse.features.keys import describe_transform  # imported late: mmfuse.features imports the model

    return describe_transform(transform)

log = logging.getLogger(__name__)

ITEM_MODALITIES = ("image", "video", "audio")
QUICK_SECONDS = 0.05  # verify_images=quick decodes this much of a sound


@dataclass(frozen=True)
class MediaItem:
    """One item's files, ``{modality: path}`` in ``ITEM_MODALITIES`` order."""

    paths: dict[str, Path]

    def __str__(self) -> str:
        return ", ".join(str(p) for p in self.paths.values())


def pad_audio(waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[S_i]`` waveforms -> ``audio [B, max S_i]`` (right-padded with 0) and ``audio_mask`` (True on
    the first ``S_i`` samples of row ``i``)."""
    length = max(len(w) for w in waves)
    audio = torch.zeros(len(waves), length)
    mask = torch.zeros(len(waves), length, dtype=torch.bool)
    for row, w in enumerate(waves):
        audio[row, :len(w)], mask[row, :len(w)] = w, True
    return audio, mask


class FeatureSource:
    """What the feature cache encodes for one modality of a split: ``n`` items, ``load(i)`` (a float
    tensor as the batch holds it: video ``[T, 3, H, W]``, audio ``[S]`` at the encoder's rate, image
    ``[3, H, W]``), ``describe()`` (the preprocessing, part of the cache key), ``fingerprint()`` (the
    data, part of the key) and ``fail(i, reason)`` (called when ``load(i)`` raised while encoding)."""

    def __init__(self, n: int, load: Any, description: str, fingerprint: Any, fail: Any = None) -> None:
        self.n, self.load, self.description, self._fingerprint = n, load, description, fingerprint
        self._fail = fail

    def __len__(self) -> int:
        return self.n

    def describe(self) -> str:
        return self.description

    def fingerprint(self) -> str:
        return self._fingerprint()

    def fail(self, i: int, reason: str) -> None:
        if self._fail is not None:
            self._fail(i, reason)


def features_key(modality: str, store: Any) -> str:
    """The batch key of a feature store's outputs: ``video_frame_features`` for per-frame features."""
    return "video_frame_features" if getattr(store, "per_frame", False) else f"{modality}_features"


class MediaFiles:
    """The items of a split as a store: ``load(i) -> {modality: float tensor}`` for the modalities of
    ``fields`` (``{modality: record key}``; see the module docstring); ``failed[i]`` is set (across DataLoader workers) when item ``i`` fails to load."""

    def __init__(self, items: Sequence[MediaItem], transforms: dict[str, Any], fields: dict[str, str],
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, audio_max_seconds: float | None = None) -> None:
        self.items = list(items)
        self.transforms = transforms
        self.fields = fields  # the record key of each modality, for messages
        self.max_pixels = max_pixels
        self.audio_max_seconds = audio_max_seconds
        self.failed = torch.zeros(len(self.items), dtype=torch.bool).share_memory_()
        if "audio" in fields and not isinstance(getattr(transforms.get("audio"), "sample_rate", None), int):
            raise MMFuseError("audio files need the audio encoder's sample rate: the attached audio transform "
                              f"({transforms.get('audio')!r}) has no integer sample_rate. Fix: attach the audio "
                              "encoder's AudioTransform")

    def __len__(self) -> int:
        return len(self.items)

    def load_file(self, modality: str, path: Path, whole: bool = True) -> torch.Tensor:
        """One file decoded as training sees it; ``whole=False``: only its start (a quick check)."""
        field, t = self.fields[modality], self.transforms.get(modality)
        if modality == "image":
            return t(decode_file(path, self.max_pixels))
        if modality == "video":
            if not whole:
                return read_video(path, frames=1, sampling="stride", field=field)
            return t(read_video(path, t.frames, t.sampling, t.fps, t.stride, field=field))
        seconds = self.audio_max_seconds if whole else QUICK_SECONDS
        return read_audio(path, t.sample_rate, field=field, max_seconds=seconds)

    def load(self, i: int, skip: Any = ()) -> dict[str, torch.Tensor]:
        """Item ``i``'s files of the modalities in ``fields`` (those an encoder reads), but ``skip``."""
        return {m: self.load_file(m, self.items[i].paths[m]) for m in self.fields if m not in skip}

    def fingerprint(self, modality: str | None = None) -> str:
        """A hash of the file paths, sizes and modification times (of ``modality`` only, if given)."""
        h = hashlib.sha256()
        for item in self.items:
            for m, p in item.paths.items():
                if modality is None or m == modality:
                    st = p.stat()
                    h.update(f"{m}\0{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def source(self, modality: str) -> FeatureSource:
        """The feature cache's view of one modality (see ``FeatureSource``); a file that fails marks its
        item ``failed`` with the warning a batch gives."""
        t = self.transforms.get(modality)
        extra = f", audio_max_seconds={self.audio_max_seconds}" if modality == "audio" else ""
        extra += f", max_pixels={self.max_pixels}" if modality == "image" else ""

        def fail(i: int, reason: str) -> None:
            self.failed[i] = True
            log.warning("skipping the pairs of %s in every batch: %s", self.items[i], reason)
        return FeatureSource(len(self), lambda i: self.load_file(modality, self.items[i].paths[modality]),
                             f"{modality}: {describe(t)}{extra}", lambda: self.fingerprint(modality), fail)

    def failures(self) -> list[str]:
        return [str(self.items[i]) for i in torch.nonzero(self.failed).flatten().tolist()]

    # -- checks before training --------------------------------------------------------------------
    def problem(self, i: int, mode: str) -> str | None:
        """Why item ``i`` is unusable (``mode``: ``data.verify_images``), or None."""
        for m in self.fields:
            path = self.items[i].paths[m]
            if m == "image":
                reason = check_image_file(path, "quick" if mode == "quick" else mode, self.max_pixels)
                if reason:
                    return reason
                continue
            if mode == "none":
                if not path.is_file():
                    return f"missing {m} file"
                continue
            try:
                self.load_file(m, path, whole=mode == "decode")
            except MMFuseError as e:
                return str(e).removeprefix(f"{path} ({self.fields[m]}): ")  # the record names the file
        return None

    def check(self, mode: str, workers: int | None = None) -> dict[int, str]:
        """``{index: reason}`` for every unusable item (in parallel threads)."""
        if not self.items:
            return {}
        workers = workers or min(16, (os.cpu_count() or 1) * 4)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(lambda i: self.problem(i, mode), range(len(self.items))))
        return {i: r for i, r in enumerate(reasons) if r is not None}


class MediaPairDataset(torch.utils.data.Dataset):
    """(item, caption) pairs over ``MediaFiles``; an item that fails to load drops its pairs from the
    batch (with a warning naming its files), as ``FilePairDataset`` does for images."""

    def __init__(self, items: MediaFiles, text: dict[str, torch.Tensor], item_index: torch.Tensor,
                 text_index: torch.Tensor, fields: dict[str, torch.Tensor] | None = None) -> None:
        self.items, self.text = items, text
        self.cached: dict[str, Any] = {}  # {modality: feature store}, set by the feature cache
        self.item_index, self.text_index = item_index.long(), text_index.long()
        self.fields = fields or {}
        for name, t in {"text_index": text_index, **self.fields}.items():
            if len(t) != len(item_index):
                raise ValueError(f"{name} has {len(t)} rows, expected {len(item_index)} (one per pair)")

    def __len__(self) -> int:
        return len(self.item_index)

    def feature_sources(self) -> dict[str, FeatureSource]:
        return {m: self.items.source(m) for m in self.items.fields}

    def _load(self, i: int) -> dict[str, torch.Tensor] | None:
        for store in self.cached.values():
            if i in getattr(store, "failed", {}):
                self.items.failed[i] = True
                log.warning("skipping the pairs of %s in this batch: %s", self.items.items[i], store.failed[i])
                return None
        try:
            return self.items.load(i, skip=self.cached)
        except Exception as e:
            self.items.failed[i] = True
            last = (str(e).strip().splitlines() or [""])[-1].strip()
            log.warning("skipping the pairs of %s in this batch: %s: %s", self.items.items[i], type(e).__name__, last)
            return None

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        pairs = torch.as_tensor(indices, dtype=torch.long)
        loaded = {i: self._load(i) for i in self.item_index[pairs].unique().tolist()}
        keep = torch.tensor([loaded[i] is not None for i in self.item_index[pairs].tolist()], dtype=torch.bool)
        step = 1
        while not keep.any() and step < len(self):  # a whole batch of bad items: take the next good pair
            pairs = torch.as_tensor([(int(indices[0]) + step) % len(self)])
            i = int(self.item_index[pairs[0]])
            loaded.setdefault(i, self._load(i))
            keep = torch.tensor([loaded[i] is not None])
            step += 1
        pairs = pairs[keep]
        item_id, text_id = self.item_index[pairs], self.text_index[pairs]
        rows = [loaded[i] for i in item_id.tolist()]
        batch: dict[str, Any] = {}
        for m in rows[0]:
            if m == "audio":
                batch["audio"], batch["audio_mask"] = pad_audio([r["audio"] for r in rows])
            else:
                batch[m] = torch.stack([r[m] for r in rows])
        for m, store in self.cached.items():
            batch[features_key(m, store)] = store.features(item_id)
        if hasattr(self.text, "features"):
            batch["text_features"] = self.text.features(text_id)
        else:
            mask = self.text["attention_mask"][text_id]
            length = max(int(mask.sum(1).max()), 1)  # drop columns that are padding for the whole batch
            batch.update(input_ids=self.text["input_ids"][text_id, :length], attention_mask=mask[:, :length])
        batch.update(image_id=item_id, text_id=text_id)
        batch.update({name: t[pairs] for name, t in self.fields.items()})
        return batch

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: type(v)(*(t[0] for t in v)) if isinstance(v, tuple) else v[0]
                for k, v in self.__getitems__([i]).items()}


class MediaCaptionDataModule(CaptionDataModule):
    """``CaptionDataModule`` whose split items may be ``MediaItem``s: files of the item modalities among
    ``modalities`` (image, video, audio). With image + text only, everything is the base's (image files,
    ``FilePairDataset``); otherwise the checks and batches are this module's."""

    record_keys: dict[str, str] = {"image": "image", "video": "video", "audio": "audio"}

    def __init__(self, root: str, audio_max_seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        if audio_max_seconds is not None and not audio_max_seconds > 0:
            raise MMFuseError(f"data.audio_max_seconds={audio_max_seconds!r}: expected a positive duration "
                              "(or null: whole files)")
        self.audio_max_seconds = audio_max_seconds

    def item_modalities(self) -> tuple[str, ...]:
        return tuple(m for m in self.modalities if m in ITEM_MODALITIES)

    @property
    def media(self) -> bool:
        """Whether the items are ``MediaItem``s (anything but image + text)."""
        return self.item_modalities() != ("image",)

    def media_files(self, items: Sequence[MediaItem]) -> MediaFiles:
        """The store of ``items``, decoding the modalities an attached encoder reads (a modality of the
        data that no encoder reads is neither checked nor decoded)."""
        fields = {m: self.record_keys[m] for m in self.item_modalities() if m in self.transforms}
        return MediaFiles(items, self.transforms, fields, self.max_pixels, self.audio_max_seconds)

    def check_files(self, items: list[Any]) -> dict[int, str]:
        if not self.media:
            return super().check_files(items)
        return self.media_files(items).check(self.verify_images)

    def build_split(self, name: str) -> Any:
        if not self.media:
            return super().build_split(name)
        split: CaptionSplit | None = self.split(name)
        if split is None:
            return None
        store = self._stores[name] = self.media_files(split.images)
        return MediaPairDataset(store, self.tokenizer(split.captions),
                                torch.tensor(split.caption_image, dtype=torch.long),
                                torch.arange(len(split.captions)), self.pair_fields(name, split))
