"""``data=shapes``: the embedded default dataset for image-text matching, made on first use.

Each split has ``num_<split>`` procedurally drawn scenes (see ``scene.py``). Every image appears in two
pairs: with its true caption (label 1) and with one negative caption (label 0) whose type is drawn
with probability proportional to ``negatives[type]`` (see ``negatives.py``). Scenes depend only on
``(seed, split, size)``; the negatives also on the weights. Rendered scenes are cached under
``cache_dir`` (when set) so later runs and sweep jobs skip the drawing: a ``torch.save`` of plain
lists, strings, floats and the image tensor, read with ``weights_only=True`` (a damaged file is drawn
again; one holding other Python objects, which could run code, is refused with an MMFuseError).

``curriculum`` (optional) changes the *training* negative mix over the epochs, from easy to hard: a list
of stages ``{epochs: N, negatives: {...}}`` applied in order, then ``negatives`` for the remaining
epochs; validation and test always use ``negatives``. It needs
``trainer.reload_dataloaders_every_n_epochs=1`` so that each epoch gets its stage's pairs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfuse.data.atomic import atomic_torch_save, load_plain
from mmfuse.data.pairs import PairDataset, TensorImages, unique_texts
from mmfuse.data.shapes.caption_check import grounding_accuracy, scene_references
from mmfuse.data.shapes.negatives import NEGATIVE_TYPES, make_negative
from mmfuse.data.shapes.scene import Caption, Obj, Scene, describe, draw, sample_scene
from mmfuse.datamodule import MMFuseDataModule
from mmfuse.errors import MMFuseError
from mmfuse.types import PAIR_TYPES

GENERATOR_VERSION = 1
CACHE_FORMAT = 2  # 2: scenes and captions as plain lists (1 pickled the dataclasses)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def render_split(split: str, n: int, image_size: int, seed: int) -> tuple[list[Scene], list[Caption], torch.Tensor]:
    """``n`` scenes, one true caption each, and their images ``uint8 [n, 3, S, S]``."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], GENERATOR_VERSION])
    scenes = [sample_scene(rng, image_size) for _ in range(n)]
    captions = [describe(s, rng) for s in scenes]
    images = np.stack([draw(s, image_size, rng) for s in scenes]) if n else np.zeros((0, 3, image_size, image_size), np.uint8)
    return scenes, captions, torch.from_numpy(images)


def negative_weights(negatives: Mapping[str, float], types: Sequence[str] = NEGATIVE_TYPES) -> np.ndarray:
    """The probability of each of ``types`` (a dataset's negative types), from relative weights."""
    unknown = set(negatives) - set(types)
    if unknown:
        raise MMFuseError(f"data.negatives has unknown types {sorted(unknown)}; known: {list(types)}")
    w = np.array([float(negatives.get(t, 0.0)) for t in types])
    if (w < 0).any() or w.sum() <= 0:
        raise MMFuseError(f"data.negatives={dict(negatives)} needs non-negative weights with a positive sum")
    return w / w.sum()


def make_pairs(scenes: list[Scene], captions: list[Caption], weights: np.ndarray, seed: int,
               split: str) -> tuple[list[int], list[str], list[int]]:
    """Image index, caption text and pair type (index into ``PAIR_TYPES``) of every pair."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], GENERATOR_VERSION, 1])
    kinds = rng.choice(len(NEGATIVE_TYPES), size=len(scenes), p=weights)
    image_index, texts, types = [], [], []
    for i, (scene, caption) in enumerate(zip(scenes, captions, strict=True)):
        kind = NEGATIVE_TYPES[kinds[i]]
        negative = make_negative(kind, scene, caption, captions, rng)
        image_index += [i, i]
        texts += [caption.text(), negative.text()]
        types += [0, PAIR_TYPES.index(kind)]
    return image_index, texts, types


def parse_curriculum(curriculum: Sequence[Mapping[str, Any]] | None) -> list[tuple[int, dict[str, float], np.ndarray]]:
    """``[{epochs, negatives}, ...]`` -> ``[(epochs, negatives, weights), ...]``, checked."""
    stages = []
    for i, stage in enumerate(curriculum or []):
        where = f"data.curriculum[{i}]"
        if not isinstance(stage, Mapping) or set(stage) != {"epochs", "negatives"}:
            raise MMFuseError(f"{where}={stage!r}: expected {{epochs: <int>, negatives: {{type: weight, ...}}}}")
        epochs = stage["epochs"]
        if not isinstance(epochs, int) or epochs < 1:
            raise MMFuseError(f"{where}.epochs={epochs!r}: must be a positive integer")
        try:
            weights = negative_weights(stage["negatives"])
        except MMFuseError as e:
            raise MMFuseError(f"{where}.negatives: {e}") from None
        stages.append((epochs, dict(stage["negatives"]), weights))
    return stages


def load_cached_split(path: Path) -> tuple[list[Scene], list[Caption], torch.Tensor] | None:
    """A cache file written by ``_load_or_render``, or None when it is damaged (to be drawn again)."""
    cached = load_plain(path)
    if cached is None:
        return None
    try:
        scenes = [Scene(tuple(Obj(*o) for o in objects)) for objects in cached["scenes"]]  # type: ignore[arg-type]
        return scenes, [Caption(*c) for c in cached["captions"]], cached["images"]
    except (KeyError, TypeError):
        return None


class ShapesDataModule(MMFuseDataModule):
    def __init__(
        self,
        num_train: int = 20000,
        num_val: int = 2000,
        num_test: int = 2000,
        image_size: int = 32,
        negatives: Mapping[str, float] | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        curriculum: Sequence[Mapping[str, Any]] | None = None,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.image_size = int(image_size)
        self.negatives = dict(negatives or {"other": 1.0, "color": 1.0, "shape": 1.0})
        self.weights = negative_weights(self.negatives)
        self.curriculum = parse_curriculum(curriculum)
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._rendered: dict[str, tuple[list[Scene], list[Caption], torch.Tensor]] = {}
        self._pairs: dict[tuple[str, int], tuple[list[int], list[str], list[int]]] = {}
        self._train_stage = len(self.curriculum)  # the stage whose pairs splits["train"] holds

    def rendered(self, split: str) -> tuple[list[Scene], list[Caption], torch.Tensor]:
        if split not in self._rendered:
            self._rendered[split] = self._load_or_render(split)
        return self._rendered[split]

    def _load_or_render(self, split: str) -> tuple[list[Scene], list[Caption], torch.Tensor]:
        args = (split, self.sizes[split], self.image_size, self.seed)
        if self.cache_dir is None:
            return render_split(*args)
        key = hashlib.sha256(json.dumps([GENERATOR_VERSION, CACHE_FORMAT, *args]).encode()).hexdigest()[:16]
        path = self.cache_dir / f"{split}-{key}.pt"
        if path.exists():
            cached = load_cached_split(path)
            if cached is not None:
                return cached
        scenes, captions, images = render_split(*args)
        atomic_torch_save({"scenes": [[astuple(o) for o in s.objects] for s in scenes],
                           "captions": [astuple(c) for c in captions], "images": images}, path)
        return scenes, captions, images

    def stage_at(self, epoch: int) -> int:
        """Index of the curriculum stage that trains epoch ``epoch`` (``len(curriculum)``: ``negatives``)."""
        end = 0
        for i, (epochs, _, _) in enumerate(self.curriculum):
            end += epochs
            if epoch < end:
                return i
        return len(self.curriculum)

    def pairs(self, split: str, stage: int | None = None) -> tuple[list[int], list[str], list[int]]:
        """The split's pairs; for ``train``, those of curriculum ``stage`` (default: the final mix)."""
        stage = len(self.curriculum) if stage is None or split != "train" else stage
        if (split, stage) not in self._pairs:
            scenes, captions, _ = self.rendered(split)
            weights = self.curriculum[stage][2] if stage < len(self.curriculum) else self.weights
            self._pairs[split, stage] = make_pairs(scenes, captions, weights, self.seed, split)
        return self._pairs[split, stage]

    def train_texts(self) -> list[str]:
        return self.pairs("train")[1]

    def setup(self, stage: str | None = None) -> None:
        if self.curriculum and not self.splits:
            self._train_stage = self.stage_at(self._current_epoch())
        super().setup(stage)

    def _current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def train_dataloader(self) -> Any:
        if self.curriculum:
            trainer = getattr(self, "trainer", None)
            if trainer is not None and trainer.reload_dataloaders_every_n_epochs != 1:
                raise MMFuseError(
                    "data.curriculum changes the training pairs every epoch: set "
                    "trainer.reload_dataloaders_every_n_epochs=1 (the fusion_zoo experiments do)"
                )
            stage = self.stage_at(self._current_epoch())
            if stage != self._train_stage:
                self._train_stage = stage
                self.splits["train"] = self.build_split("train")
        return super().train_dataloader()

    def build_split(self, name: str) -> PairDataset | None:
        if self.sizes[name] == 0:
            return None
        _, _, images = self.rendered(name)
        image_index, texts, types = self.pairs(name, self._train_stage if name == "train" else None)
        distinct, text_index = unique_texts(texts)
        types_t = torch.tensor(types, dtype=torch.long)
        return PairDataset(
            images=TensorImages(images),
            text=self.tokenizer(distinct) if self.tokenizer is not None else None,
            texts=distinct,
            image_index=torch.tensor(image_index, dtype=torch.long),
            text_index=text_index,
            fields={"label": (types_t == 0).float(), "pair_type": types_t},
            transform=self.image_transform,
        )

    def caption_references(self, name: str, dataset: Any) -> list[list[str]]:
        """Both true descriptions of each scene (either object first), the scene's object order."""
        return [scene_references(scene) for scene in self.rendered(name)[0]]

    def caption_diagnostics(self, name: str) -> Any:
        """Grounding per attribute of generated captions (``mmfuse.data.shapes.caption_check``)."""
        scenes = self.rendered(name)[0]
        return lambda image_ids, texts: grounding_accuracy([scenes[i] for i in image_ids], texts)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"negatives": self.negatives}
        if self.curriculum:
            out["curriculum"] = [{"epochs": e, "negatives": n} for e, n, _ in self.curriculum]
        for name in SPLIT_IDS:
            if self.sizes[name]:
                types = self.pairs(name)[2]
                out[name] = {"images": self.sizes[name], "pairs": len(types),
                             "pair_types": {t: types.count(i) for i, t in enumerate(PAIR_TYPES) if types.count(i)}}
        return out
