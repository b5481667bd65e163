"""Karpathy split files (``dataset_coco.json``, ``dataset_flickr30k.json``, Karpathy & Fei-Fei 2015).

Format: ``{"images": [{"filename", "filepath"?, "split": train|val|test|restval, "sentences":
[{"raw", "sentid", ...}], "cocoid"? / "imgid"}]}``. The image file is ``image_root / filepath /
filename``; a ``filepath`` or ``filename`` that is absolute or has a ``..`` component is a bad record
(``mmfuse.data.validation.image_path``). ``restval`` (COCO only) joins the train split when
``include_restval`` (the usual 113k training images).
"""

from __future__ import annotations

from pathlib import Path

from mmfuse.data.captions import CaptionSplit
from mmfuse.data.validation import BadRecords, image_path, json_type, read_json, require_keys

KARPATHY_SPLITS = ("train", "val", "test", "restval")


def read_karpathy(path: Path, split: str, image_root: Path, dataset: str,
                  include_restval: bool = True) -> CaptionSplit:
    data = read_json(path, "a Karpathy split file with an 'images' list")
    require_keys(data, ["images"], path, "a Karpathy split file")
    wanted = {split} | ({"restval"} if split == "train" and include_restval else set())
    bad = BadRecords(dataset, split, [path])
    images, image_keys, captions, caption_image, caption_keys = [], [], [], [], []
    for n, record in enumerate(data["images"]):
        if not isinstance(record, dict) or any(k not in record for k in ("filename", "split", "sentences")):
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            bad.add("missing key(s) among 'filename', 'split', 'sentences' (has " f"{keys})", f"images[{n}]")
            continue
        if record["split"] not in KARPATHY_SPLITS:
            bad.add(f"unknown split {record['split']!r} (expected one of {KARPATHY_SPLITS})", f"images[{n}]")
            continue
        if record["split"] not in wanted:
            continue
        key = f"image {record.get('cocoid', record.get('imgid', n))}"
        where = image_path(image_root, record.get("filepath", ""), record["filename"])
        if not isinstance(record["sentences"], list):
            where = f"'sentences' not a list (it is {json_type(record['sentences'])})"
        if isinstance(where, str):
            bad.add(where, f"images[{n}] ({key})")
            continue
        index = len(images)
        images.append(where)
        image_keys.append(key)
        for s, sentence in enumerate(record["sentences"]):
            sentence_key = f"sentid {sentence.get('sentid', s)}" if isinstance(sentence, dict) else f"sentence {s}"
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str):
                bad.add("sentence without a 'raw' string", f"{sentence_key} of {key}")
                continue
            captions.append(raw)
            caption_image.append(index)
            caption_keys.append(sentence_key)
    return CaptionSplit(images, image_keys, captions, caption_image, caption_keys, bad)
