"""The LightningDataModule base that every dataset builds on.

A subclass implements ``build_split(name) -> Dataset`` for ``name`` in ``("train", "val", "test")``
(returning ``None`` for a split it does not have), and states the modalities its batches carry
(``modalities``, in ``MODALITIES`` order; image + text unless it says otherwise). The builder calls
``attach(image=..., text=..., video=..., audio=...)`` with each configured encoder's own preprocessing
(an image / video transform, the tokenizer, an audio resampler) before ``setup``, so the data always
matches the weights, and ``check_modalities`` so that an encoder the data cannot feed is one line. A tokenizer with ``fitted == False`` (a vocabulary built from data) is fitted on
``train_texts()`` first. When the builder sets ``feature_cache`` (frozen encoders, ``cache`` not off),
``setup`` hands the built splits to it, and frozen encoders' inputs are replaced by cached features.
``pin_memory: auto`` pins batches when the trainer runs on a CUDA device. Training batches are drawn
whole (``TrainBatches``: one index tensor per batch) from datasets that take an index tensor
(``PairDataset``), and reach the device through ``move_to``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader, Dataset, default_collate

from mmfuse.data.captioning import caption_split, references_from_pairs
from mmfuse.data.pairs import PairDataset
from mmfuse.data.samplers import EvalShard, ResumableLoader, TrainBatches, TrainOrder
from mmfuse.errors import MMFuseError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CaptioningTargets:
    """What a generative task asks of the data: the decoder's tokenizer, the longest caption in tokens
    (bos and eos included) and the prompt the text encoder reads instead of the caption."""

    tokenizer: Any
    max_length: int
    prompt: str


def move_to(data: Any, device: torch.device) -> Any:
    """``data`` with every tensor on ``device`` (non-blocking copies to CUDA from pinned memory): tensors,
    plain dicts, lists, tuples and named tuples here; anything else through Lightning's
    ``move_data_to_device``."""
    if isinstance(data, torch.Tensor):
        if data.device == device:
            return data
        return data.to(device, non_blocking=device.type == "cuda" and data.is_pinned())
    if type(data) is dict:
        return {k: move_to(v, device) for k, v in data.items()}
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(move_to(v, device) for v in data))
    if type(data) in (list, tuple):
        return type(data)(move_to(v, device) for v in data)
    if isinstance(data, (str, bytes, int, float, bool)) or data is None:
        return data
    return move_data_to_device(data, device)


def collate(samples: Any) -> Any:
    """Datasets with ``__getitems__`` return a ready batch (a dict); others return a list of samples."""
    return samples if isinstance(samples, dict) else default_collate(samples)


class MMFuseDataModule(L.LightningDataModule):
    def __init__(self, batch_size: int = 128, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool | str = False, persistent_workers: bool = False) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        if pin_memory not in (True, False, "auto"):
            raise MMFuseError(f"data.pin_memory={pin_memory!r}: expected true, false or auto")
        self.pin_memory = pin_memory
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.transforms: dict[str, Any] = {}
        self.image_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.tokenizer: Any = None
        self.splits: dict[str, Dataset | None] = {}
        self.feature_cache: Any = None
        self.captioning: CaptioningTargets | None = None  # set by the builder for task=captioning
        self.caption_references_of: dict[str, list[list[str]]] = {}
        self.caption_images: dict[str, Any] = {}

    modalities: tuple[str, ...] = ("image", "text")

    def attach(self, image: Callable[[torch.Tensor], torch.Tensor] | None = None, text: Any = None, *,
               video: Callable[[torch.Tensor], torch.Tensor] | None = None, audio: Any = None) -> None:
        """Each configured encoder's preprocessing: ``self.transforms[modality]`` (the tokenizer is also
        ``self.tokenizer``, the image transform ``self.image_transform``)."""
        given = {"image": image, "video": video, "audio": audio, "text": text}
        self.transforms = {m: t for m, t in given.items() if t is not None}
        self.image_transform = image
        self.tokenizer = text

    def check_modalities(self, configured: tuple[str, ...], where: str) -> None:
        """One line when a configured encoder's modality is not among the data's ``modalities``."""
        missing = [m for m in configured if m not in self.modalities]
        if missing:
            raise MMFuseError(
                f"{where} provides {', '.join(self.modalities)}, but encoder.{missing[0]} is configured and the data "
                f"has no {missing[0]}: set encoder.{missing[0]}=none, or choose a dataset with {missing[0]}")

    def check_video_frames(self, frames: int, where: str) -> None:
        """For data whose clips have ``frames`` frames: one line when the video encoder asks for another
        number (``encoder.video.frames``, which only datasets of video files can honour)."""
        wanted = getattr(self.transforms.get("video"), "frames", None)
        if wanted is not None and int(wanted) != int(frames):
            raise MMFuseError(f"encoder.video.frames={wanted} but {where} clips have data.frames={frames} frames: set "
                              f"data.frames={wanted} (or leave encoder.video.frames at its default, data.frames)")

    # -- to implement -------------------------------------------------------------------------------
    def build_split(self, name: str) -> Dataset | None:
        raise NotImplementedError

    def train_texts(self) -> list[str]:
        """Captions to fit a data-built vocabulary on (only called when the tokenizer needs it)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Sizes and composition of the splits, for ``results.json``."""
        return {name: len(ds) for name, ds in self.splits.items() if ds is not None}

    # -- Lightning hooks ----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if not self.transforms:
            raise RuntimeError("call datamodule.attach(image=..., text=..., ...) with the encoders' preprocessing "
                               "before setup()")
        self.prepare_tokenizer()
        self.splits = {name: self.build_split(name) for name in SPLITS}
        if self.captioning is not None:
            self.splits = self.captioning_splits(self.splits)
        if self.feature_cache is not None:
            self.splits = self.feature_cache.wrap(self.splits, trainer=self.trainer)

    def caption_references(self, name: str, dataset: Dataset) -> list[list[str]]:
        """Per image of split ``name``, its reference captions (default: its positive pairs' texts,
        ``mmfuse.data.captioning.references_from_pairs``)."""
        return references_from_pairs(dataset, f"data={type(self).__name__}, {name} split")

    def caption_diagnostics(self, name: str) -> Callable[[list[int], list[str]], dict[str, float]] | None:
        """A data-specific check of generated captions, ``(image ids, captions) -> {metric: value}``,
        logged beside the caption metrics (shapes: grounding per attribute); None by default."""
        return None

    def captioning_splits(self, splits: dict[str, Dataset | None]) -> dict[str, Dataset | None]:
        """The splits as captioning pairs (``mmfuse.data.captioning``); the decoder's vocabulary is fitted
        on the training references when it is built from data."""
        targets = self.captioning
        refs = {name: self.caption_references(name, ds) for name, ds in splits.items() if ds is not None}
        if "train" not in refs:
            raise MMFuseError(f"task=captioning: data={type(self).__name__} has no train split")
        if not targets.tokenizer.fitted:
            targets.tokenizer.fit([r for rs in refs["train"] for r in rs])
        prompt = self.tokenizer([targets.prompt]) if self.tokenizer is not None else None
        out: dict[str, Dataset | None] = {}
        for name, ds in splits.items():
            if ds is None:
                out[name] = None
                continue
            self.caption_references_of[name] = refs[name]
            self.caption_images[name] = ds.images
            out[name] = caption_split(ds, refs[name], targets.tokenizer, targets.max_length, prompt,
                                      train=name == "train", where=f"data={type(self).__name__}, {name} split")
        return out

    def prepare_tokenizer(self) -> None:
        if self.tokenizer is not None and getattr(self.tokenizer, "fitted", True) is False:
            self.tokenizer.fit(self.train_texts())

    def _loader(self, name: str, train: bool) -> DataLoader | None:
        dataset = self.splits.get(name)
        if dataset is None:
            return None
        # samplers that keep a distributed run equal to one process (see mmfuse.data.samplers)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        batch_size = self.batch_size if train else self.eval_batch_size
        if train and isinstance(dataset, PairDataset):  # whole batches of indices, one tensor each
            loader_cls, sampler, batch_size = ResumableLoader, TrainBatches(dataset, self.batch_size, world, rank), None
        elif train:
            loader_cls, sampler = ResumableLoader, TrainOrder(dataset, self.batch_size, world, rank)
        else:
            loader_cls, sampler = DataLoader, EvalShard(dataset, world, rank)
        return loader_cls(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self._pin(),
            persistent_workers=self.persistent_workers,
            collate_fn=collate,
        )

    def _pin(self) -> bool:
        if self.pin_memory != "auto":
            return bool(self.pin_memory)
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """``move_to(batch, device)``: Lightning's generic mover does the same for any collection but walks
        every object (dataclasses by deep copy), a fixed cost on every step."""
        return move_to(batch, device)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def has_split(self, name: str) -> bool:
        return self.splits.get(name) is not None
