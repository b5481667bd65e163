"""``data=shapes_av``: video + audio + text classification whose classes need one, two or all three.

Each split has ``num_<split>`` samples (``clips.py``: a ``shapes_video`` clip, a tone during the
vertical mover's event, a caption that states the rule and a key word); the label is the parity of the
bits the rule names (``labels.py``: ``label = 2 r + XOR_{m in S_r} b_m``, 14 classes, each rule's
interaction type unimodal, bimodal or trimodal). Every (rule, bits) cell is drawn equally often.

Batches (``dataset.py``): ``video``, ``audio`` + ``audio_mask``, ``input_ids`` + ``attention_mask``,
``target``, ``rule``, ``interaction_type``, ``sample_id``. The transforms are the encoders'
(``self.transforms["video"]`` on ``uint8 [T, 3, H, W]``, ``self.transforms["audio"]`` on
``(wave [S], sample_rate)``, resampling to the encoder's rate) and ``self.tokenizer``.

The clips depend only on ``(seed, split, size, frames, image_size)`` and are cached under ``cache_dir``
(when set) by ``data.shapes_video.cache.cached``: plain lists and tensors read with ``weights_only=True``
(a damaged file is drawn again; one holding other Python objects, which could run code, is refused
with an MMFuseError). Soundtracks are made per batch (a split's would take 64 kB a sample at 16 kHz).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfuse.data.pairs import unique_texts
from mmfuse.data.shapes_av.clips import GENERATOR_VERSION, SPLIT_IDS, AVSplit, render_split
from mmfuse.data.shapes_av.dataset import AVDataset
from mmfuse.data.shapes_av.labels import (
    CLASS_NAMES,
    INTERACTION_TYPES,
    NUM_CLASSES,
    RULE_GROUPS,
    RULES,
    interaction_type,
    label,
)
from mmfuse.data.shapes_av.soundtrack import HIGH_HZ
from mmfuse.data.shapes_video.cache import cached
from mmfuse.datamodule import MMFuseDataModule
from mmfuse.errors import MMFuseError

CACHE_FORMAT = 1


def encode(s: AVSplit) -> dict[str, Any]:
    """A split as plain data (tensors, a list of strings) for the cache."""
    return {"rules": torch.from_numpy(s.rules), "bits": torch.from_numpy(s.bits), "vertical": torch.from_numpy(s.vertical),
            "phase": torch.from_numpy(s.phase), "texts": list(s.texts), "video": s.video}


def decode(d: dict[str, Any]) -> AVSplit:
    rules, bits, vertical, phase = (np.asarray(d[k]) for k in ("rules", "bits", "vertical", "phase"))
    return AVSplit(rules, bits, vertical, phase, list(d["texts"]), torch.as_tensor(d["video"]))


class ShapesAVDataModule(MMFuseDataModule):
    modalities = ("video", "audio", "text")

    def __init__(self, num_train: int = 6000, num_val: int = 600, num_test: int = 600, frames: int = 8,
                 image_size: int = 32, sample_rate: int = 16000, seed: int = 0, cache_dir: str | None = None,
                 num_classes: int = NUM_CLASSES, groups: Mapping[str, Sequence[str]] | None = None,
                 group_key: str | None = None, **loader: Any) -> None:
        super().__init__(**loader)
        known = {"interaction_type": list(INTERACTION_TYPES), "rule": list(RULE_GROUPS)}
        if groups is not None and ({str(k): list(v) for k, v in dict(groups).items()} != known or group_key):
            raise MMFuseError(f"data.groups={dict(groups)}: shapes_av's groups are {known} (group_key null), "
                              "or groups=null")
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        for name, n in self.sizes.items():
            if n < 0:
                raise MMFuseError(f"data.num_{name}={n}: must be >= 0 (0: no {name} split)")
        if int(num_classes) != NUM_CLASSES:
            raise MMFuseError(f"data.num_classes={num_classes}: shapes_av has {NUM_CLASSES} classes (2 per rule, "
                              f"{len(RULES)} rules). Fix: leave data.num_classes at {NUM_CLASSES}")
        if int(sample_rate) <= 2 * HIGH_HZ:
            raise MMFuseError(f"data.sample_rate={sample_rate}: the high tone ({HIGH_HZ:g} Hz) needs a rate above "
                              f"{2 * HIGH_HZ:g} Hz. Fix: e.g. data.sample_rate=16000")
        self.frames, self.image_size, self.sample_rate = int(frames), int(image_size), int(sample_rate)
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.num_classes = NUM_CLASSES
        self.class_names = list(CLASS_NAMES)
        self._rendered: dict[str, AVSplit] = {}

    def rendered(self, split: str) -> AVSplit:
        if split not in self._rendered:
            self._rendered[split] = self._load_or_render(split)
        return self._rendered[split]

    def _load_or_render(self, split: str) -> AVSplit:
        args = (split, self.sizes[split], self.frames, self.image_size, self.seed)
        return cached(self.cache_dir, split, [GENERATOR_VERSION, CACHE_FORMAT, *args],
                      lambda: encode(render_split(*args)), decode)

    def train_texts(self) -> list[str]:
        return self.rendered("train").texts

    def build_split(self, name: str) -> AVDataset | None:
        if self.sizes[name] == 0:
            return None
        self.check_video_frames(self.frames, "data=shapes_av")
        s = self.rendered(name)
        distinct, text_index = unique_texts(s.texts)
        rules = torch.from_numpy(s.rules).long()
        fields = {"target": torch.from_numpy(label(s.rules, s.bits)).long(), "rule": rules,
                  "interaction_type": torch.from_numpy(interaction_type(s.rules)).long(),
                  "sample_id": torch.arange(len(rules))}
        return AVDataset(s, name, self.tokenizer(distinct), text_index, fields, self.frames, self.sample_rate,
                         self.seed, self.transforms.get("video"), self.transforms.get("audio"))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"classes": self.class_names}
        for name in SPLIT_IDS:
            if self.sizes[name]:
                s = self.rendered(name)
                labels, kinds = label(s.rules, s.bits), interaction_type(s.rules)
                out[name] = {"samples": self.sizes[name],
                             "interaction_types": {t: int((kinds == i).sum()) for i, t in enumerate(INTERACTION_TYPES)},
                             "classes": {c: int((labels == i).sum()) for i, c in enumerate(CLASS_NAMES)}}
        return out

