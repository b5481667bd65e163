"""``data=vqa_v2``: VQA v2 (Goyal et al. 2017) on COCO 2014 images, answers as soft-scored classes.

Layout under ``data.root`` (as downloaded from visualqa.org and cocodataset.org)::

    v2_OpenEnded_mscoco_train2014_questions.json   v2_mscoco_train2014_annotations.json   train2014/
    v2_OpenEnded_mscoco_val2014_questions.json     v2_mscoco_val2014_annotations.json     val2014/

Questions: ``{"questions": [{"question_id", "image_id", "question"}]}``; annotations:
``{"annotations": [{"question_id", "answers": [{"answer"}, ...10]}]}``. The image of a question is
``image_file`` formatted with its ``image_id``. There is no test split (VQA's test answers are private).
Bad records: ids that are not integers or strings, a question id annotated twice, a question without
an annotation (or whose id the two files write as a string and as an integer), an image id the
``image_file`` pattern cannot format (a string for ``{image_id:012d}``) or a formatted path outside
``root`` (``mmfuse.data.validation.image_path``).

Answers are normalised (lower case, no trailing period, number words as digits, no articles: a subset
of the official normalisation). The vocabulary is the ``num_answers`` most frequent answers over all
human answers of the train split (ties alphabetical). The target of answer ``a`` given by ``n`` of
the 10 annotators: ``soft_score=min3`` -> ``min(n / 3, 1)``; ``soft_score=official`` -> the mean of
``min(n' / 3, 1)`` over the 10 leave-one-annotator-out subsets (0.3, 0.6, 0.9, 1 for n = 1, 2, 3, 4+),
which is what the official evaluation averages. Batches carry ``answer_ids`` / ``answer_scores``
``[B, 10]`` (padded with -1 / 0); the VQA task turns them into dense ``[B, num_answers]`` targets.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from mmfuse.data.captions import CaptionDataModule, CaptionSplit
from mmfuse.data.validation import (
    BadRecords,
    UnknownIds,
    id_problem,
    image_path,
    json_type,
    read_json,
    require_keys,
)
from mmfuse.errors import MMFuseError

SOFT_SCORES = ("min3", "official")
MAX_ANSWERS = 10
_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
_ARTICLES = {"a", "an", "the"}
_SPACES = re.compile(r"\s+")


def normalize_answer(answer: str) -> str:
    words = _SPACES.sub(" ", answer.lower().strip().rstrip(".")).split(" ")
    words = [_NUMBERS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def soft_score(n: int, kind: str = "min3", annotators: int = MAX_ANSWERS) -> float:
    """The target / accuracy of an answer that ``n`` of ``annotators`` gave (see module docstring)."""
    if kind == "min3":
        return min(n / 3.0, 1.0)
    with_it = n * min((n - 1) / 3.0, 1.0)  # leaving out one of the n who gave it
    without = (annotators - n) * min(n / 3.0, 1.0)
    return (with_it + without) / annotators


class VQAv2DataModule(CaptionDataModule):
    dataset_name = "vqa_v2"

    def __init__(
        self,
        root: str,
        questions: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        image_file: dict[str, str] | None = None,
        num_answers: int = 3129,
        soft_score: str = "min3",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, captions_per_image=None, **kwargs)
        if soft_score not in SOFT_SCORES:
            raise MMFuseError(f"data.soft_score={soft_score!r}: expected one of {SOFT_SCORES}")
        self.questions = dict(questions or {})
        self.annotations = dict(annotations or {})
        self.image_file = dict(image_file or {})
        self.num_answers = int(num_answers)
        self.soft_score = soft_score
        self._vocab: list[str] | None = None
        self._answer_stats: dict[str, dict[str, int]] = {}

    def _load(self, name: str) -> tuple[Path, list, Path, dict[Any, Any], BadRecords]:
        qpath, apath = self.root / self.questions[name], self.root / self.annotations[name]
        qdata = read_json(qpath, "VQA questions")
        require_keys(qdata, ["questions"], qpath, "the VQA v2 questions format")
        adata = read_json(apath, "VQA annotations")
        require_keys(adata, ["annotations"], apath, "the VQA v2 annotations format")
        bad = BadRecords(self.dataset_name, name, [qpath, apath])
        answers, first_at = {}, {}
        for n, ann in enumerate(adata["annotations"]):
            if not isinstance(ann, dict) or "question_id" not in ann or not isinstance(ann.get("answers"), list):
                bad.add("annotation without 'question_id' and an 'answers' list", f"annotations[{n}]")
                continue
            if reason := id_problem(ann["question_id"], "question_id"):
                bad.add(reason, f"annotations[{n}]")
                continue
            if ann["question_id"] in first_at:
                bad.add(f"question id annotated twice (first at annotations[{first_at[ann['question_id']]}])",
                        f"annotations[{n}]")
                continue
            first_at[ann["question_id"]] = n
            answers[ann["question_id"]] = [normalize_answer(str(a.get("answer", ""))) for a in ann["answers"]
                                           if isinstance(a, dict)]
        return qpath, qdata["questions"], apath, answers, bad

    def vocabulary(self) -> list[str]:
        """The ``num_answers`` most frequent train answers (ties alphabetical)."""
        if self._vocab is None:
            if not self.questions.get("train"):
                raise MMFuseError("data=vqa_v2 needs a train split (data.questions.train) for its answer vocabulary")
            _, _, _, answers, _ = self._load("train")
            counts = Counter(a for given in answers.values() for a in given if a)
            self._vocab = sorted(counts, key=lambda a: (-counts[a], a))[: self.num_answers]
        return self._vocab

    def read_split(self, name: str) -> CaptionSplit | None:
        if not self.questions.get(name):
            return None
        qpath, questions, _, answers, bad = self._load(name)
        index = {a: i for i, a in enumerate(self.vocabulary())}
        images, image_keys, image_of = [], [], {}
        texts, caption_image, keys, ids, scores = [], [], [], [], []
        no_answer_in_vocab = 0
        unknown = UnknownIds(answers, "the annotations")
        for n, q in enumerate(questions):
            if not isinstance(q, dict) or any(k not in q for k in ("question_id", "image_id", "question")):
                bad.add("question without 'question_id', 'image_id' and 'question'", f"questions[{n}]")
                continue
            reason = id_problem(q["question_id"], "question_id") or id_problem(q["image_id"], "image_id")
            if reason:
                bad.add(reason, f"questions[{n}]")
                continue
            key = f"question id {q['question_id']}"
            if q["question_id"] not in answers:
                bad.add(unknown.reason(q["question_id"], "question without an annotation"), key)
                continue
            if q["image_id"] not in image_of:
                where = self._image(name, q["image_id"])
                if isinstance(where, str):
                    bad.add(where, key)
                    continue
                image_of[q["image_id"]] = len(images)
                images.append(where)
                image_keys.append(f"image id {q['image_id']}")
            counts = Counter(a for a in answers[q["question_id"]] if a in index)
            no_answer_in_vocab += not counts
            given = len(answers[q["question_id"]])
            texts.append(str(q["question"]))
            caption_image.append(image_of[q["image_id"]])
            keys.append(key)
            ids.append([index[a] for a in counts])
            scores.append([soft_score(c, self.soft_score, max(given, 1)) for c in counts.values()])
        self._answer_stats[name] = {"questions_without_vocab_answer": no_answer_in_vocab}
        return CaptionSplit(images, image_keys, texts, caption_image, keys, bad,
                            {"answer_ids": ids, "answer_scores": scores})

    def _image(self, split: str, image_id: int | str) -> Path | str:
        """The image file of ``image_id`` (``image_file`` formatted), or why there is none."""
        pattern = self.image_file[split]
        try:
            relative = pattern.format(image_id=image_id)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            return (f"image id {image_id!r} does not fit data.image_file.{split}={pattern!r} ({json_type(image_id)}: "
                    f"{e}; Fix: write image ids as integers, as VQA v2 does)")
        return image_path(self.root, relative)

    def pair_fields(self, name: str, split: CaptionSplit) -> dict[str, torch.Tensor]:
        n = len(split.captions)
        ids = torch.full((n, MAX_ANSWERS), -1, dtype=torch.long)
        scores = torch.zeros(n, MAX_ANSWERS)
        for row, (a, s) in enumerate(zip(split.extra["answer_ids"], split.extra["answer_scores"])):
            k = min(len(a), MAX_ANSWERS)
            ids[row, :k] = torch.tensor(a[:k], dtype=torch.long)
            scores[row, :k] = torch.tensor(s[:k])
        return {"answer_ids": ids, "answer_scores": scores}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(num_answers=self.num_answers, vocabulary_size=len(self._vocab or []), soft_score=self.soft_score)
        for name, stats in self._answer_stats.items():
            if name in out:
                out[name].update(stats)
        return out
