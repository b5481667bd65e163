"""``data=shapes_vqa``: an embedded VQA benchmark, one question per drawn scene (``questions.py``).

Split ``s`` holds ``num_<s>`` (image, question, answer) samples, drawn from
``numpy.random.default_rng([seed, split id, GENERATOR_VERSION])``: all questions and scenes first, then
the images, so everything depends only on ``(seed, split, num_<split>, image_size)``. Rendered splits
are cached under ``cache_dir`` as ``data=shapes`` does (``torch.save`` of plain lists and the image
tensor, read with ``weights_only=True``; a damaged file is drawn again).

Batches follow ``mmfuse.data.vqa``'s contract with one ground-truth answer ``a`` (index in
``vocabulary()``) per question: ``answer_ids = [[a]]``, ``answer_scores = [[1.0]]``,
``answer_accuracy_ids = [[a]]``, ``answer_accuracy = [[1.0]]`` (so ``vqa_acc`` is exact-match accuracy),
and ``question_type`` (index in ``question_types()``). With ``answer_generation`` set (``task.answer=
generate``) also ``caption_ids`` / ``caption_mask`` (the answer's decoder tokens; a decoder vocabulary
built from data is fitted on ``VOCABULARY``, every possible answer) and ``question_index``; ``human_answers_of[split]``
gives each question ten identical human answers, so ``official_accuracy`` (leave-one-out over the
humans) is exactly 1 or 0: with a single human answer it would be 0 whatever the prediction.

Question-only prior (``question_prior(split)``): predict for each question text its most frequent answer
in train (ties: first in ``VOCABULARY`` order; a text unseen in train: the most frequent train answer
overall), and report its accuracy on ``split`` per type and ``overall``; the floor any model that
ignores the image is held to.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import astuple
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfuse.data.atomic import atomic_torch_save, load_plain
from mmfuse.data.pairs import PairDataset, TensorImages, unique_texts
from mmfuse.data.shapes.scene import Obj
from mmfuse.data.shapes_vqa.questions import QUESTION_TYPES, VOCABULARY, Question, sample
from mmfuse.data.shapes_vqa.scenes import render
from mmfuse.datamodule import MMFuseDataModule
from mmfuse.errors import MMFuseError

GENERATOR_VERSION = 1
CACHE_FORMAT = 1
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
HUMANS = 10  # identical human answers per question (see the module docstring)

Rendered = tuple[list[Question], list[tuple[Obj, ...]], torch.Tensor]


def render_split(split: str, n: int, image_size: int, seed: int) -> Rendered:
    """``n`` questions, their scenes' objects and images ``uint8 [n, 3, S, S]``."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], GENERATOR_VERSION])
    drawn = [sample(rng, image_size) for _ in range(n)]
    questions, scenes = [q for q, _ in drawn], [s for _, s in drawn]
    return questions, scenes, torch.from_numpy(render(scenes, image_size, rng))


def load_cached_split(path: Path) -> Rendered | None:
    cached = load_plain(path)
    if cached is None:
        return None
    try:
        questions = [Question(*q) for q in cached["questions"]]
        scenes = [tuple(Obj(*o) for o in objs) for objs in cached["scenes"]]
        return questions, scenes, cached["images"]
    except (KeyError, TypeError):
        return None


def prior_answers(train: list[Question]) -> tuple[dict[str, str], str]:
    """Per question text its most frequent train answer (ties: vocabulary order), and the overall one."""
    rank = {a: i for i, a in enumerate(VOCABULARY)}
    by_text: dict[str, Counter] = defaultdict(Counter)
    for q in train:
        by_text[q.text][q.answer] += 1

    def best(counts: Counter) -> str:
        return min(counts, key=lambda a: (-counts[a], rank[a]))

    overall = Counter(q.answer for q in train)
    return {t: best(c) for t, c in by_text.items()}, best(overall) if overall else VOCABULARY[0]


def prior_accuracy(train: list[Question], questions: list[Question]) -> dict[str, float]:
    """``{type: accuracy, "overall": accuracy}`` of the question-only prior (module docstring); types
    without questions in ``questions`` are left out."""
    answers, fallback = prior_answers(train)
    hits: dict[str, list[bool]] = defaultdict(list)
    for q in questions:
        hit = answers.get(q.text, fallback) == q.answer
        hits[q.type].append(hit)
        hits["overall"].append(hit)
    return {t: sum(h) / len(h) for t in (*QUESTION_TYPES, "overall") if (h := hits.get(t))}


def raw_pixels(images: torch.Tensor) -> torch.Tensor:
    """The transform without an image encoder (``encoder.image=none``): the batches' pixels go unread."""
    return images


class ShapesVQADataModule(MMFuseDataModule):
    def __init__(self, num_train: int = 40000, num_val: int = 2000, num_test: int = 2000, image_size: int = 32,
                 seed: int = 0, cache_dir: str | None = None, num_answers: int = len(VOCABULARY),
                 **loader: Any) -> None:
        super().__init__(**loader)
        if int(num_answers) != len(VOCABULARY):
            raise MMFuseError(f"data.num_answers={num_answers}: data=shapes_vqa has exactly {len(VOCABULARY)} "
                              f"answers; Fix: leave data.num_answers at {len(VOCABULARY)}")
        self.num_answers = len(VOCABULARY)
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._rendered: dict[str, Rendered] = {}
        self.answer_generation: Any = None  # AnswerTargets, set by task.answer=generate before setup
        self.human_answers_of: dict[str, list[list[str]]] = {}

    @staticmethod
    def vocabulary() -> list[str]:
        return list(VOCABULARY)

    @staticmethod
    def question_types() -> tuple[str, ...]:
        return QUESTION_TYPES

    def rendered(self, split: str) -> Rendered:
        if split not in self._rendered:
            self._rendered[split] = self._load_or_render(split)
        return self._rendered[split]

    def _load_or_render(self, split: str) -> Rendered:
        args = (split, self.sizes[split], self.image_size, self.seed)
        if self.cache_dir is None:
            return render_split(*args)
        key = hashlib.sha256(json.dumps(["shapes_vqa", GENERATOR_VERSION, CACHE_FORMAT, *args]).encode()).hexdigest()
        path = self.cache_dir / f"{split}-{key[:16]}.pt"
        if path.exists() and (cached := load_cached_split(path)) is not None:
            return cached
        questions, scenes, images = render_split(*args)
        atomic_torch_save({"questions": [list(astuple(q)) for q in questions],
                           "scenes": [[list(astuple(o)) for o in objs] for objs in scenes], "images": images}, path)
        return questions, scenes, images

    def questions(self, split: str) -> list[Question]:
        return self.rendered(split)[0]

    def question_type_ids(self, split: str) -> list[int]:
        """Per question of ``split`` (``question_index`` order), its type's index in ``question_types()``."""
        return [QUESTION_TYPES.index(q.type) for q in self.questions(split)]

    def question_prior(self, split: str) -> dict[str, float]:
        return prior_accuracy(self.questions("train"), self.questions(split))

    def train_texts(self) -> list[str]:
        return [q.text for q in self.questions("train")]

    def build_split(self, name: str) -> PairDataset | None:
        if self.sizes[name] == 0:
            return None
        questions, _, images = self.rendered(name)
        n = len(questions)
        distinct, text_index = unique_texts([q.text for q in questions])
        answer = torch.tensor([[VOCABULARY.index(q.answer)] for q in questions], dtype=torch.long)
        fields = {"answer_ids": answer, "answer_scores": torch.ones(n, 1), "answer_accuracy_ids": answer.clone(),
                  "answer_accuracy": torch.ones(n, 1),
                  "question_type": torch.tensor(self.question_type_ids(name), dtype=torch.long)}
        if self.answer_generation is not None:
            fields.update(self.answer_fields(name, questions))
        return PairDataset(images=TensorImages(images), text=self.tokenizer(distinct) if self.tokenizer else None,
                           texts=distinct, image_index=torch.arange(n), text_index=text_index, fields=fields,
                           transform=self.image_transform or raw_pixels)

    def answer_fields(self, name: str, questions: list[Question]) -> dict[str, torch.Tensor]:
        targets = self.answer_generation
        if not targets.tokenizer.fitted:
            targets.tokenizer.fit(list(VOCABULARY))  # the closed answer set: no answer is unknown to the decoder
        ids, mask = targets.tokenizer.encode([q.answer for q in questions], targets.max_length)
        self.human_answers_of[name] = [[q.answer] * HUMANS for q in questions]
        return {"caption_ids": ids, "caption_mask": mask, "question_index": torch.arange(len(questions))}

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_answers": self.num_answers}
        for name in SPLIT_IDS:
            if self.sizes[name]:
                types = Counter(q.type for q in self.questions(name))
                out[name] = {"questions": self.sizes[name], "question_types": {t: types[t] for t in QUESTION_TYPES}}
                if self.sizes["train"]:
                    out[name]["question_prior"] = self.question_prior(name)
        return out
