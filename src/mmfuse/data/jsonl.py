"""``data=jsonl``: any image / video / audio - text data as JSON Lines, one record per line::

    {"image": "photos/0001.jpg", "text": "a dog on a beach", "label": "dog"}
    {"video": "clips/v1.mp4", "text": "a man is cooking"}
    {"image": "birds/3.jpg", "audio": "songs/3.wav", "text": "a robin singing"}

The item modalities (``modalities``: image, video, audio, then text) are those whose key
(``image_key``, ``video_key``, ``audio_key``) some record of the first split file (train, else val,
else test) has; every record must then have them all (a record without one is a bad record). Paths
are relative to ``image_root`` / ``video_root`` / ``audio_root`` (default ``root``); records naming the
same files share the item; an absolute path or one with ``..`` is a bad record
(``mmfuse.data.validation.image_path``). Image-only records are read, checked and batched exactly as
before (``FilePairDataset``); with video or audio, ``mmfuse.data.media`` decodes the files with the
attached encoders' settings (``encoder.video.frames`` / ``sampling``, the audio encoder's rate; at most
``audio_max_seconds`` of each sound), and batches carry ``video`` / ``audio`` + ``audio_mask`` and
``image_id`` (the item's index).
``labels`` says what ``label`` is:
- ``none``: no labels; every record is a positive pair (retrieval; ITM with in-batch negatives);
- ``match``: 0 / 1, the text does / does not describe the image (ITM on given pairs: batch ``label``);
- ``multiclass``: one class, a name from ``classes`` or an index ``< num_classes`` (batch ``target``);
- ``multilabel``: a list of classes (batch ``target``, multi-hot ``[B, num_classes]``).
With class names and no ``classes`` list, the classes are the sorted names seen in the train file.
Bad records (not UTF-8, not JSON, missing keys, empty text, unknown class, bad image, video or audio
file or path) follow ``on_bad_sample``. A UTF-8 byte order mark at the start of the file is allowed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mmfuse.data.captions import CaptionSplit
from mmfuse.data.media import ITEM_MODALITIES, MediaCaptionDataModule, MediaItem
from mmfuse.data.validation import BadRecords, image_path
from mmfuse.errors import MMFuseError

LABELS = ("none", "match", "multiclass", "multilabel")


class JSONLDataModule(MediaCaptionDataModule):
    dataset_name = "jsonl"

    def __init__(self, root: str, train: str | None = "train.jsonl", val: str | None = "val.jsonl",
                 test: str | None = None, image_root: str | None = None, image_key: str = "image",
                 video_root: str | None = None, video_key: str = "video", audio_root: str | None = None,
                 audio_key: str = "audio",
                 text_key: str = "text", label_key: str = "label", labels: str = "none",
                 classes: list[str] | None = None, num_classes: int | None = None,
                 captions_per_image: int | None = None, **kwargs: Any) -> None:
        super().__init__(root, captions_per_image=captions_per_image, **kwargs)
        if labels not in LABELS:
            raise MMFuseError(f"data.labels={labels!r}: expected one of {LABELS}")
        self.files = {"train": train, "val": val, "test": test}
        self.image_root = Path(str(image_root)).expanduser() if image_root else self.root
        given = {"image": image_root, "video": video_root, "audio": audio_root}
        self.roots = {m: Path(str(r)).expanduser() if r else self.root for m, r in given.items()}
        self.keys = {"image": image_key, "video": video_key, "audio": audio_key, "text": text_key, "label": label_key}
        self.record_keys = {m: self.keys[m] for m in ITEM_MODALITIES}
        self._modalities: tuple[str, ...] | None = None
        self.labels = labels
        self.classes = list(classes) if classes else None
        self.num_classes = int(num_classes) if num_classes else None
        if labels in ("multiclass", "multilabel") and self.num_classes is None:
            raise MMFuseError(f"data.labels={labels} needs data.num_classes (the classification head's size)")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise MMFuseError(f"data.classes has {len(self.classes)} names but data.num_classes={self.num_classes}")

    @property
    def modalities(self) -> tuple[str, ...]:  # type: ignore[override]
        """The item modalities some record of the first split file names (a string path), then text (image + text when
        none does, or the file is absent: reading it then says what is wrong)."""
        if self._modalities is None:
            found: set[str] = set()
            first = next((f for f in self.files.values() if f), None)
            path = self.root / str(first)
            if first is not None and path.is_file():
                for _, record in self._lines(path, BadRecords(self.dataset_name, "?", [path]), check=False):
                    found.update(m for m in ITEM_MODALITIES if isinstance(record.get(self.keys[m]), str))
            self._modalities = (*(m for m in ITEM_MODALITIES if m in found), "text") if found else ("image", "text")
        return self._modalities

    # -- reading ------------------------------------------------------------------------------------
    def _lines(self, path: Path, bad: BadRecords, check: bool = True) -> list[tuple[int, dict[str, Any]]]:
        """The records of ``path`` (JSON objects), line numbers from 1; with ``check``, only those with
        every key this data needs."""
        if not path.is_file():
            raise MMFuseError(f"{path} not found (the data.jsonl file of this split). Fix: check data.root "
                              "and data.train / data.val / data.test")
        records = []
        with open(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    bad.add(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line; Fix: save "
                            "the file as UTF-8)", f"line {n}")
                    continue
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    bad.add(f"not valid JSON ({e.msg})", f"line {n}")
                    continue
                if not check:
                    if isinstance(record, dict):
                        records.append((n, record))
                    continue
                needed = [self.keys[m] for m in self.modalities]
                missing = [k for k in needed if not isinstance(record, dict) or k not in record]
                if self.labels != "none" and isinstance(record, dict) and self.keys["label"] not in record:
                    missing.append(self.keys["label"])
                if missing:
                    bad.add(f"missing key(s) {missing}", f"line {n}")
                    continue
                records.append((n, record))
        return records

    def class_names(self) -> list[str] | None:
        """The class names (from ``classes`` or, for named labels, from the train file); None for indices."""
        if self.classes is not None or self.labels not in ("multiclass", "multilabel"):
            return self.classes
        path = self.root / str(self.files["train"])
        names: set[str] = set()
        for _, record in self._lines(path, BadRecords(self.dataset_name, "train", [path])):
            value = record[self.keys["label"]]
            names.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
        if not names:
            return None
        if len(names) != self.num_classes:
            raise MMFuseError(f"{path}: {len(names)} distinct class names but data.num_classes={self.num_classes}. "
                              f"Fix: set data.num_classes={len(names)} or list them in data.classes")
        self.classes = sorted(names)
        return self.classes

    def _label(self, value: Any, names: list[str] | None) -> Any:
        """The label as the task wants it, or a string saying why it is bad."""
        if self.labels == "match":
            return float(value) if value in (0, 1, True, False) else f"label {value!r} is not 0 or 1"
        values = value if self.labels == "multilabel" else [value]
        if self.labels == "multilabel" and not isinstance(value, list):
            return f"label {value!r} is not a list of classes"
        out = []
        for v in values:
            if isinstance(v, str) and names is not None and v in names:
                out.append(names.index(v))
            elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < self.num_classes:
                out.append(v)
            else:
                return f"unknown class {v!r} (classes: {names or f'0..{self.num_classes - 1}'})"
        return out if self.labels == "multilabel" else out[0]

    def read_split(self, name: str) -> CaptionSplit | None:
        if not self.files.get(name):
            return None
        path = self.root / str(self.files[name])
        bad = BadRecords(self.dataset_name, name, [path])
        names = self.class_names()
        items = self.item_modalities()
        images, image_keys, index_of = [], [], {}
        captions, caption_image, caption_keys, labels = [], [], [], []
        for n, record in self._lines(path, bad):
            text, files = record[self.keys["text"]], tuple(record[self.keys[m]] for m in items)
            if not isinstance(text, str) or not all(isinstance(f, str) for f in files):
                bad.add(f"{' and '.join((*(self.keys[m] for m in items), self.keys['text']))} must be strings",
                        f"line {n}")
                continue
            where = self._paths(items, files)
            if isinstance(where, str):
                bad.add(where, f"line {n}")
                continue
            if self.labels != "none":
                label = self._label(record[self.keys["label"]], names)
                if isinstance(label, str):
                    bad.add(label, f"line {n}")
                    continue
                labels.append(label)
            if files not in index_of:
                index_of[files] = len(images)
                images.append(where)
                image_keys.append(f"{', '.join(f'{self.keys[m]} {f!r}' for m, f in zip(items, files))} (line {n})")
            captions.append(text)
            caption_image.append(index_of[files])
            caption_keys.append(f"line {n}")
        extra = {"label": labels} if self.labels != "none" else {}
        return CaptionSplit(images, image_keys, captions, caption_image, caption_keys, bad, extra)

    def _paths(self, items: tuple[str, ...], files: tuple[str, ...]) -> Path | MediaItem | str:
        """The file of an image-only record (a ``Path``) or the ``MediaItem`` of the others; a string
        says why a path is refused."""
        paths = {}
        for m, f in zip(items, files):
            where = image_path(self.roots[m], f)
            if isinstance(where, str):  # validation words it for images
                return where if m == "image" else where.replace("image path", f"{m} path").replace("image folder", f"{m} folder")
            paths[m] = where
        return paths["image"] if not self.media else MediaItem(paths)

    def pair_fields(self, name: str, split: CaptionSplit) -> dict[str, torch.Tensor]:
        if self.labels == "none":
            return {}
        labels = split.extra["label"]
        if self.labels == "match":
            return {"label": torch.tensor(labels, dtype=torch.float32)}
        if self.labels == "multiclass":
            return {"target": torch.tensor(labels, dtype=torch.long)}
        target = torch.zeros(len(labels), self.num_classes)
        for row, classes in enumerate(labels):
            target[row, classes] = 1.0
        return {"target": target}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(labels=self.labels, files={k: v for k, v in self.files.items() if v})
        if self.media:
            out.update(modalities=list(self.modalities))
        if self.labels in ("multiclass", "multilabel"):
            out.update(num_classes=self.num_classes, classes=self.classes)
        return out
