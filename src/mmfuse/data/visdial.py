"""``data=visdial``: VisDial v1.0 (Das et al. 2017), the official files from visualdialog.org.

Layout under ``data.root``::

    visdial_1.0_train.json  visdial_1.0_val.json  visdial_1.0_test.json  visdial_1.0_val_dense_annotations.json
    train2014/ val2014/ (COCO 2014: the train split's images)  VisualDialog_val2018/  VisualDialog_test2018/

Dialog file: ``{"version", "split", "data": {"questions": [str], "answers": [str], "dialogs": [{"image_id",
"caption", "dialog": [{"question": q, "answer": a, "answer_options": [K ints], "gt_index": g}]}]}}``; ``q``,
``a`` and the options index ``questions`` / ``answers``. Train and val have 10 rounds per dialog, all with
options (``K = 100``); the test file's last round has only ``question`` and ``answer_options``. A round is
*evaluated* when it has ``answer_options`` (train/val: every round; test: the last). Its answer may be
hidden (no ``answer``, no ``gt_index``: text ``""``, ``gt_index = -1``) only on a dialog's last round.
``K`` is taken from the data (the first evaluated round) and must be the same for every round. Question
strings are kept as written (without the ``?`` that some readers append).

Dense annotations (``data.dense.<split>``): ``[{"image_id", "round_id" (1-based), "gt_relevance": [K]}]``
(the train sample writes ``relevance``; both are read). ``DialogSplit.relevance`` is ``[N, K]`` with
the annotation in the row of round ``round_id - 1`` of that image's dialog and NaN rows elsewhere;
``None`` when the split has no dense file.

Images: the file of image ``i`` is the one in the split's ``data.image_dirs.<split>`` folders whose name
ends in ``i`` (12 digits: ``COCO_train2014_000000000042.jpg``, ``VisualDialog_val2018_000000000042.jpg``),
as the starter code finds it; the first folder listed wins when two hold the same id.

Bad records (``data.on_bad_sample``; ``mmfuse.data.validation``): a dialog that is not an object with
``image_id``, ``caption`` (a string) and a ``dialog`` list, or whose image id is given twice; a round
whose question or answer index is outside the lists; ``answer_options`` not a list of answer indices of
the split's one length ``K``; ``gt_index`` outside the options or whose option is not the round's
answer; a hidden answer before the last round; a dialog without an evaluated round; no image file with
the id in the split's folders, or one that fails ``check_images``; a dense annotation for an image id
that no dialog of the file has or a round that is not evaluated, twice for one round, or with a
relevance that is not ``K`` numbers. ``error``: one ``MMFuseError`` naming the file(s) and the first
records; ``skip``: the dialog is left out (a bad dense annotation of a known dialog leaves the dialog
out too; one for an unknown image id is dropped alone), counted in ``describe()``.
``num_<split>``: only the first that many dialogs of the file are read (null: all).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mmfuse.data.dialog import DialogDataModule, DialogSplit
from mmfuse.data.image_size import DEFAULT_MAX_PIXELS, check_max_pixels
from mmfuse.data.images import ImageFiles
from mmfuse.data.validation import (
    BadRecords,
    check_images,
    check_policy,
    id_problem,
    image_path,
    json_type,
    read_json,
)
from mmfuse.errors import MMFuseError

SPLIT_NAMES = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TRAILING_ID = re.compile(r"(\d+)$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def option_count(dialogs: list[Any]) -> int | None:
    """The number of candidates a round of the split has: the most common length of ``answer_options``
    (VisDial: 100), so that a malformed round is the one reported, whichever comes first."""
    counts = Counter(len(rd["answer_options"]) for dg in dialogs if isinstance(dg, dict)
                     and isinstance(dg.get("dialog"), list) for rd in dg["dialog"]
                     if isinstance(rd, dict) and isinstance(rd.get("answer_options"), list) and rd["answer_options"])
    return max(counts, key=lambda n: (counts[n], n)) if counts else None


class VisDialDataModule(DialogDataModule):
    dataset_name = "visdial"

    def __init__(
        self,
        root: str,
        dialogs: dict[str, str | None] | None = None,
        dense: dict[str, str | None] | None = None,
        image_dirs: dict[str, Any] | None = None,
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
            raise MMFuseError(f"data.root={root!r}: {self.root.resolve()} is not a folder. Fix: data.root=<your "
                              "VisDial v1.0 folder> (conf/data/visdial.yaml lists its layout)")
        self.dialog_files = self._per_split("dialogs", dialogs)
        self.dense_files = self._per_split("dense", dense)
        self.image_dirs = {k: [v] if isinstance(v, str) else list(v or [])
                           for k, v in self._per_split("image_dirs", image_dirs).items()}
        self.on_bad_sample = on_bad_sample
        self.verify_images = verify_images
        self.limits = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size = int(image_size)
        self._stores: dict[str, ImageFiles] = {}

    @staticmethod
    def _per_split(field: str, value: Any) -> dict[str, Any]:
        value = dict(value or {})
        unknown = sorted(set(value) - set(SPLIT_NAMES))
        if unknown:
            raise MMFuseError(f"data.{field} has the key(s) {unknown}: expected only {list(SPLIT_NAMES)}")
        return value

    def _path(self, field: str, relative: Any) -> Path:
        """``root / relative`` for a path from the config (inside root), or an MMFuseError naming the field."""
        where = image_path(self.root, relative)
        if isinstance(where, str):
            raise MMFuseError(f"data.{field}: {where}. Fix: give a path relative to data.root={str(self.root)!r}")
        return where

    # -- reading ------------------------------------------------------------------------------------
    def _image_index(self, name: str) -> tuple[dict[int, Path], list[Path]]:
        """``{image id: file}`` over the split's image folders (the first folder wins), and the folders."""
        dirs = self.image_dirs.get(name) or []
        if not dirs:
            raise MMFuseError(f"data.image_dirs.{name} is not set: list the {name} split's image folders relative "
                              f"to data.root={str(self.root)!r}, as conf/data/visdial.yaml does")
        index: dict[int, Path] = {}
        folders = []
        for i, d in enumerate(dirs):
            folder = self._path(f"image_dirs.{name}[{i}]", d)
            if not folder.is_dir():
                raise MMFuseError(f"{folder} is not a folder (data.image_dirs.{name}[{i}]={d!r} under "
                                  f"data.root={str(self.root)!r}). Fix: check data.root and data.image_dirs")
            folders.append(folder)
            with os.scandir(folder) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    stem, suffix = os.path.splitext(entry.name)
                    match = TRAILING_ID.search(stem)
                    if match and suffix.lower() in IMAGE_SUFFIXES:
                        index.setdefault(int(match.group(1)), folder / entry.name)
        return index, folders

    def _read_file(self, name: str) -> tuple[Path, list[Any], list[Any], list[Any]]:
        path = self._path(f"dialogs.{name}", self.dialog_files[name])
        if not path.is_file():
            raise MMFuseError(f"{path} not found (data.dialogs.{name} under data.root={str(self.root)!r}). Fix: "
                              "check data.root and data.dialogs")
        data = read_json(path, "VisDial v1.0 dialogs")
        if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
            raise MMFuseError(f"{path}: expected a JSON object with a 'data' object (the VisDial v1.0 format). "
                              "Fix: point data.dialogs at the official visdial_1.0_<split>.json")
        body = data["data"]
        for key in ("questions", "answers", "dialogs"):
            if not isinstance(body.get(key), list):
                raise MMFuseError(f"{path}: data.{key} is {json_type(body.get(key))}, expected a list (the VisDial "
                                  "v1.0 format). Fix: point data.dialogs at the official visdial_1.0_<split>.json")
        return path, body["questions"], body["answers"], body["dialogs"]

    @staticmethod
    def _round(rd: Any, last: bool, questions: list, answers: list, k: int | None
               ) -> tuple[str | None, tuple[str, str, list[int] | None, int] | None]:
        """Why the round ``rd`` is bad, or (question, answer text, options or None, gt_index)."""
        def text(table: list, i: Any) -> str | None:
            return table[i] if _is_int(i) and 0 <= i < len(table) and isinstance(table[i], str) else None

        if not isinstance(rd, dict) or "question" not in rd:
            return "round without a 'question'", None
        question = text(questions, rd["question"])
        if question is None:
            return f"question index {rd['question']!r} outside data.questions ({len(questions)})", None
        hidden = "answer" not in rd
        if hidden and not last:
            return "round without an 'answer' before the last round (only the test split's last hides it)", None
        answer = "" if hidden else text(answers, rd["answer"])
        if answer is None:
            return f"answer index {rd['answer']!r} outside data.answers ({len(answers)})", None
        options = rd.get("answer_options")
        if options is None:
            return None, (question, answer, None, -1)
        if not isinstance(options, list) or not options or not all(_is_int(o) for o in options):
            return f"answer_options is not a list of answer indices ({json_type(options)})", None
        if k is not None and len(options) != k:
            return f"{len(options)} answer_options, the split's rounds have {k}", None
        if any(not 0 <= o < len(answers) for o in options):
            return f"answer_options index outside data.answers ({len(answers)})", None
        if hidden:
            if "gt_index" in rd:
                return "gt_index given for a round without an 'answer'", None
            return None, (question, answer, options, -1)
        gt = rd.get("gt_index")
        if not _is_int(gt) or not 0 <= gt < len(options):
            return f"gt_index {gt!r} outside the {len(options)} answer_options", None
        if options[gt] != rd["answer"]:
            return f"gt_index {gt} points at answer {options[gt]}, not the round's answer {rd['answer']}", None
        return None, (question, answer, options, gt)

    def read_dialogs(self, name: str) -> DialogSplit | None:
        if not self.dialog_files.get(name):
            return None
        path, questions, answers, dialogs = self._read_file(name)
        dense_file = self.dense_files.get(name)
        dense_path = self._path(f"dense.{name}", dense_file) if dense_file else None
        bad = BadRecords(self.dataset_name, name, [path] + ([dense_path] if dense_path else []))
        index, folders = self._image_index(name)
        limit = self.limits.get(name)
        all_ids = {dg["image_id"] for dg in dialogs
                   if isinstance(dg, dict) and "image_id" in dg and not id_problem(dg["image_id"], "image id")}
        read = dialogs[: int(limit)] if limit is not None else dialogs
        kept: list[dict[str, Any]] = []  # image_id, caption, questions, answers, rows [(round, options, gt)]
        first_at: dict[Any, int] = {}
        k = option_count(read)
        for n, dg in enumerate(read):
            if (not isinstance(dg, dict) or any(key not in dg for key in ("image_id", "caption", "dialog"))
                    or not isinstance(dg["caption"], str) or not isinstance(dg["dialog"], list)):
                bad.add("dialog without 'image_id', a 'caption' string and a 'dialog' list", f"dialogs[{n}]")
                continue
            image_id = dg["image_id"]
            if reason := id_problem(image_id, "image id"):
                bad.add(reason, f"dialogs[{n}]")
                continue
            if image_id in first_at:
                bad.add(f"image id given twice (first at dialogs[{first_at[image_id]}])", f"dialogs[{n}]")
                continue
            first_at[image_id] = n
            entry = {"n": n, "image_id": image_id, "caption": dg["caption"], "questions": [], "answers": [],
                     "rows": []}
            ok = True
            for r, rd in enumerate(dg["dialog"]):
                reason, parsed = self._round(rd, r == len(dg["dialog"]) - 1, questions, answers, k)
                if reason:
                    bad.add(reason, f"image id {image_id} round {r + 1} (dialogs[{n}])")
                    ok = False
                    break
                question, answer, options, gt = parsed
                entry["questions"].append(question)
                entry["answers"].append(answer)
                if options is not None:
                    entry["rows"].append((r, options, gt))
            if not ok:
                continue
            if not entry["rows"]:
                bad.add("dialog without a round that has answer_options", f"image id {image_id} (dialogs[{n}])")
                continue
            kept.append(entry)
        # images: found in the split's folders, then checked
        with_file = []
        for entry in kept:
            file = index.get(entry["image_id"])
            if file is None:
                bad.add(f"no image file named with this id in {', '.join(map(str, folders))}",
                        f"image id {entry['image_id']} (dialogs[{entry['n']}])")
                continue
            entry["file"] = file
            with_file.append(entry)
        failed = check_images([e["file"] for e in with_file], self.verify_images, max_pixels=self.max_pixels)
        for i, reason in sorted(failed.items()):
            e = with_file[i]
            bad.add(reason, f"image id {e['image_id']} ({e['file']}, dialogs[{e['n']}])")
        kept = [e for i, e in enumerate(with_file) if i not in failed]
        dense, dense_stats = self._read_dense(dense_path, name, kept, all_ids, k, bad) if dense_path else ({}, {})
        bad.resolve(self.on_bad_sample)
        kept = [e for e in kept if not e.get("bad_dense")]
        if not kept:
            raise MMFuseError(f"data={self.dataset_name}, {name} split: no usable dialog in {path}. Fix: check "
                              "data.root, data.dialogs and data.image_dirs")
        return self._split(kept, answers, k, dense if dense_path else None, bad,
                           {"dialogs_in_file": len(dialogs), "dialogs_read": len(read),
                            "skipped_dialogs": len(read) - len(kept), **dense_stats})

    def _read_dense(self, path: Path, name: str, kept: list[dict[str, Any]], all_ids: set[Any], k: int | None,
                    bad: BadRecords) -> tuple[dict[tuple[Any, int], list[float]], dict[str, int]]:
        """``{(image id, round 0-based): relevance}`` for the kept dialogs; bad annotations in ``bad``
        (one of a kept dialog marks it ``bad_dense``)."""
        if not path.is_file():
            raise MMFuseError(f"{path} not found (data.dense.{name} under data.root={str(self.root)!r}). Fix: check "
                              f"data.root, or data.dense.{name}=null for no dense annotations")
        data = read_json(path, "VisDial v1.0 dense annotations")
        if not isinstance(data, list):
            raise MMFuseError(f"{path}: expected a JSON list of dense annotations, found {json_type(data)}. Fix: "
                              f"point data.dense.{name} at visdial_1.0_{name}_dense_annotations.json")
        by_id = {e["image_id"]: e for e in kept}
        dense: dict[tuple[Any, int], list[float]] = {}
        ignored = 0
        for n, ann in enumerate(data):
            if not isinstance(ann, dict) or "image_id" not in ann or "round_id" not in ann:
                bad.add("dense annotation without 'image_id' and 'round_id'", f"{path.name}[{n}]")
                continue
            image_id, round_id = ann["image_id"], ann["round_id"]
            key = f"image id {image_id} round {round_id} ({path.name}[{n}])"
            if reason := id_problem(image_id, "image id"):
                bad.add(reason, key)
                continue
            if image_id not in all_ids:
                bad.add("dense annotation for an image id that no dialog has", key)
                continue
            entry = by_id.get(image_id)
            if entry is None:  # beyond num_<split>, or a dialog already left out
                ignored += 1
                continue
            relevance = ann.get("gt_relevance", ann.get("relevance"))
            evaluated = {r for r, _, _ in entry["rows"]}
            if not _is_int(round_id) or round_id - 1 not in evaluated:
                reason = f"dense annotation for round {round_id!r}, not an evaluated round of the dialog"
            elif (image_id, round_id - 1) in dense:
                reason = "dense annotation given twice for the round"
            elif not isinstance(relevance, list) or len(relevance) != k or not all(map(_is_number, relevance)):
                size = len(relevance) if isinstance(relevance, list) else json_type(relevance)
                reason = f"'gt_relevance' / 'relevance' is not {k} numbers ({size})"
            else:
                dense[(image_id, round_id - 1)] = [float(v) for v in relevance]
                continue
            bad.add(reason, key)
            entry["bad_dense"] = True
        return dense, {"dense_annotations": len(data), "dense_ignored": ignored}

    def _split(self, kept: list[dict[str, Any]], answers: list, k: int,
               dense: dict[tuple[Any, int], list[float]] | None, bad: BadRecords, stats: dict[str, Any]) -> DialogSplit:
        rows = [(d, r, options, gt) for d, e in enumerate(kept) for r, options, gt in e["rows"]]
        relevance = None
        if dense is not None:
            relevance = np.full((len(rows), k), np.nan, dtype=np.float32)
            for i, (d, r, _, _) in enumerate(rows):
                values = dense.get((kept[d]["image_id"], r))
                if values is not None:
                    relevance[i] = values
            stats["dense_rounds"] = int((~np.isnan(relevance).any(1)).sum())
        stats["hidden_answers"] = sum(gt < 0 for *_, gt in rows)
        return DialogSplit(
            images=[e["file"] for e in kept],
            image_keys=[f"image id {e['image_id']}" for e in kept],
            captions=[e["caption"] for e in kept],
            questions=[e["questions"] for e in kept],
            round_answers=[e["answers"] for e in kept],
            dialog=np.array([d for d, *_ in rows], dtype=np.int64),
            round=np.array([r for _, r, *_ in rows], dtype=np.int64),
            options=np.array([o for *_, o, _ in rows], dtype=np.int32).reshape(len(rows), k),
            gt_index=np.array([gt for *_, gt in rows], dtype=np.int64),
            answers=[a if isinstance(a, str) else "" for a in answers],
            relevance=relevance,
            bad=bad,
            stats=stats,
        )

    # -- DialogDataModule ---------------------------------------------------------------------------
    def image_store(self, name: str, split: DialogSplit) -> ImageFiles:
        if name not in self._stores:
            self._stores[name] = ImageFiles(split.images, self.max_pixels)
        return self._stores[name]

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(root=str(self.root), on_bad_sample=self.on_bad_sample, verify_images=self.verify_images,
                   max_pixels=self.max_pixels)
        return out
