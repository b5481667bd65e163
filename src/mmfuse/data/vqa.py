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

Vocabulary: the ``num_answers`` most frequent official prediction forms
(``mmfuse.tasks.vqa_answers.normalize_answer``: ``dont`` -> ``don't``, ``t-shirt`` -> ``t shirt``,
``yes!`` -> ``yes``, ``two`` -> ``2``) over all human answers of the train split (ties alphabetical).
The vocabulary holds forms only, so each entry is one distinct answer to the evaluation, and its
entry is what the model predicts.

Training target of entry ``a`` that ``n`` of the question's ``N`` human answers normalise to:
``soft_score=min3`` -> ``min(n / 3, 1)``; ``soft_score=official`` -> the leave-one-out mean
(``leave_one_out_accuracy``: 0.3, 0.6, 0.9, 1 for n = 1, 2, 3, 4+ of 10). Batches carry them as
``answer_ids`` / ``answer_scores`` ``[B, W]`` (W = max(10, most answers of a question in the split);
padded with -1 / 0).

Accuracy: the official evaluation compares the prediction's form with the human answers as given (only
their punctuation processed, and only when they differ), not with their normalised forms, so it can
differ from the target (``two`` x 6 + ``2`` x 2 + ``three`` x 2: target of ``2`` from n = 8, accuracy
0.6 from the two ``2``). Each question's official accuracy of every vocabulary entry that scores above 0
(``vqa_answers.answer_accuracies`` of its raw answers) is in the batch, sparse:
``answer_accuracy_ids`` / ``answer_accuracy`` ``[B, W']`` (W' = most non-zero entries of a question in
the split, at least 1; padded with -1 / 0). ``task=vqa`` reports ``vqa_acc`` from it.

Generative answers (``task=vqa task.answer=generate``, ``mmfuse.tasks.vqa_generate``): the task sets
``answer_generation`` (``AnswerTargets``: the decoder's tokenizer and longest answer) before ``setup``.
Then every pair also carries ``caption_ids`` / ``caption_mask`` (the decoder tokens of the question's
``answer_target``, padded to the split's longest; a question without a usable human answer has an
all-False mask: nothing to train on) and ``question_index`` (the question's index in the split), which
``human_answers_of[split][question_index]`` (the raw human answers, as the official evaluation scores
them) is looked up by. A decoder vocabulary built from data (``tokenizer.fitted`` False) is fitted on
the train split's answer targets first. Without ``answer_generation`` the batches are as above.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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
from mmfuse.tasks.vqa_answers import (
    answer_accuracies,
    ground_truth_forms,
    leave_one_out_accuracy,
    normalize_answer,
    prediction_forms,
)

SOFT_SCORES = ("min3", "official")
MAX_ANSWERS = 10  # the least width of answer_ids / answer_scores (VQA v2 has 10 human answers a question)


def soft_score(n: int, kind: str = "min3", annotators: int = MAX_ANSWERS) -> float:
    """The training target of an answer that ``n`` of ``annotators`` gave (see module docstring)."""
    if kind == "min3":
        return min(n / 3.0, 1.0)
    return leave_one_out_accuracy(n, annotators)


@dataclass(frozen=True)
class AnswerTargets:
    """What ``task.answer=generate`` asks of the data: the decoder's tokenizer (``CaptionTokenizer``) and
    the longest answer in tokens (bos and eos included)."""

    tokenizer: Any
    max_length: int


def answer_target(answers: Sequence[str]) -> str:
    """The answer a generative VQA decoder is trained on for a question with human ``answers``: among the
    distinct non-empty prediction forms ``f = normalize_answer(a)``, the one with the highest official
    accuracy (``leave_one_out_accuracy`` of the ground-truth forms equal to ``f``), ties broken by more
    humans whose answer normalises to ``f``, then alphabetically; ``""`` when there is none. So the target
    is the best-scoring answer the evaluation can accept (``two`` x 6 + ``2`` x 2 + ``three`` x 2 -> ``2``:
    0.6, where ``3`` scores 0 because the humans' ``three`` is compared unnormalised)."""
    forms = Counter(f for f in map(normalize_answer, answers) if f)
    if not forms:
        return ""
    truth = Counter(ground_truth_forms(answers))
    return min(forms, key=lambda f: (-leave_one_out_accuracy(truth[f], len(answers)), -forms[f], f))


def padded(rows: list[list], width: int, fill: float, dtype: torch.dtype) -> torch.Tensor:
    """``[len(rows), width]``: each row's values, then ``fill``; every row must fit (nothing is cut)."""
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=dtype)
    return out


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
        self._forms: dict[str, list[int]] | None = None
        self._answer_stats: dict[str, dict[str, int]] = {}
        self.answer_generation: AnswerTargets | None = None  # set by task.answer=generate before setup
        self.human_answers_of: dict[str, list[list[str]]] = {}  # per split and question (generative answers)

    def _load(self, name: str) -> tuple[Path, list, Path, dict[Any, Any], BadRecords]:
        qpath, apath = self.root / self._file_of("questions", name), self.root / self._file_of("annotations", name)
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
            answers[ann["question_id"]] = [str(a.get("answer", "")) for a in ann["answers"] if isinstance(a, dict)]
        return qpath, qdata["questions"], apath, answers, bad

    def vocabulary(self) -> list[str]:
        """The ``num_answers`` most frequent prediction forms of the train answers (ties alphabetical)."""
        if self._vocab is None:
            if not self.questions.get("train"):
                raise MMFuseError("data=vqa_v2 needs a train split (data.questions.train) for its answer vocabulary")
            _, _, _, answers, _ = self._load("train")
            counts = Counter(f for given in answers.values() for f in map(normalize_answer, given) if f)
            self._vocab = sorted(counts, key=lambda a: (-counts[a], a))[: self.num_answers]
            self._forms = prediction_forms(self._vocab)
        return self._vocab

    def read_split(self, name: str) -> CaptionSplit | None:
        if not self.questions.get(name):
            return None
        qpath, questions, _, answers, bad = self._load(name)
        index = {a: i for i, a in enumerate(self.vocabulary())}
        images, image_keys, image_of = [], [], {}
        texts, caption_image, keys, ids, scores, accuracy, human = [], [], [], [], [], [], []
        no_answer_in_vocab = 0
        unknown = UnknownIds(answers, "the annotations")
        for n, q in enumerate(questions):
            if not isinstance(q, dict) or any(k not in q for k in ("question_id", "image_id", "question")):
                bad.add("question without 'question_id', 'image_id' and 'question'", f"questions[{n}]")
                continue
            reason = id_problem(q["question_id"], "question_id") or id_problem(q["image_id"], "image_id")
            if not reason and not (isinstance(q["question"], str) and q["question"].strip()):
                reason = f"question is {json_type(q['question'])} {q['question']!r}, not a non-empty string"
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
            raw = answers[q["question_id"]]
            counts = Counter(f for f in map(normalize_answer, raw) if f in index)
            no_answer_in_vocab += not counts
            given = len(raw)
            texts.append(q["question"])
            caption_image.append(image_of[q["image_id"]])
            keys.append(key)
            ids.append([index[a] for a in counts])
            scores.append([soft_score(c, self.soft_score, max(given, 1)) for c in counts.values()])
            accuracy.append(sorted(answer_accuracies(raw, self._forms).items()) if raw else [])
            human.append(list(raw))
        self._answer_stats[name] = {"questions_without_vocab_answer": no_answer_in_vocab}
        return CaptionSplit(images, image_keys, texts, caption_image, keys, bad,
                            {"answer_ids": ids, "answer_scores": scores, "answer_accuracy": accuracy,
                             "human_answers": human})

    def _file_of(self, field: str, split: str) -> str:
        """``data.<field>.<split>`` (a file name or pattern under the root); MMFuseError naming it when unset."""
        files = getattr(self, field)
        if not files.get(split):
            raise MMFuseError(f"data.{field}.{split} is not set (data.{field} names {sorted(files) or 'no split'}): "
                              f"give the {split} split's file relative to data.root, as conf/data/vqa_v2.yaml does")
        return files[split]

    def _image(self, split: str, image_id: int | str) -> Path | str:
        """The image file of ``image_id`` (``image_file`` formatted), or why there is none."""
        pattern = self._file_of("image_file", split)
        try:
            relative = pattern.format(image_id=image_id)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            return (f"image id {image_id!r} does not fit data.image_file.{split}={pattern!r} ({json_type(image_id)}: "
                    f"{e}; Fix: write image ids as integers, as VQA v2 does)")
        return image_path(self.root, relative)

    def pair_fields(self, name: str, split: CaptionSplit) -> dict[str, torch.Tensor]:
        ids, scores, accuracy = (split.extra[k] for k in ("answer_ids", "answer_scores", "answer_accuracy"))
        width = max([MAX_ANSWERS, *map(len, ids)])
        acc_width = max([1, *map(len, accuracy)])
        generated = self.answer_fields(name, split) if self.answer_generation is not None else {}
        return {**generated, "answer_ids": padded(ids, width, -1, torch.long),
                "answer_scores": padded(scores, width, 0.0, torch.float32),
                "answer_accuracy_ids": padded([[i for i, _ in a] for a in accuracy], acc_width, -1, torch.long),
                "answer_accuracy": padded([[v for _, v in a] for a in accuracy], acc_width, 0.0, torch.float32)}

    def answer_fields(self, name: str, split: CaptionSplit) -> dict[str, torch.Tensor]:
        """``caption_ids`` / ``caption_mask`` / ``question_index`` of generative answers (module docstring)."""
        targets = self.answer_generation
        if not targets.tokenizer.fitted:
            train = self.split("train")
            if train is None:
                raise MMFuseError("task.answer=generate: data=vqa_v2 needs a train split (data.questions.train) "
                                  "to fit the decoder vocabulary on")
            targets.tokenizer.fit([t for t in map(answer_target, train.extra["human_answers"]) if t])
        human = split.extra["human_answers"]
        answers = [answer_target(a) for a in human]
        ids, mask = targets.tokenizer.encode(answers, targets.max_length)
        mask[torch.tensor([not a for a in answers], dtype=torch.bool)] = False  # no answer: nothing to train on
        self.human_answers_of[name] = [list(a) for a in human]
        return {"caption_ids": ids, "caption_mask": mask, "question_index": torch.arange(len(human))}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(num_answers=self.num_answers, vocabulary_size=len(self._vocab or []), soft_score=self.soft_score)
        for name, stats in self._answer_stats.items():
            if name in out:
                out[name].update(stats)
        return out
