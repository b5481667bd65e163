"""``task=vqa task.answer=generate``: a decoder (``conf/decoder``) writes the answer to the question.

The question is the text input (through the text encoder and the fusion, as in classification VQA);
the memory is the fusion's (``task.memory``, ``mmfuse.decoders.memory``). Training: teacher forcing on
one answer per question, ``mmfuse.data.vqa.answer_target`` (the prediction form of its human answers
with the highest official accuracy; ties: more humans, then alphabetical); loss
``-(1/N) Σ_{b,t: mask[b,t+1]} log p(ids[b,t+1] | ids[b,:t+1], memory_b)`` over the real answer tokens
(``mmfuse.tasks.captioning.token_loss``; a question without an answer has no target token).

Evaluation: one answer generated per question (``task.generate``), decoded by the decoder's tokenizer
and scored at the end of the split against that question's raw human answers with the official VQA
evaluation (``mmfuse.tasks.vqa_answers.official_accuracy``: answer processing, then the leave-one-out
mean of ``min(1, matches / 3)``), the function the classification VQA's accuracy comes from, so a
generated answer equal to the classifier's answer scores the same (``answer_scores``):

- ``vqa_acc`` = mean over questions of ``official_accuracy(generated, human answers)`` (0 for a question
  without human answers); the monitor (max);
- ``exact_vocab`` = share of questions whose generated answer's prediction form is in the data's answer
  vocabulary (``data.num_answers`` most frequent train forms: the classifier's classes);
- ``distinct`` = distinct prediction forms generated / questions;
- ``loss``: the teacher-forced loss, averaged over answer tokens;
- ``vqa_acc_<type>``: ``vqa_acc`` over the questions of each type, when the data has
  ``question_types()`` and ``question_type_ids(split)`` (the type index of each question index,
  ``data=shapes_vqa``); a type without generated answers in the split is left out.

With more than one process the generated answers of every rank are gathered before scoring.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from mmfuse.decoders.base import Decoder
from mmfuse.errors import MMFuseError
from mmfuse.tasks.generative import GenerativeTask
from mmfuse.tasks.vqa_answers import normalize_answer, official_accuracy


def answer_scores(generated: Mapping[int, str], human: Sequence[Sequence[str]],
                  vocabulary: Collection[str]) -> dict[str, float]:
    """``vqa_acc``, ``exact_vocab`` and ``distinct`` (module docstring) of ``{question index: generated
    answer}`` against ``human[question index]`` (raw human answers) and the answer ``vocabulary``."""
    if not generated:
        raise MMFuseError("answer_scores: no generated answers to score")
    ids = sorted(generated)
    if ids[0] < 0 or ids[-1] >= len(human):
        raise MMFuseError(f"answer_scores: question index {ids[-1] if ids[-1] >= len(human) else ids[0]} outside "
                          f"the split's {len(human)} questions")
    forms = [normalize_answer(generated[i]) for i in ids]
    acc = [official_accuracy(generated[i], human[i]) if human[i] else 0.0 for i in ids]
    vocab = set(vocabulary)
    return {"vqa_acc": sum(acc) / len(ids), "exact_vocab": sum(f in vocab for f in forms) / len(ids),
            "distinct": len(set(forms)) / len(ids)}


class GenerativeVQATask(GenerativeTask):
    monitor = "val/vqa_acc"
    monitor_mode = "max"
    item_key = "question_index"
    name = "task=vqa task.answer=generate"

    def __init__(self, in_dim: int, fusion_stage: str, decoder: Decoder | None = None,
                 generate: Mapping[str, Any] | None = None, memory: str = "auto", label_smoothing: float = 0.0,
                 **_: Any) -> None:
        super().__init__(decoder, generate, memory, label_smoothing,
                         needs="set decoder=transformer | hf_cross | prefix_lm (or task.answer=classify)")
        self.human_answers: dict[str, list[list[str]]] = {}
        self.vocabulary: list[str] = []
        self.question_types: tuple[str, ...] = ()
        self.question_type_ids: dict[str, list[int]] = {}

    def configure_data(self, datamodule: Any) -> None:
        """Before ``setup``: the data adds the answers' decoder tokens to every pair (``mmfuse.data.vqa``)."""
        if not hasattr(datamodule, "answer_generation"):
            raise MMFuseError(f"task.answer=generate needs VQA data with human answers (data=vqa_v2), not "
                              f"data={type(datamodule).__name__}; or set task.answer=classify")
        from mmfuse.data.vqa import AnswerTargets

        datamodule.answer_generation = AnswerTargets(self.decoder.tokenizer, int(self.decoder.max_length))

    def attach_data(self, datamodule: Any) -> None:
        """The raw human answers per split and question, the answer vocabulary, and the question types
        (when the data has them)."""
        self.human_answers = datamodule.human_answers_of
        self.vocabulary = list(datamodule.vocabulary())
        if hasattr(datamodule, "question_types") and hasattr(datamodule, "question_type_ids"):
            self.question_types = tuple(datamodule.question_types())
            self.question_type_ids = {s: list(datamodule.question_type_ids(s)) for s in datamodule.human_answers_of}

    def score(self, stage: str, generated: dict[int, str]) -> dict[str, float]:
        human = self.human_answers.get(stage)
        if human is None:
            raise MMFuseError(f"task.answer=generate: no human answers for the {stage} split (attach_data was not "
                              "called)")
        scores = answer_scores(generated, human, self.vocabulary)
        types = self.question_type_ids.get(stage)
        if self.question_types and types is not None:
            for i, name in enumerate(self.question_types):
                subset = {q: a for q, a in generated.items() if types[q] == i}
                if subset:
                    scores[f"vqa_acc_{name}"] = answer_scores(subset, human, self.vocabulary)["vqa_acc"]
        return scores
