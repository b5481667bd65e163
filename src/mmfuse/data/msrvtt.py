"""``data=msrvtt``: MSR-VTT text-video retrieval, the "1k-A" split (JSFusion; Yu et al. 2018) as
CLIP4Clip distributes it (``msrvtt_data.zip``; its ``dataloaders/dataloader_msrvtt_retrieval.py`` reads
the same three files)::

    <root>/MSRVTT_train.9k.csv          column video_id: the 9,000 training videos
    <root>/MSRVTT_JSFUSION_test.csv     columns key, vid_key, video_id, sentence: 1,000 test videos,
                                        one caption each
    <root>/MSRVTT_data.json             {"videos": [{"video_id", ...}], "sentences": [{"sen_id",
                                        "video_id", "caption"}]}: the 20 captions of each of the 10,000
    <video_root>/<video_id>.mp4         (video_root default: <root>/videos/all, the MSRVTT.zip layout)

Train: every (video, caption) of the train videos, their captions from ``MSRVTT_data.json`` in file
order (``captions_per_image`` keeps the first ones). Val and test: the 1k test videos with the test
csv's one caption each (the protocol's retrieval: 1,000 x 1,000). Batches: ``video`` (the frames
``encoder.video.frames`` / ``sampling`` pick), ``input_ids`` / ``attention_mask``, ``image_id`` (the
video's index in its split) and ``text_id``.

Bad records (``on_bad_sample``): a missing or undecodable video (``verify_images``: see
``mmfuse.data.media``), a video id that would leave ``video_root``, a caption for a
video that ``MSRVTT_data.json``'s ``videos`` does not list, an empty caption. A file that lacks a column
or key the layout needs is an error naming it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from mmfuse.data.captions import CaptionSplit
from mmfuse.data.media import MediaCaptionDataModule, MediaItem
from mmfuse.data.validation import BadRecords, image_path, read_json, require_keys
from mmfuse.errors import MMFuseError


class MSRVTTDataModule(MediaCaptionDataModule):
    dataset_name = "msrvtt"
    modalities = ("video", "text")
    record_keys = {"video": "video_id"}

    def __init__(self, root: str, train_csv: str = "MSRVTT_train.9k.csv",
                 test_csv: str = "MSRVTT_JSFUSION_test.csv", data_json: str = "MSRVTT_data.json",
                 video_root: str | None = None, captions_per_image: int | None = None, **kwargs: Any) -> None:
        super().__init__(root, captions_per_image=captions_per_image, **kwargs)
        self.train_csv, self.test_csv, self.data_json = (self.root / train_csv, self.root / test_csv,
                                                         self.root / data_json)
        self.video_root = Path(str(video_root)).expanduser() if video_root else self.root / "videos" / "all"
        self._data: dict[str, Any] | None = None

    # -- reading ------------------------------------------------------------------------------------
    def _csv(self, path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
        """``(line, row)`` of a csv with a header naming ``columns`` (line 1 is the header)."""
        if not path.is_file():
            raise MMFuseError(f"{path} not found (MSR-VTT split list). Fix: check data.root and "
                              "data.train_csv / data.test_csv (the CLIP4Clip msrvtt_data files)")
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise MMFuseError(f"{path}: no column(s) {missing} (header: {reader.fieldnames}). Fix: point "
                                  "data.train_csv / data.test_csv at the MSR-VTT csv files")
            return [(n, row) for n, row in enumerate(reader, start=2)]

    def data(self) -> dict[str, Any]:
        """``MSRVTT_data.json``: its ``sentences`` and, when it lists them, the known video ids."""
        if self._data is None:
            raw = read_json(self.data_json, "MSR-VTT captions: {'videos': [...], 'sentences': [...]}")
            require_keys(raw, ["sentences"], self.data_json, "MSR-VTT captions")
            videos = raw.get("videos")
            known = {v.get("video_id") for v in videos if isinstance(v, dict)} if isinstance(videos, list) else None
            self._data = {"sentences": raw["sentences"], "known": known}
        return self._data

    def _video(self, video_id: str) -> Path | str:
        """``<video_root>/<video_id>.mp4``, or why the id is refused (it would leave ``video_root``)."""
        where = image_path(self.video_root, f"{video_id}.mp4")
        return where if isinstance(where, Path) else where.replace("image", "video")

    def read_split(self, name: str) -> CaptionSplit | None:
        known = self.data()["known"]
        videos: list[MediaItem] = []
        video_keys: list[str] = []
        index_of: dict[str, int] = {}
        captions, caption_video, caption_keys = [], [], []

        def add_video(video_id: Any, record: str, bad: BadRecords) -> int | None:
            if video_id in index_of:
                return index_of[video_id]
            where = self._video(video_id)
            if isinstance(where, str):
                bad.add(where, record)
                return None
            if known is not None and video_id not in known:
                bad.add(f"unknown video {video_id!r} (not among the videos of {self.data_json.name})", record)
                return None
            index_of[video_id] = len(videos)
            videos.append(MediaItem({"video": where}))
            video_keys.append(f"video {video_id!r}")
            return index_of[video_id]

        if name == "train":
            bad = BadRecords(self.dataset_name, name, [self.train_csv, self.data_json])
            for n, row in self._csv(self.train_csv, ("video_id",)):
                add_video(row["video_id"], f"{self.train_csv.name} line {n}", bad)
            train_ids = set(index_of)
            for k, s in enumerate(self.data()["sentences"]):
                if not isinstance(s, dict) or "video_id" not in s or "caption" not in s:
                    bad.add("sentence without video_id and caption", f"sentences[{k}]")
                    continue
                record = f"sentence {s.get('sen_id', k)!r}"
                if known is not None and s["video_id"] not in known:
                    bad.add(f"caption for an unknown video {s['video_id']!r} (not among the videos of "
                            f"{self.data_json.name})", record)
                    continue
                if s["video_id"] not in train_ids:
                    continue  # a test (or unused) video's caption
                if not isinstance(s["caption"], str):
                    bad.add(f"caption not a string ({s['caption']!r})", record)
                    continue
                captions.append(s["caption"])
                caption_video.append(index_of[s["video_id"]])
                caption_keys.append(record)
        else:
            bad = BadRecords(self.dataset_name, name, [self.test_csv])
            for n, row in self._csv(self.test_csv, ("video_id", "sentence")):
                record = f"{self.test_csv.name} line {n}"
                i = add_video(row["video_id"], record, bad)
                if i is not None:
                    captions.append(row["sentence"])
                    caption_video.append(i)
                    caption_keys.append(record)
        return CaptionSplit(videos, video_keys, captions, caption_video, caption_keys, bad)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(protocol="1k-A (JSFusion test)", video_root=str(self.video_root),
                   files=[self.train_csv.name, self.test_csv.name, self.data_json.name])
        return out
