"""Dialog data (``task=dialog``): what every dialog dataset gives, and the rounds the task trains on.

A dialog is an image, a caption and rounds of (question, answer). A dataset reads each split into a
``DialogSplit``; ``DialogDataModule`` turns it into a ``DialogDataset`` with one pair per *evaluated*
round (a round that has candidate answers; VisDial's test split evaluates only each dialog's last round,
the earlier ones are history). Every evaluated round has ``K`` candidates (VisDial: 100), indices into
the split's ``answers`` list; ``gt_index`` is the position of the ground-truth answer among them (-1
when hidden, VisDial test); ``relevance`` the dense relevance of each candidate (NaN where the round
has no dense annotation); ``kind`` the round's type (``kind_names``; -1 where the data has none).

Text input of round ``r`` of dialog ``d`` (``DialogInputs``, set by the task before ``setup``):

- ``history=none``: the question alone;
- ``history=concat``: ``question ; q_{r-1} a_{r-1} ; ... ; q_{r-k} a_{r-k} ; caption`` over the last
  ``k = rounds`` earlier rounds (the caption counts as the oldest round; ``rounds: null``: all). The
  question comes first, the most recent round next, so a tokenizer that truncates to its
  ``max_length`` drops the oldest history, never the question;
- ``history=late``: the question alone as the text input, and the same history (without the question)
  as a second text, ``history_ids`` / ``history_mask``, which the task encodes separately.

Batches (``DialogDataset``): the pair fields of ``mmfuse.data.pairs`` (``image``, ``input_ids``,
``attention_mask``, ``image_id`` = the dialog, ``text_id``) and ``round_index`` (the round's row in the
split), ``round`` (1-based), ``options [B, K]`` (rows of ``option_ids``), ``option_ids`` /
``option_mask`` (the text tokenizer's tokens of the batch's distinct candidates, ``[U, T]``),
``gt_index [B]``, ``relevance [B, K]``, ``kind [B]``; for a generative task (``DialogInputs.decoder``)
also ``caption_ids`` / ``caption_mask`` (the decoder tokens of the ground-truth answer; all False when
hidden) and ``option_tokens`` / ``option_token_mask`` (the decoder tokens of the distinct candidates).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmfuse.data.pairs import PairDataset, unique_texts
from mmfuse.data.validation import BadRecords
from mmfuse.datamodule import MMFuseDataModule
from mmfuse.errors import MMFuseError

log = logging.getLogger(__name__)

HISTORY_MODES = ("none", "concat", "late")
SEPARATOR = " ; "


@dataclass
class DialogSplit:
    """One split as read and checked. ``N`` evaluated rounds, ``K`` candidates each; ``D`` dialogs."""

    images: Any                       # an image store (``len``, ``load``) or a list of image paths, one per dialog
    image_keys: list[str]             # how the source names each dialog's image, for messages
    captions: list[str]               # [D]
    questions: list[list[str]]        # [D][rounds of dialog d]
    round_answers: list[list[str]]    # [D][rounds]: the answer text ("" when hidden)
    dialog: np.ndarray                # [N] int: the dialog of each evaluated round
    round: np.ndarray                 # [N] int: its round, 0-based
    options: np.ndarray               # [N, K] int32: indices into ``answers``
    gt_index: np.ndarray              # [N] int: position of the true answer among the options, -1 hidden
    answers: list[str]                # the split's answer list
    relevance: np.ndarray | None = None  # [N, K] float32, NaN rows: no dense annotation; None: none at all
    kind: np.ndarray | None = None    # [N] int: index into ``kind_names``; None: no round types
    kind_names: tuple[str, ...] = ()
    bad: BadRecords | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.dialog)
        for name in ("round", "options", "gt_index", "relevance", "kind"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"DialogSplit.{name} has {len(value)} rows, expected {n} (one per evaluated round)")
        if len(self.captions) != len(self.questions) or len(self.questions) != len(self.round_answers):
            raise ValueError("DialogSplit: captions, questions and round_answers need one entry per dialog")


@dataclass(frozen=True)
class DialogInputs:
    """What the dialog task asks of the data: the history encoding (``HISTORY_MODES``), how many earlier
    rounds it holds (None: all), and for a generative task the decoder's tokenizer and longest answer in
    tokens (bos and eos included)."""

    history: str = "none"
    rounds: int | None = None
    decoder: Any = None
    max_length: int = 0

    def __post_init__(self) -> None:
        if self.history not in HISTORY_MODES:
            raise MMFuseError(f"task.history={self.history!r}: expected one of {HISTORY_MODES}")
        if self.rounds is not None and (isinstance(self.rounds, bool) or int(self.rounds) < 0):
            raise MMFuseError(f"task.history_rounds={self.rounds!r}: expected a number of rounds >= 0, or null (all)")


def history_text(split: DialogSplit, d: int, r: int, rounds: int | None) -> str:
    """The history of round ``r`` of dialog ``d``: the last ``rounds`` earlier rounds, most recent
    first, ``question answer`` each, then the caption (as the oldest round); module docstring."""
    earlier = [f"{q} {a}" for q, a in zip(split.questions[d][:r], split.round_answers[d][:r], strict=True)]
    turns = [*reversed(earlier), split.captions[d]]
    return SEPARATOR.join(turns if rounds is None else turns[:rounds])


def round_texts(split: DialogSplit, inputs: DialogInputs) -> tuple[list[str], list[str] | None]:
    """The text input of every evaluated round, and (``history=late``) its history text."""
    questions = [split.questions[d][r] for d, r in zip(split.dialog.tolist(), split.round.tolist(), strict=True)]
    if inputs.history == "none":
        return questions, None
    history = [history_text(split, d, r, inputs.rounds)
               for d, r in zip(split.dialog.tolist(), split.round.tolist(), strict=True)]
    if inputs.history == "late":
        return questions, history
    return [SEPARATOR.join([q, h]) if h else q for q, h in zip(questions, history, strict=True)], None


def compact(tokens: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """Token ids as int32 and the mask as bool (a quarter of int64 ids and mask: VisDial's 1.2M training
    rounds with their histories); batches get them back as int64."""
    if tokens is None:
        return None
    return {"input_ids": tokens["input_ids"].to(torch.int32), "attention_mask": tokens["attention_mask"].bool()}


class DialogDataset(PairDataset):
    """The evaluated rounds of a split as pairs, with their candidates (module docstring)."""

    def __init__(self, *args: Any, option_text: dict[str, torch.Tensor] | None = None,
                 option_tokens: tuple[torch.Tensor, torch.Tensor] | None = None,
                 history: dict[str, torch.Tensor] | None = None, history_index: torch.Tensor | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.option_text = option_text
        self.option_tokens = option_tokens
        self.history = history
        self.history_index = history_index

    def _texts(self, idx: torch.Tensor) -> dict[str, Any]:
        out = super()._texts(idx)  # ids and mask stored compact (``compact``); cached features as they are
        return {k: v.long() if k in ("input_ids", "attention_mask") else v for k, v in out.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        batch = super().__getitems__(indices)
        if "relevance" not in batch:  # a split without dense annotations
            batch["relevance"] = torch.full(batch["options"].shape, float("nan"))
        options = batch.pop("options").long()
        distinct, remapped = torch.unique(options, return_inverse=True)
        batch["options"] = remapped
        if self.option_text is not None:
            ids, mask = self.option_text["input_ids"][distinct], self.option_text["attention_mask"][distinct]
            length = max(int(mask.sum(1).max()), 1)
            batch["option_ids"], batch["option_mask"] = ids[:, :length].long(), mask[:, :length].long()
        if self.option_tokens is not None:
            ids, mask = self.option_tokens[0][distinct], self.option_tokens[1][distinct]
            length = max(int(mask.sum(1).max()), 1)
            batch["option_tokens"], batch["option_token_mask"] = ids[:, :length], mask[:, :length]
        if self.history is not None:
            rows = self.history_index[torch.as_tensor(indices, dtype=torch.long)]
            mask = self.history["attention_mask"][rows]
            length = max(int(mask.sum(1).max()), 1)
            batch["history_ids"] = self.history["input_ids"][rows, :length].long()
            batch["history_mask"] = mask[:, :length].long()
        return batch


class DialogDataModule(MMFuseDataModule):
    """The base of dialog datasets: a subclass implements ``read_dialogs(name) -> DialogSplit | None``
    (checked; ``images`` an image store), and may override ``image_store(name, split)`` and
    ``describe``."""

    dataset_name = "dialog"

    def __init__(self, text_max_length: int | None = None, **loader: Any) -> None:
        super().__init__(**loader)
        self.text_max_length = text_max_length  # what the text encoder configs read (long histories)
        self.dialog: DialogInputs | None = None  # set by task=dialog before setup
        self._dialogs: dict[str, DialogSplit | None] = {}
        self._at_limit: dict[str, dict[str, int]] = {}

    def read_dialogs(self, name: str) -> DialogSplit | None:
        raise NotImplementedError

    def dialogs(self, name: str) -> DialogSplit | None:
        """The split (read once)."""
        if name not in self._dialogs:
            self._dialogs[name] = self.read_dialogs(name)
        return self._dialogs[name]

    def image_store(self, name: str, split: DialogSplit) -> Any:
        """The split's images as a store; ``split.images`` itself by default."""
        return split.images

    def kind_names(self) -> tuple[str, ...]:
        """The round types of the data (``DialogSplit.kind_names`` of its first split that has some)."""
        for name in ("train", "val", "test"):
            split = self.dialogs(name)
            if split is not None and split.kind_names:
                return split.kind_names
        return ()

    def train_texts(self) -> list[str]:
        train = self.dialogs("train")
        if train is None:
            raise MMFuseError(f"data={self.dataset_name}: no train split to fit the tokenizer vocabulary on")
        return [*train.captions, *(q for qs in train.questions for q in qs), *train.answers]

    def build_split(self, name: str) -> DialogDataset | None:
        split = self.dialogs(name)
        if split is None or len(split.dialog) == 0:
            return None
        if self.dialog is None:
            raise MMFuseError(f"data={self.dataset_name} holds dialogs: train it with task=dialog")
        inputs = self.dialog
        texts, history = round_texts(split, inputs)
        distinct, text_index = unique_texts(texts)
        n = len(split.dialog)
        fields = {
            "round_index": torch.arange(n),
            "round": torch.from_numpy(np.asarray(split.round, dtype=np.int64)) + 1,
            "options": torch.from_numpy(np.ascontiguousarray(split.options, dtype=np.int32)),
            "gt_index": torch.from_numpy(np.asarray(split.gt_index, dtype=np.int64)),
            **({"relevance": torch.from_numpy(np.asarray(split.relevance, dtype=np.float32))}
               if split.relevance is not None else {}),
            "kind": (torch.from_numpy(np.asarray(split.kind, dtype=np.int64)) if split.kind is not None
                     else torch.full((n,), -1, dtype=torch.long)),
        }
        option_tokens = None
        if inputs.decoder is not None:
            if not inputs.decoder.fitted:
                train = self.dialogs("train")
                if train is None:
                    raise MMFuseError(f"task.decoder=generative: data={self.dataset_name} needs a train split to fit "
                                      "the decoder vocabulary on")
                inputs.decoder.fit([a for a in train.answers if a])
            option_tokens = inputs.decoder.encode(list(split.answers), inputs.max_length)
            fields.update(self._answer_targets(split, option_tokens))
        history_text_rows = history_index = None
        if history is not None:
            distinct_history, history_index = unique_texts(history)
            history_text_rows = self.tokenizer(distinct_history)
        text = self.tokenizer(distinct) if self.tokenizer is not None else None
        self._count_cut(name, "texts", text)
        if history_text_rows is not None:
            self._count_cut(name, "histories", history_text_rows)
        return DialogDataset(
            images=self.image_store(name, split),
            text=compact(text),
            texts=distinct,
            image_index=torch.from_numpy(np.asarray(split.dialog, dtype=np.int64)),
            text_index=text_index,
            fields=fields,
            transform=self.image_transform,
            option_text=compact(self.tokenizer(list(split.answers))) if self.tokenizer is not None else None,
            option_tokens=option_tokens,
            history=compact(history_text_rows),
            history_index=history_index,
        )

    def _count_cut(self, name: str, what: str, tokens: dict[str, torch.Tensor] | None) -> None:
        """Count (and warn about) the distinct texts that fill the tokenizer's ``max_length``: truncated,
        most likely, so the oldest history is lost (raise ``data.text_max_length``)."""
        limit = getattr(self.tokenizer, "max_length", None)
        if tokens is None or not isinstance(limit, int):
            return
        cut = int((tokens["attention_mask"].sum(1) >= limit).sum())
        self._at_limit.setdefault(name, {})[f"{what}_at_max_length"] = cut
        if cut:
            log.warning("data=%s, %s split: %d of %d distinct %s fill the text encoder's max_length=%d and are "
                        "probably cut (the oldest history goes first); raise data.text_max_length or set "
                        "task.history_rounds", self.dataset_name, name, cut, len(tokens["attention_mask"]), what,
                        limit)

    @staticmethod
    def _answer_targets(split: DialogSplit, option_tokens: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``caption_ids`` / ``caption_mask``: the decoder tokens of each round's true answer (masked out
        where it is hidden)."""
        gt = torch.from_numpy(np.asarray(split.gt_index, dtype=np.int64))
        options = torch.from_numpy(np.asarray(split.options, dtype=np.int64))
        answer = options.gather(1, gt.clamp(min=0).unsqueeze(1)).squeeze(1)
        ids, mask = option_tokens[0][answer].clone(), option_tokens[1][answer].clone()
        mask[gt < 0] = False
        return {"caption_ids": ids, "caption_mask": mask}

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": self.dataset_name}
        if self.dialog is not None:
            out["history"] = {"mode": self.dialog.history, "rounds": self.dialog.rounds}
        for name in ("train", "val", "test"):
            split = self._dialogs.get(name)
            if split is None:
                continue
            stats = {"dialogs": len(split.captions), "rounds": len(split.dialog),
                     "options": int(split.options.shape[1]) if len(split.dialog) else 0,
                     "dense_rounds": int((~np.isnan(split.relevance).any(1)).sum()) if split.relevance is not None else 0,
                     **split.stats}
            if split.kind is not None and split.kind_names:
                stats["kinds"] = {k: int((split.kind == i).sum()) for i, k in enumerate(split.kind_names)}
            stats.update(self._at_limit.get(name, {}))
            if split.bad is not None and len(split.bad):
                stats["skipped"] = split.bad.summary()
            out[name] = stats
        return out
