"""``data=shapes_dialog``: the embedded visual dialog benchmark, made on first use (no download).

Each split has ``num_<split>`` drawn scenes of two or three objects (``scenes.py``), each one dialog:
the caption ``rounds.CAPTION`` (the same for every scene, so it tells nothing) and ``rounds`` rounds of
(question, answer) (``rounds.py``: the image / history round kinds, the referent rule, the balance).
Every round is evaluated, with ``num_options`` candidates from the answer vocabulary ``ANSWERS`` (the
split's ``answers``) and dense relevance ``1.0`` for every candidate that states the round's true value
(paraphrases of the ground truth included), ``0.0`` otherwise. Splits depend only on ``(seed, split,
num_<split>, image_size, rounds, num_options)``; they are cached under ``cache_dir`` (when set) as a
``torch.save`` of plain lists and tensors, read with ``weights_only=True`` (a damaged file is made
again; one holding other Python objects is refused with an MMFuseError).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfuse.data.atomic import atomic_torch_save, load_plain
from mmfuse.data.dialog import DialogDataModule, DialogSplit
from mmfuse.data.pairs import TensorImages
from mmfuse.data.shapes.scene import Obj, draw
from mmfuse.data.shapes_dialog.rounds import (
    ANSWERS,
    CAPTION,
    KIND_NAMES,
    VALUES,
    Round,
    make_options,
    plan_dialog,
)
from mmfuse.data.shapes_dialog.scenes import DialogScene, sample_scene
from mmfuse.errors import MMFuseError

GENERATOR_VERSION = 2  # 2: every answer of the ground truth's form among the candidates
CACHE_FORMAT = 1
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass
class Rendered:
    """One split: ``D`` scenes, their dialogs (``rounds`` each), candidates ``[D * rounds, K]`` in
    dialog-major order, the ground truth's position ``[D * rounds]`` and images ``uint8 [D, 3, S, S]``."""

    scenes: list[DialogScene]
    dialogs: list[list[Round]]
    options: np.ndarray
    gt_index: np.ndarray
    images: torch.Tensor


def make_dialogs(split: str, n: int, image_size: int, seed: int, rounds: int,
                 num_options: int) -> tuple[list[DialogScene], list[list[Round]], np.ndarray, np.ndarray]:
    """The scenes, dialogs and candidates of a split (no drawing)."""
    base = [seed, SPLIT_IDS[split], GENERATOR_VERSION]
    scene_rng, round_rng, option_rng = (np.random.default_rng([*base, k]) for k in range(3))
    scenes = [sample_scene(scene_rng, image_size) for _ in range(n)]
    dialogs = [plan_dialog(s, rounds, round_rng) for s in scenes]
    options, gt_index = make_options([r.answer for d in dialogs for r in d], num_options, option_rng)
    return scenes, dialogs, options, gt_index


def render_split(split: str, n: int, image_size: int, seed: int, rounds: int, num_options: int) -> Rendered:
    scenes, dialogs, options, gt_index = make_dialogs(split, n, image_size, seed, rounds, num_options)
    draw_rng = np.random.default_rng([seed, SPLIT_IDS[split], GENERATOR_VERSION, 3])
    images = (np.stack([draw(s, image_size, draw_rng) for s in scenes]) if n  # type: ignore[arg-type]
              else np.zeros((0, 3, image_size, image_size), np.uint8))
    return Rendered(scenes, dialogs, options, gt_index, torch.from_numpy(images))


def relevance_of(options: np.ndarray, values: list[str]) -> np.ndarray:
    """``[N, K]`` float32: 1.0 where candidate ``options[n, k]`` states ``values[n]``."""
    index = {v: i for i, v in enumerate(dict.fromkeys(VALUES))}
    answer_value = np.array([index[v] for v in VALUES])
    round_value = np.array([index[v] for v in values])
    return (answer_value[options] == round_value[:, None]).astype(np.float32)


def _to_plain(r: Rendered) -> dict[str, Any]:
    return {"scenes": [[astuple(o) for o in s.objects] for s in r.scenes],
            "dialogs": [[astuple(x) for x in d] for d in r.dialogs],
            "options": torch.from_numpy(r.options), "gt_index": torch.from_numpy(r.gt_index), "images": r.images}


def load_cached_split(path: Path) -> Rendered | None:
    """A cache file written by ``ShapesDialogDataModule``, or None when it is damaged (to be made again)."""
    cached = load_plain(path)
    if cached is None:
        return None
    try:
        scenes = [DialogScene(tuple(Obj(*o) for o in objs)) for objs in cached["scenes"]]
        dialogs = [[Round(*x) for x in d] for d in cached["dialogs"]]
        return Rendered(scenes, dialogs, cached["options"].numpy(), cached["gt_index"].numpy(), cached["images"])
    except (KeyError, TypeError, AttributeError):
        return None


class ShapesDialogDataModule(DialogDataModule):
    dataset_name = "shapes_dialog"

    def __init__(self, num_train: int = 2000, num_val: int = 300, num_test: int = 300, image_size: int = 32,
                 rounds: int = 10, num_options: int = 100, seed: int = 0, cache_dir: str | None = None,
                 **loader: Any) -> None:
        super().__init__(**loader)
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.image_size = int(image_size)
        self.rounds = int(rounds)
        self.num_options = int(num_options)
        if self.rounds < 1:
            raise MMFuseError(f"data.rounds={rounds!r}: a dialog needs at least 1 round")
        if not 2 <= self.num_options <= len(ANSWERS):
            raise MMFuseError(f"data.num_options={num_options!r}: expected 2 to {len(ANSWERS)} (the answer "
                              "vocabulary's size, mmfuse.data.shapes_dialog.rounds.ANSWERS)")
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._rendered: dict[str, Rendered] = {}

    def rendered(self, split: str) -> Rendered:
        if split not in self._rendered:
            self._rendered[split] = self._load_or_render(split)
        return self._rendered[split]

    def _load_or_render(self, split: str) -> Rendered:
        args = (split, self.sizes[split], self.image_size, self.seed, self.rounds, self.num_options)
        if self.cache_dir is None:
            return render_split(*args)
        key = hashlib.sha256(json.dumps([GENERATOR_VERSION, CACHE_FORMAT, *args]).encode()).hexdigest()[:16]
        path = self.cache_dir / f"{split}-{key}.pt"
        if path.exists():
            cached = load_cached_split(path)
            if cached is not None:
                return cached
        rendered = render_split(*args)
        atomic_torch_save(_to_plain(rendered), path)
        return rendered

    def read_dialogs(self, name: str) -> DialogSplit | None:
        n = self.sizes[name]
        if n == 0:
            return None
        r = self.rendered(name)
        flat = [x for d in r.dialogs for x in d]
        return DialogSplit(
            images=TensorImages(r.images),
            image_keys=[f"{name}/{i}" for i in range(n)],
            captions=[CAPTION] * n,
            questions=[[x.question for x in d] for d in r.dialogs],
            round_answers=[[x.answer for x in d] for d in r.dialogs],
            dialog=np.repeat(np.arange(n), self.rounds),
            round=np.tile(np.arange(self.rounds), n),
            options=r.options,
            gt_index=r.gt_index,
            answers=list(ANSWERS),
            relevance=relevance_of(r.options, [x.value for x in flat]),
            kind=np.array([x.kind for x in flat], dtype=np.int64),
            kind_names=KIND_NAMES,
            stats={"objects": {str(k): v for k, v in sorted(Counter(len(s.objects) for s in r.scenes).items())},
                   "question_types": dict(sorted(Counter(x.qtype for x in flat).items()))},
        )
