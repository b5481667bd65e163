"""``data=coco_captions``: MS-COCO captions (5 per image), 2014 or 2017, official or Karpathy splits.

Layout under ``data.root`` (as downloaded from cocodataset.org)::

    annotations/captions_train2014.json  train2014/COCO_train2014_000000000009.jpg   (year 2014)
    annotations/captions_val2014.json    val2014/COCO_val2014_000000000042.jpg
    annotations/captions_train2017.json  train2017/000000000009.jpg                   (year 2017)
    annotations/captions_val2017.json    val2017/000000000139.jpg

Official splits: train = ``captions_train<year>.json``, val = ``captions_val<year>.json``, no test
split (COCO's test images have no public captions). ``year=auto`` picks 2017 when its train file is
there, else 2014. With ``karpathy_split=<path of dataset_coco.json>`` the splits are Karpathy's
(113,287 train with restval / 5,000 val / 5,000 test over the 2014 images; the COCO 5k retrieval
benchmark), and the images are found under ``root/<filepath>/<filename>``.

The official JSON: ``{"images": [{"id", "file_name", ...}], "annotations": [{"image_id", "caption",
"id"}]}``. Bad records (``mmfuse.data.validation``): an image record without ``id`` / ``file_name``,
an id that is not an integer or a string, a ``file_name`` outside the image folder (absolute or with
``..``), an image id given to two different files (which photo its captions describe cannot be told:
the id and all its captions are bad), an annotation id given twice (the later ones), an annotation
for an unknown image id (or for one written as a string where the images have an integer).
An image record repeated with the same id and the same file is one image (logged, not an error).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from mmfuse.data.captions import CaptionDataModule, CaptionSplit
from mmfuse.data.karpathy import read_karpathy
from mmfuse.data.validation import BadRecords, UnknownIds, id_problem, image_path, read_json, require_keys
from mmfuse.errors import MMFuseError

log = logging.getLogger(__name__)

YEARS = ("auto", "2014", "2017")
OFFICIAL = {"train": "train", "val": "val"}


def read_coco_captions(path: Path, image_dir: Path, split: str) -> CaptionSplit:
    data = read_json(path, "the official COCO captions JSON")
    require_keys(data, ["images", "annotations"], path, "the official COCO captions format")
    bad = BadRecords("coco_captions", split, [path])
    files, refused, repeated = _image_records(data["images"], image_dir, bad)
    index_of = {image_id: i for i, image_id in enumerate(i for i in files if i not in refused)}
    images = [image_dir / files[image_id] for image_id in index_of]
    image_keys = [f"image id {image_id}" for image_id in index_of]
    if repeated:
        log.warning("data=coco_captions, %s split: %d image record(s) in %s repeat an earlier one (same id, same "
                    "file_name) and are counted once (first: image id %s)", split, len(repeated), path, repeated[0])
    unknown = UnknownIds(files, "the images")
    first_at: dict[Any, int] = {}  # annotation id -> where it first appears
    captions_of_refused: Counter = Counter()
    captions, caption_image, caption_keys = [], [], []
    for n, ann in enumerate(data["annotations"]):
        key = f"annotation id {ann.get('id', n)}" if isinstance(ann, dict) else f"annotations[{n}]"
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            bad.add("annotation without 'image_id' and a 'caption' string", key)
            continue
        reason = id_problem(ann.get("id", n), "annotation id") or id_problem(ann["image_id"], "image_id")
        if reason:
            bad.add(reason, f"annotations[{n}]")
            continue
        if "id" in ann:
            if ann["id"] in first_at:
                bad.add(f"duplicate annotation id (first at annotations[{first_at[ann['id']]}])", key)
                continue
            first_at[ann["id"]] = n
        image_id = ann["image_id"]
        if image_id in refused:
            captions_of_refused[image_id] += 1
            continue
        if image_id not in index_of:
            bad.add(unknown.reason(image_id, f"caption for unknown image id {image_id}"), key)
            continue
        captions.append(ann["caption"])
        caption_image.append(index_of[image_id])
        caption_keys.append(key)
    for image_id, reason in refused.items():
        bad.add(reason, f"image id {image_id} ({captions_of_refused[image_id]} caption(s))")
    return CaptionSplit(images, image_keys, captions, caption_image, caption_keys, bad)


def _image_records(records: list, image_dir: Path, bad: BadRecords) -> tuple[dict[Any, Any], dict[Any, str], list]:
    """``(file_name of each image id, why an id is refused, ids of records that repeat an earlier one)``."""
    files: dict[Any, Any] = {}
    refused: dict[Any, str] = {}
    repeated = []
    for n, record in enumerate(records):
        if not isinstance(record, dict) or "id" not in record or "file_name" not in record:
            bad.add("image record without 'id' and 'file_name'", f"images[{n}]")
            continue
        image_id, name = record["id"], record["file_name"]
        if reason := id_problem(image_id, "image id"):
            bad.add(reason, f"images[{n}]")
            continue
        if image_id in files:
            if name == files[image_id]:
                repeated.append(image_id)
            else:
                refused[image_id] = (f"image id given to two files ({files[image_id]!r} and {name!r}; which one "
                                     "its captions describe cannot be told)")
            continue
        files[image_id] = name
        where = image_path(image_dir, name)
        if isinstance(where, str):
            refused[image_id] = where
    return files, refused, repeated


class COCOCaptionsDataModule(CaptionDataModule):
    dataset_name = "coco_captions"

    def __init__(self, root: str, year: str | int = "auto", karpathy_split: str | None = None,
                 include_restval: bool = True, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        if str(year) not in YEARS:
            raise MMFuseError(f"data.year={year!r}: expected one of {YEARS}")
        self.karpathy_split = Path(str(karpathy_split)).expanduser() if karpathy_split else None
        self.include_restval = bool(include_restval)
        self.year = self._resolve_year(str(year)) if self.karpathy_split is None else None

    def _resolve_year(self, year: str) -> str:
        if year != "auto":
            return year
        for candidate in ("2017", "2014"):
            if (self.root / "annotations" / f"captions_train{candidate}.json").is_file():
                return candidate
        raise MMFuseError(
            f"data.root={self.root}: found neither annotations/captions_train2017.json nor "
            "annotations/captions_train2014.json. Fix: point data.root at the folder that holds "
            "annotations/ and the image folders, or give data.karpathy_split=<dataset_coco.json>."
        )

    def read_split(self, name: str) -> CaptionSplit | None:
        if self.karpathy_split is not None:
            return read_karpathy(self.karpathy_split, name, self.root, self.dataset_name, self.include_restval)
        if name not in OFFICIAL:
            return None
        split = f"{OFFICIAL[name]}{self.year}"
        return read_coco_captions(self.root / "annotations" / f"captions_{split}.json", self.root / split, name)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["split_file"] = str(self.karpathy_split) if self.karpathy_split else f"official {self.year}"
        return out
