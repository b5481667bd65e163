"""``data=jsonl``: any image-text data as JSON Lines, one record per line::

    {"image": "photos/0001.jpg", "text": "a dog on a beach", "label": "dog"}

Image paths are relative to ``image_root`` (default ``root``); records naming the same image share it;
an absolute path or one with ``..`` is a bad record (``mmfuse.data.validation.image_path``).
``labels`` says what ``label`` is:
- ``none``: no labels; every record is a positive pair (retrieval; ITM with in-batch negatives);
- ``match``: 0 / 1, the text does / does not describe the image (ITM on given pairs: batch ``label``);
- ``multiclass``: one class, a name from ``classes`` or an index ``< num_classes`` (batch ``target``);
- ``multilabel``: a list of classes (batch ``target``, multi-hot ``[B, num_classes]``).
With class names and no ``classes`` list, the classes are the sorted names seen in the train file.
Bad records (not UTF-8, not JSON, missing keys, empty text, unknown class, bad image or image path)
follow ``on_bad_sample``. A UTF-8 byte order mark at the start of the file is allowed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mmfuse.data.captions import CaptionDataModule, CaptionSplit
from mmfuse.data.validation import BadRecords, image_path
from mmfuse.errors import MMFuseError

LABELS = ("none", "match", "multiclass", "multilabel")


class JSONLDataModule(CaptionDataModule):
    dataset_name = "jsonl"

    def __init__(self, root: str, train: str | None = "train.jsonl", val: str | None = "val.jsonl",
                 test: str | None = None, image_root: str | None = None, image_key: str = "image",
                 text_key: str = "text", label_key: str = "label", labels: str = "none",
                 classes: list[str] | None = None, num_classes: int | None = None,
                 captions_per_image: int | None = None, **kwargs: Any) -> None:
        super().__init__(root, captions_per_image=captions_per_image, **kwargs)
        if labels not in LABELS:
            raise MMFuseError(f"data.labels={labels!r}: expected one of {LABELS}")
        self.files = {"train": train, "val": val, "test": test}
        self.image_root = Path(str(image_root)).expanduser() if image_root else self.root
        self.keys = {"image": image_key, "text": text_key, "label": label_key}
        self.labels = labels
        self.classes = list(classes) if classes else None
        self.num_classes = int(num_classes) if num_classes else None
        if labels in ("multiclass", "multilabel") and self.num_classes is None:
            raise MMFuseError(f"data.labels={labels} needs data.num_classes (the classification head's size)")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise MMFuseError(f"data.classes has {len(self.classes)} names but data.num_classes={self.num_classes}")

    # -- reading ------------------------------------------------------------------------------------
    def _lines(self, path: Path, bad: BadRecords) -> list[tuple[int, dict[str, Any]]]:
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
                missing = [k for k in (self.keys["image"], self.keys["text"]) if not isinstance(record, dict) or k not in record]
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
        images, image_keys, index_of = [], [], {}
        captions, caption_image, caption_keys, labels = [], [], [], []
        for n, record in self._lines(path, bad):
            text, image = record[self.keys["text"]], record[self.keys["image"]]
            if not isinstance(text, str) or not isinstance(image, str):
                bad.add("image and text must be strings", f"line {n}")
                continue
            where = image_path(self.image_root, image)
            if isinstance(where, str):
                bad.add(where, f"line {n}")
                continue
            if self.labels != "none":
                label = self._label(record[self.keys["label"]], names)
                if isinstance(label, str):
                    bad.add(label, f"line {n}")
                    continue
                labels.append(label)
            if image not in index_of:
                index_of[image] = len(images)
                images.append(where)
                image_keys.append(f"image {image!r} (line {n})")
            captions.append(text)
            caption_image.append(index_of[image])
            caption_keys.append(f"line {n}")
        extra = {"label": labels} if self.labels != "none" else {}
        return CaptionSplit(images, image_keys, captions, caption_image, caption_keys, bad, extra)

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
        if self.labels in ("multiclass", "multilabel"):
            out.update(num_classes=self.num_classes, classes=self.classes)
        return out
