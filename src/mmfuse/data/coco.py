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
"id"}]}``. An annotation whose ``image_id`` is not among the images is a bad record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmfuse.data.captions import CaptionDataModule, CaptionSplit
from mmfuse.data.karpathy import read_karpathy
from mmfuse.data.validation import BadRecords, read_json, require_keys
from mmfuse.errors import MMFuseError

YEARS = ("auto", "2014", "2017")
OFFICIAL = {"train": "train", "val": "val"}


def read_coco_captions(path: Path, image_dir: Path, split: str) -> CaptionSplit:
    data = read_json(path, "the official COCO captions JSON")
    require_keys(data, ["images", "annotations"], path, "the official COCO captions format")
    bad = BadRecords("coco_captions", split, [path])
    images, image_keys, index_of = [], [], {}
    for n, record in enumerate(data["images"]):
        if not isinstance(record, dict) or "id" not in record or "file_name" not in record:
            bad.add("image record without 'id' and 'file_name'", f"images[{n}]")
            continue
        index_of[record["id"]] = len(images)
        images.append(image_dir / record["file_name"])
        image_keys.append(f"image id {record['id']}")
    captions, caption_image, caption_keys = [], [], []
    for n, ann in enumerate(data["annotations"]):
        key = f"annotation id {ann.get('id', n)}" if isinstance(ann, dict) else f"annotations[{n}]"
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            bad.add("annotation without 'image_id' and a 'caption' string", key)
            continue
        if ann["image_id"] not in index_of:
            bad.add(f"caption for unknown image id {ann['image_id']}", key)
            continue
        captions.append(ann["caption"])
        caption_image.append(index_of[ann["image_id"]])
        caption_keys.append(key)
    return CaptionSplit(images, image_keys, captions, caption_image, caption_keys, bad)


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
