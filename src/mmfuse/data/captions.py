"""The base of image-caption datasets (COCO captions, Flickr30k, JSONL pairs): read, check, build.

A subclass reads one split from disk into a ``CaptionSplit`` (image files, captions, which image each
caption describes, and the records it could not use). This base then
1. keeps the first ``num_<split>`` images (all when null), for debugging on a slice of the data;
2. checks every image file (``verify_images``; at most ``max_pixels`` pixels from the header, null: no
   limit) and every caption (empty ones are bad);
3. stops before training with an error naming the file and the first bad records, or skips them
   (``on_bad_sample=skip``: logged, and counted in ``describe()`` -> ``results.json``);
4. keeps at most ``captions_per_image`` captions per image (the first ones in file order; the COCO
   protocol uses 5), the captions of an image next to each other;
5. builds a ``FilePairDataset`` with one positive pair per caption. Batches carry ``image_id`` /
   ``text_id`` (indices of the split's images and captions) and no ``label``: tasks make negatives
   (ITM) or use the other pairs of the batch (retrieval), and a retrieval metric knows which captions
   belong to which image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmfuse.data.image_size import DEFAULT_MAX_PIXELS, check_max_pixels
from mmfuse.data.images import FilePairDataset, ImageFiles
from mmfuse.data.validation import BadRecords, check_images, check_policy
from mmfuse.datamodule import SPLITS, MMFuseDataModule
from mmfuse.errors import MMFuseError

log = logging.getLogger(__name__)


@dataclass
class CaptionSplit:
    """One split as read from disk (before checks): ``caption_image[c]`` indexes ``images``."""

    images: list[Path]
    image_keys: list[str]  # how the source names each image, for messages ("image id 42")
    captions: list[str]
    caption_image: list[int]
    caption_keys: list[str]  # how the source names each caption ("annotation id 7", "line 12")
    bad: BadRecords
    extra: dict[str, Any] = field(default_factory=dict)  # per-caption fields (e.g. labels), same order

    def select(self, keep_images: list[int], keep_captions: list[int]) -> CaptionSplit:
        """The split restricted to ``keep_images`` and to the captions in ``keep_captions`` (re-indexed)."""
        new_index = {old: new for new, old in enumerate(keep_images)}
        kept = [c for c in keep_captions if self.caption_image[c] in new_index]
        return CaptionSplit(
            images=[self.images[i] for i in keep_images],
            image_keys=[self.image_keys[i] for i in keep_images],
            captions=[self.captions[c] for c in kept],
            caption_image=[new_index[self.caption_image[c]] for c in kept],
            caption_keys=[self.caption_keys[c] for c in kept],
            bad=self.bad,
            extra={k: [v[c] for c in kept] for k, v in self.extra.items()},
        )


class CaptionDataModule(MMFuseDataModule):
    dataset_name = "captions"

    def __init__(
        self,
        root: str,
        captions_per_image: int | None = 5,
        on_bad_sample: str = "error",
        verify_images: str = "quick",
        num_train: int | None = None,
        num_val: int | None = None,
        num_test: int | None = None,
        image_size: int = 224,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        check_policy(on_bad_sample, verify_images)
        self.max_pixels = check_max_pixels(max_pixels)
        self.root = Path(str(root)).expanduser()
        if not self.root.is_dir():
            raise MMFuseError(f"data.root={root!r}: {self.root.resolve()} is not a folder. Fix: "
                              f"data.root=<your copy of {self.dataset_name}> (see README: Real data)")
        self.captions_per_image = int(captions_per_image) if captions_per_image else None
        self.on_bad_sample = on_bad_sample
        self.verify_images = verify_images
        self.limits = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size = int(image_size)  # the encoders' input size when they have no preprocessing of their own
        self._splits: dict[str, CaptionSplit | None] = {}
        self._stats: dict[str, dict[str, Any]] = {}
        self._stores: dict[str, ImageFiles] = {}

    # -- to implement -------------------------------------------------------------------------------
    def read_split(self, name: str) -> CaptionSplit | None:
        raise NotImplementedError

    # -- checks -------------------------------------------------------------------------------------
    def split(self, name: str) -> CaptionSplit | None:
        """The checked split (read once)."""
        if name not in self._splits:
            raw = self.read_split(name)
            self._splits[name] = None if raw is None else self._check(name, raw)
        return self._splits[name]

    def _check(self, name: str, raw: CaptionSplit) -> CaptionSplit:
        limit = self.limits.get(name)
        images = list(range(len(raw.images)))[: int(limit)] if limit is not None else list(range(len(raw.images)))
        captions_of: dict[int, list[int]] = {i: [] for i in images}
        for c, i in enumerate(raw.caption_image):
            if i in captions_of:
                captions_of[i].append(c)
        bad = raw.bad
        for i, reason in sorted(self.check_files([raw.images[i] for i in images]).items()):
            i = images[i]
            bad.add(reason, f"{raw.image_keys[i]} ({raw.images[i]}, {len(captions_of[i])} caption(s))")
            captions_of.pop(i)
        for i, cs in captions_of.items():
            for c in cs:
                if not raw.captions[c].strip():
                    bad.add("empty caption", f"{raw.caption_keys[c]} of {raw.image_keys[i]}")
            captions_of[i] = [c for c in cs if raw.captions[c].strip()]
        bad.resolve(self.on_bad_sample)
        no_caption = [i for i, cs in captions_of.items() if not cs]
        if no_caption:
            log.info("data=%s, %s split: %d image(s) have no caption and are left out (first: %s)",
                     self.dataset_name, name, len(no_caption), raw.image_keys[no_caption[0]])
        keep_images = [i for i, cs in captions_of.items() if cs]
        cap = self.captions_per_image
        over = sum(max(0, len(captions_of[i]) - cap) for i in keep_images) if cap else 0
        keep_captions = [c for i in keep_images for c in (captions_of[i][:cap] if cap else captions_of[i])]
        checked = raw.select(keep_images, keep_captions)
        if not checked.images:
            raise MMFuseError(f"data={self.dataset_name}, {name} split: no usable image-caption pairs "
                              f"(under {self.root}). Fix: check data.root and the annotation files.")
        counts = torch.bincount(torch.tensor(checked.caption_image), minlength=len(checked.images))
        self._stats[name] = {
            "images": len(checked.images),
            "captions": len(checked.captions),
            "captions_per_image": {"min": int(counts.min()), "max": int(counts.max())},
            "images_without_captions": len(no_caption),
            "captions_over_limit": over,
            "skipped": bad.summary() if len(bad) else {"count": 0},
        }
        return checked

    def check_files(self, images: list[Any]) -> dict[int, str]:
        """``{index: reason}`` for the unusable files among a split's ``images`` (a subclass with other
        items, e.g. ``mmfuse.data.media``, checks those)."""
        return check_images(images, self.verify_images, max_pixels=self.max_pixels)

    # -- MMFuseDataModule ---------------------------------------------------------------------------
    def train_texts(self) -> list[str]:
        train = self.split("train")
        if train is None:
            raise MMFuseError(f"data={self.dataset_name}: no train split to fit the tokenizer vocabulary on")
        return train.captions

    def pair_fields(self, name: str, split: CaptionSplit) -> dict[str, torch.Tensor]:
        """Per-pair tensors beyond the ids (none for captions; labels for JSONL)."""
        return {}

    def build_split(self, name: str) -> FilePairDataset | None:
        split = self.split(name)
        if split is None:
            return None
        store = self._stores[name] = ImageFiles(split.images, self.max_pixels)
        n = len(split.captions)
        return FilePairDataset(
            images=store,
            # one row per caption: retrieval counts captions, not strings
            text=self.tokenizer(split.captions) if self.tokenizer is not None else None,
            texts=split.captions,
            image_index=torch.tensor(split.caption_image, dtype=torch.long),
            text_index=torch.arange(n),
            fields=self.pair_fields(name, split),
            transform=self.image_transform,
        )

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": self.dataset_name, "root": str(self.root),
                               "on_bad_sample": self.on_bad_sample, "verify_images": self.verify_images,
                               "max_pixels": self.max_pixels}
        for name in SPLITS:
            if name in self._stats:
                stats = dict(self._stats[name])
                if name in self._stores:
                    stats["failed_at_load"] = self._stores[name].failures()
                out[name] = stats
        return out
