"""Issue 13, data loading: image paths confined to their folder, duplicate ids, one-line errors for
bad ids and bytes, the pixel limit checked from the header, free disk space for the feature cache."""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import shutil
import struct
import zlib
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.io import encode_jpeg

from conftest import CONF_DIR, FAST
from mmfuse.builder import build_datamodule, build_module
from mmfuse.data.coco import COCOCaptionsDataModule
from mmfuse.data.flickr30k import Flickr30kDataModule
from mmfuse.data.images import ImageFiles
from mmfuse.data.jsonl import JSONLDataModule
from mmfuse.data.validation import check_image_file
from mmfuse.data.vqa import VQAv2DataModule
from mmfuse.encoders.transforms import ImageTransform
from mmfuse.encoders.word_tokenizer import WordTokenizer
from mmfuse.errors import MMFuseError
from mmfuse.features import storage
from mmfuse.features.storage import EntryWriter

FIX = "Fix: repair or remove them, or set data.on_bad_sample=skip"


def write_jpeg(path: Path, value: int = 50, size: tuple[int, int] = (24, 32)) -> Path:
    """A real JPEG of ``size = (height, width)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = torch.full((3, *size), value, dtype=torch.uint8)
    image[0, : size[0] // 2] = 255 - value
    path.write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
    return path


def attached(dm):
    dm.attach(ImageTransform(16, (0.5,) * 3, (0.25,) * 3), WordTokenizer(512, 16))
    return dm


def coco(root: Path, images: list[dict], captions: int = 5, split: str = "train", anns: list | None = None) -> Path:
    """A 2017 layout; ``images``: the image records (files written for plain names inside the folder)."""
    for record in images:
        name = record.get("file_name")
        if isinstance(name, str) and not name.startswith("/") and ".." not in name:
            write_jpeg(root / f"{split}2017" / name, 10 * len(name))
    if anns is None:
        anns = [{"image_id": r["id"], "id": 100 * n + c, "caption": f"image {n} caption {c}"}
                for n, r in enumerate(images) for c in range(captions)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for s in ("train", "val"):
        data = {"images": images, "annotations": anns} if s == split else \
            {"images": [{"id": 1, "file_name": "v.jpg"}], "annotations": [{"image_id": 1, "id": 1, "caption": "v"}]}
        if s != split:
            write_jpeg(root / f"{s}2017" / "v.jpg")
        (root / "annotations" / f"captions_{s}2017.json").write_text(json.dumps(data))
    return root


def error_of(dm) -> str:
    with pytest.raises(MMFuseError) as err:
        attached(dm).setup("fit")
    return str(err.value)


def error_and_skipped(cls, root: Path, **kw):
    """The error of ``on_bad_sample=error`` and the datamodule set up with ``on_bad_sample=skip``."""
    msg = error_of(cls(str(root), num_workers=0, **kw))
    dm = attached(cls(str(root), num_workers=0, on_bad_sample="skip", **kw))
    dm.setup("fit")
    return msg, dm


# -- 1. image paths stay inside their folder ------------------------------------------------------------


def test_coco_file_names_outside_the_image_folder_are_bad_records(tmp_path):
    outside = write_jpeg(tmp_path / "secret.jpg")  # a real image: before the fix it was trained on
    root = coco(tmp_path / "coco", [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": str(outside)},
                                    {"id": 3, "file_name": "../../secret.jpg"}])
    folder = root / "train2017"
    msg, dm = error_and_skipped(COCOCaptionsDataModule, root)
    assert msg == (
        f"data=coco_captions, train split: 2 bad record(s) in {root / 'annotations' / 'captions_train2017.json'}:\n"
        f"  image id 2 (5 caption(s)): image path outside the image folder ({str(outside)!r} is absolute; "
        f"paths are relative to {folder})\n"
        f"  image id 3 (5 caption(s)): image path outside the image folder ('../../secret.jpg' has a '..' component; "
        f"paths are relative to {folder})\n"
        f"{FIX} to leave them out (their count goes into results.json).")
    assert dm.split("train").images == [folder / "a.jpg"]
    assert dm.describe()["train"]["skipped"]["by_reason"] == {"image path outside the image folder": 2}


def jsonl(root: Path, rows: list, val: list | None = None) -> Path:
    write_jpeg(root / "img" / "0.jpg")
    for split, lines in (("train", rows), ("val", val or rows[:1])):
        (root / f"{split}.jsonl").write_bytes(b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode()
                                                         for r in lines) + b"\n")
    return root


def test_jsonl_image_paths_outside_the_root_are_bad_records_and_keep_labels_aligned(tmp_path):
    outside = write_jpeg(tmp_path / "elsewhere.jpg")
    rows = [{"image": "img/0.jpg", "text": "fine", "label": 1},
            {"image": str(outside), "text": "absolute", "label": 0},
            {"image": "img/../../elsewhere.jpg", "text": "dotdot", "label": 0},
            {"image": "img/0.jpg", "text": "also fine", "label": 0}]
    root = jsonl(tmp_path / "data", rows)
    msg, dm = error_and_skipped(JSONLDataModule, root, labels="match")
    assert (f"  line 2: image path outside the image folder ({str(outside)!r} is absolute; paths are relative to {root})\n"
            f"  line 3: image path outside the image folder ('img/../../elsewhere.jpg' has a '..' component; paths are "
            f"relative to {root})\n") in msg and "2 bad record(s)" in msg
    assert dm.split("train").captions == ["fine", "also fine"]
    assert dm.splits["train"].fields["label"].tolist() == [1.0, 0.0]  # each label still with its own text


def karpathy_records(names: list[tuple[str, str]]) -> list[dict]:
    return [{"filepath": path, "filename": name, "split": "train", "imgid": k,
             "sentences": [{"raw": f"img {k} sent {s}", "sentid": 5 * k + s} for s in range(5)]}
            for k, (path, name) in enumerate(names)]


def test_karpathy_and_flickr30k_paths_outside_their_folder_are_bad_records(tmp_path):
    outside = write_jpeg(tmp_path / "outside.jpg")
    root = tmp_path / "coco"
    write_jpeg(root / "val2014" / "a.jpg")
    split_file = tmp_path / "dataset_coco.json"
    records = karpathy_records([("val2014", "a.jpg"), ("..", "outside.jpg"), ("", str(outside)), ("val2014", "a.jpg")])
    records[3]["sentences"] = 5  # was a TypeError traceback
    split_file.write_text(json.dumps({"images": records}))
    msg = error_of(COCOCaptionsDataModule(str(root), karpathy_split=str(split_file), num_workers=0))
    assert (f"  images[1] (image 1): image path outside the image folder ('..' has a '..' component; paths are "
            f"relative to {root})\n"
            f"  images[2] (image 2): image path outside the image folder ({str(outside)!r} is absolute; paths are "
            f"relative to {root})\n"
            "  images[3] (image 3): 'sentences' not a list (it is an integer)\n") in msg and "3 bad record(s)" in msg

    flickr = tmp_path / "flickr"
    write_jpeg(flickr / "flickr30k-images" / "1.jpg")
    (flickr / "dataset_flickr30k.json").write_text(json.dumps({"images": karpathy_records(
        [("", "1.jpg"), ("", "../../outside.jpg")])}))
    msg = error_of(Flickr30kDataModule(str(flickr), num_workers=0))
    assert (f"  images[1] (image 1): image path outside the image folder ('../../outside.jpg' has a '..' component; paths "
            f"are relative to {flickr / 'flickr30k-images'})\n") in msg


def test_symlinks_inside_the_folder_are_followed(tmp_path):
    """Documented decision: a link that whoever set up data.root put there is theirs to make."""
    big_disk = tmp_path / "big_disk" / "train2017"
    write_jpeg(big_disk / "a.jpg")
    root = coco(tmp_path / "coco", [{"id": 1, "file_name": "a.jpg"}])
    shutil.rmtree(root / "train2017")
    (root / "train2017").symlink_to(big_disk, target_is_directory=True)
    dm = attached(COCOCaptionsDataModule(str(root), num_workers=0))
    dm.setup("fit")
    assert dm.split("train").images == [root / "train2017" / "a.jpg"] and len(dm.splits["train"]) == 5


def test_image_path_refuses_non_strings_and_nul_bytes(tmp_path):
    from mmfuse.data.validation import image_path

    assert image_path(tmp_path, "a/b.jpg") == tmp_path / "a" / "b.jpg"
    assert image_path(tmp_path, 7) == "image path not a string (7 is an integer)"
    assert image_path(tmp_path, "a\0b.jpg") == "image path with a NUL byte ('a\\x00b.jpg')"
    assert image_path(tmp_path, "a/..b.jpg") == tmp_path / "a" / "..b.jpg"  # a name, not a parent
    assert image_path(tmp_path, "link/../b.jpg") == (  # inside on paper, outside if link is a symlink
        f"image path outside the image folder ('link/../b.jpg' has a '..' component; paths are relative to {tmp_path})")


def vqa(root: Path, questions: list[dict], annotations: list[dict], **kw) -> VQAv2DataModule:
    for split in ("train", "val"):
        for q in questions:
            if isinstance(q.get("image_id"), int):
                write_jpeg(root / f"{split}2014" / f"COCO_{split}2014_{q['image_id']:012d}.jpg")
        (root / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps({"questions": questions}))
        (root / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    cfg = yaml.safe_load((CONF_DIR / "data" / "vqa_v2.yaml").read_text())
    kwargs = {k: cfg[k] for k in ("questions", "annotations", "image_file")}
    return VQAv2DataModule(str(root), num_workers=0, **{**kwargs, **kw})


def answers(qid, answer: str = "yes") -> dict:
    return {"question_id": qid, "answers": [{"answer": answer}] * 10}


def test_vqa_image_ids_that_format_to_a_path_outside_the_root_are_bad_records(tmp_path):
    write_jpeg(tmp_path / "outside.jpg")
    root = tmp_path / "vqa"
    questions = [{"question_id": 1, "image_id": 5, "question": "q1?"},
                 {"question_id": 2, "image_id": "../outside", "question": "q2?"}]
    write_jpeg(root / "5.jpg")
    dm = vqa(root, questions, [answers(1), answers(2)], image_file={"train": "{image_id}.jpg", "val": "{image_id}.jpg"})
    msg = error_of(dm)
    assert (f"train split: 1 bad record(s) in {root / 'v2_OpenEnded_mscoco_train2014_questions.json'} and "
            f"{root / 'v2_mscoco_train2014_annotations.json'}:\n  question id 2: image path outside the image folder "
            f"('../outside.jpg' has a '..' component; paths are relative to {root})\n") in msg


# -- 2. duplicate ids -----------------------------------------------------------------------------------


def test_an_image_id_given_to_two_files_is_bad_with_all_its_captions(tmp_path):
    root = coco(tmp_path, [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"},
                           {"id": 1, "file_name": "c.jpg"}])
    msg, dm = error_and_skipped(COCOCaptionsDataModule, root, captions_per_image=None)
    assert msg.splitlines()[1] == ("  image id 1 (10 caption(s)): image id given to two files ('a.jpg' and 'c.jpg'; "
                                   "which one its captions describe cannot be told)")
    assert "1 bad record(s)" in msg
    train = dm.split("train")
    assert train.images == [root / "train2017" / "b.jpg"]
    assert train.captions == [f"image 1 caption {c}" for c in range(5)]  # none of image id 1's on b.jpg


def test_the_same_image_record_twice_is_one_image(tmp_path, caplog):
    """Decision: same id, same file is harmless duplication: one image, its captions once, a warning."""
    records = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
    anns = [{"image_id": i, "id": 10 * i + c, "caption": f"{i}-{c}"} for i in (1, 2) for c in range(5)]
    root = coco(tmp_path, [*records, records[0]], anns=anns)
    dm = attached(COCOCaptionsDataModule(str(root), num_workers=0))
    with caplog.at_level(logging.WARNING, logger="mmfuse.data.coco"):
        dm.setup("fit")
    train = dm.split("train")
    assert train.images == [root / "train2017" / "a.jpg", root / "train2017" / "b.jpg"]
    assert train.caption_image == [0] * 5 + [1] * 5 and dm.describe()["train"]["images"] == 2
    assert caplog.messages == [f"data=coco_captions, train split: 1 image record(s) in "
                               f"{root / 'annotations' / 'captions_train2017.json'} repeat an earlier one (same "
                               "id, same file_name) and are counted once (first: image id 1)"]


def test_a_duplicate_annotation_id_is_a_bad_record(tmp_path):
    anns = [{"image_id": 1, "id": 7, "caption": "first"}, {"image_id": 1, "id": 8, "caption": "second"},
            {"image_id": 1, "id": 7, "caption": "again seven"}]
    root = coco(tmp_path, [{"id": 1, "file_name": "a.jpg"}], anns=anns)
    msg, dm = error_and_skipped(COCOCaptionsDataModule, root)
    assert msg.splitlines()[:2] == [
        f"data=coco_captions, train split: 1 bad record(s) in {root / 'annotations' / 'captions_train2017.json'}:",
        "  annotation id 7: duplicate annotation id (first at annotations[0])"]
    assert dm.split("train").captions == ["first", "second"]


# -- 3. one line instead of a traceback -----------------------------------------------------------------


def test_a_jsonl_line_that_is_not_utf8_is_a_bad_record(tmp_path):
    good = json.dumps({"image": "img/0.jpg", "text": "fine"}).encode()
    latin1 = '{"image": "img/0.jpg", "text": "caf\u00e9"}'.encode("latin-1")
    root = jsonl(tmp_path, [b"\xef\xbb\xbf" + good, latin1, good])  # a byte order mark on line 1 is fine
    msg, dm = error_and_skipped(JSONLDataModule, root)
    assert msg.splitlines()[:2] == [
        f"data=jsonl, train split: 1 bad record(s) in {root / 'train.jsonl'}:",
        "  line 2: not UTF-8 text (byte 0xe9 at byte 36 of the line; Fix: save the file as UTF-8)"]
    assert dm.split("train").captions == ["fine", "fine"]


def test_coco_ids_of_the_wrong_type_are_bad_records(tmp_path):
    images = [{"id": [1], "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 3, "file_name": "c.jpg"}]
    anns = [{"image_id": 2, "id": 1, "caption": "fine"}, {"image_id": "3", "id": 2, "caption": "string id"},
            {"image_id": [2], "id": 3, "caption": "list id"}, {"image_id": 2, "id": {"a": 1}, "caption": "dict id"}]
    root = coco(tmp_path, images, anns=anns)
    msg = error_of(COCOCaptionsDataModule(str(root), num_workers=0))
    assert msg.splitlines()[1:5] == [
        "  images[0]: image id not an integer or a string ([1] is a list)",
        "  annotation id 2: id type mismatch ('3' is a string, the images have an integer 3; Fix: write the ids the "
        "same way in both files)",
        "  annotations[2]: image_id not an integer or a string ([2] is a list)",
        "  annotations[3]: annotation id not an integer or a string ({'a': 1} is an object)"]
    assert "4 bad record(s)" in msg


def test_vqa_string_ids_are_named_not_a_traceback(tmp_path):
    questions = [{"question_id": 1, "image_id": 5, "question": "q1?"},
                 {"question_id": 2, "image_id": "6", "question": "q2?"},
                 {"question_id": 3, "image_id": 5, "question": "q3?"},
                 {"question_id": [4], "image_id": 5, "question": "q4?"}]
    anns = [answers(1), answers(2), answers("3"), answers(1, "no")]
    root = tmp_path / "vqa"
    msg = error_of(vqa(root, questions, anns))
    lines = msg.splitlines()
    assert lines[0].startswith("data=vqa_v2, train split: 4 bad record(s) in ")
    assert lines[1:5] == [
        "  annotations[3]: question id annotated twice (first at annotations[0])",
        "  question id 2: image id '6' does not fit data.image_file.train="
        "'train2014/COCO_train2014_{image_id:012d}.jpg' (a string: Unknown format code 'd' for object of type "
        "'str'; Fix: write image ids as integers, as VQA v2 does)",
        "  question id 3: id type mismatch (3 is an integer, the annotations have a string '3'; Fix: write the ids "
        "the same way in both files)",
        "  questions[3]: question_id not an integer or a string ([4] is a list)"]


# -- 4. the pixel limit -----------------------------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG that only declares its size (no pixel data): enough for any header reader, PIL's included."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    """SOI, an APP0 segment, a baseline frame header of ``width x height``, EOI: no pixel data."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded although the header is over the limit")
    monkeypatch.setattr("mmfuse.data.images.decode_image", refuse)


def test_the_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    image = write_jpeg(tmp_path / "small.jpg", size=(24, 32))  # 32 x 24 = 768 pixels
    reason = ("too many pixels (32 x 24 = 768 > data.max_pixels=700; Fix: data.max_pixels=768 or null for no "
              "limit, or shrink the image)")
    assert check_image_file(image, "quick", max_pixels=768) is None
    no_decoding(monkeypatch)
    for mode in ("quick", "decode"):
        assert check_image_file(image, mode, max_pixels=700) == reason
    store = ImageFiles([image], max_pixels=700)
    for read in (store.load, store.read_bytes):  # the CPU decoders and the feature cache's GPU decoding
        with pytest.raises(MMFuseError) as err:
            read(0)
        assert str(err.value) == f"{image}: {reason}"


def test_a_10000_by_10000_jpeg_is_refused_by_default_without_decoding(tmp_path, monkeypatch):
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(jpeg_header(10_000, 10_000))
    no_decoding(monkeypatch)
    assert check_image_file(huge) == ("too many pixels (10000 x 10000 = 100,000,000 > data.max_pixels=40,000,000; "
                                      "Fix: data.max_pixels=100000000 or null for no limit, or shrink the image)")
    with pytest.raises(MMFuseError, match="huge.jpg: too many pixels"):
        ImageFiles([huge]).load(0)


def test_pils_decompression_bomb_limit_neither_pre_empts_nor_bypasses_ours(tmp_path, monkeypatch):
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(20_000, 20_000))  # 400 MP: PIL refuses it outright (over 2 x 89 MP)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    no_decoding(monkeypatch)
    assert check_image_file(bomb).startswith("too many pixels (20000 x 20000 = 400,000,000 > data.max_pixels=40,000,000")
    assert check_image_file(bomb, max_pixels=400_000_000) is None  # raised by the user: PIL does not step in
    below_pil = tmp_path / "below_pil.png"
    below_pil.write_bytes(png_header(9_000, 9_000))  # 81 MP: under PIL's warning limit, over 40 MP
    assert check_image_file(below_pil).startswith("too many pixels (9000 x 9000 = 81,000,000 >")


def test_max_pixels_reaches_the_dataset_from_the_config_and_is_checked(tmp_path):
    root = coco(tmp_path, [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}])
    write_jpeg(root / "train2017" / "b.jpg", size=(48, 64))  # 3,072 pixels; a.jpg has 768
    msg, dm = error_and_skipped(COCOCaptionsDataModule, root, max_pixels=1000)
    assert msg.splitlines()[1] == (f"  image id 2 ({root / 'train2017' / 'b.jpg'}, 5 caption(s)): too many pixels (64 "
                                   "x 48 = 3,072 > data.max_pixels=1,000; Fix: data.max_pixels=3072 or null for no "
                                   "limit, or shrink the image)")
    assert dm.split("train").images == [root / "train2017" / "a.jpg"] and dm.describe()["max_pixels"] == 1000
    assert dm.splits["train"].images.max_pixels == 1000  # the decoders of training use it too
    for value in (0, -5, 2.5, "many", True):
        with pytest.raises(MMFuseError) as err:
            COCOCaptionsDataModule(str(root), max_pixels=value)
        assert str(err.value) == (f"data.max_pixels={value!r}: expected a positive number of pixels (e.g. "
                                  "data.max_pixels=40000000) or null for no limit")
    unlimited = attached(COCOCaptionsDataModule(str(root), num_workers=0, max_pixels=None))
    unlimited.setup("fit")
    assert len(unlimited.split("train").images) == 2


def test_every_file_data_config_documents_max_pixels():
    for name in ("coco_captions", "flickr30k", "jsonl", "vqa_v2"):
        text = (CONF_DIR / "data" / f"{name}.yaml").read_text()
        assert yaml.safe_load(text)["max_pixels"] == 40_000_000, name
        assert "max_pixels: 40000000 " in text and "before decoding" in text, name


# -- 5. free disk space for a cache entry -----------------------------------------------------------------

Usage = namedtuple("Usage", "total used free")


def fake_free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - free, free))


def no_space_message(root: Path, needs_mb: int, free_mb: int) -> str:
    return (f"feature cache: no space left on {root}, needs {needs_mb:,} MB (has {free_mb:,} MB free). Fix: free space "
            "there, put the cache elsewhere (paths.cache_dir=<a folder with space> or cache.dir=...), or cache=off")


def test_a_cache_entry_larger_than_the_free_space_is_refused_before_any_file(tmp_path, monkeypatch):
    fake_free(monkeypatch, 3_500_000)
    writer = EntryWriter(tmp_path, "k")
    with pytest.raises(MMFuseError) as err:
        writer.array("pooled", (1000, 1000), "float32")  # 4,000,000 bytes
    assert str(err.value) == no_space_message(tmp_path, 4, 3)
    assert list(writer.tmp.iterdir()) == []  # no sparse file that a later write could SIGBUS on
    assert writer.array("pooled", (1000, 500), "float32").shape == (1000, 500)  # 2 MB fit


def failing_fallocate(*errnos: int):
    """A stand-in for libc's ``fallocate`` that fails with ``errnos`` in turn (then succeeds), as
    ctypes reports a failure: -1 and ``errno``."""
    left = list(errnos)

    def fallocate(fd, mode, offset, length):
        if not left:
            return 0
        ctypes.set_errno(left.pop(0))
        return -1
    return fallocate


def test_arrays_whose_blocks_cannot_be_reserved_count_against_the_next(tmp_path, monkeypatch):
    fake_free(monkeypatch, 5_000_000)
    monkeypatch.setattr(storage, "_fallocate", failing_fallocate(errno.EOPNOTSUPP))  # NFSv3, FUSE, old ZFS
    writer = EntryWriter(tmp_path, "k")
    writer.array("pooled", (1000, 1000), "float32")  # 4 MB, sparse: the free space has not changed
    assert writer.unreserved == 4_000_000
    assert (writer.tmp / "pooled.npy").stat().st_blocks * 512 <= 8192  # the header's page: no byte per block
    with pytest.raises(MMFuseError) as err:
        writer.array("tokens", (1000, 500), "float32")
    assert str(err.value) == no_space_message(tmp_path, 6, 5)


def test_a_full_disk_at_reservation_is_the_same_error(tmp_path, monkeypatch):
    fake_free(monkeypatch, 10**9)  # the check passes; the file system then has no blocks to give
    for err_no in (errno.ENOSPC, errno.EDQUOT):
        monkeypatch.setattr(storage, "_fallocate", failing_fallocate(err_no))
        with pytest.raises(MMFuseError) as err:
            EntryWriter(tmp_path, "k").array("pooled", (10, 100), "float16")
        assert str(err.value) == no_space_message(tmp_path, 1, 1000)


def test_reservation_retries_an_interrupt_and_names_other_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_fallocate", failing_fallocate(errno.EINTR, errno.EINTR))
    writer = EntryWriter(tmp_path, "k")
    writer.array("pooled", (10, 100), "float16")
    assert writer.unreserved == 0  # reserved at the third call
    monkeypatch.setattr(storage, "_fallocate", failing_fallocate(errno.EFBIG))
    with pytest.raises(MMFuseError) as err:
        writer.array("tokens", (10, 100), "float16")
    assert str(err.value) == (f"feature cache: cannot reserve 1 MB for {writer.tmp / 'tokens.npy'} (File too large). "
                              "Fix: put the cache elsewhere (paths.cache_dir=<another folder> or cache.dir=...), or "
                              "cache=off")


def test_without_linux_fallocate_posix_fallocate_reserves(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_fallocate", None)  # libc without fallocate (BSD)
    calls = []

    def posix_fallocate(fd, offset, length):
        calls.append((offset, length))
        raise OSError(errno.EINVAL, "Invalid argument")  # FreeBSD's ZFS

    monkeypatch.setattr(storage.os, "posix_fallocate", posix_fallocate)
    writer = EntryWriter(tmp_path, "k")
    arr = writer.array("pooled", (10, 100), "float16")
    assert calls == [(0, (writer.tmp / "pooled.npy").stat().st_size)] and writer.unreserved == arr.nbytes == 2000
    monkeypatch.delattr(storage.os, "posix_fallocate")  # macOS: nothing reserves
    writer.array("mask", (10,), "bool")
    assert writer.unreserved == 2010


NO_FALLOCATE = {"x86_64": (0xC000003E, 285), "aarch64": (0xC00000B7, 47)}  # audit arch, fallocate's number

SECCOMP_CHILD = """
import ctypes, errno, os, struct, sys
from pathlib import Path
audit_arch, number = int(sys.argv[2]), int(sys.argv[3])
def op(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
# a seccomp filter: fallocate(2) fails with EOPNOTSUPP, as on NFSv3; every other system call runs
program = ctypes.create_string_buffer(b"".join([
    op(0x20, 0, 0, 4), op(0x15, 0, 3, audit_arch), op(0x20, 0, 0, 0), op(0x15, 0, 1, number),
    op(0x06, 0, 0, 0x00050000 | errno.EOPNOTSUPP), op(0x06, 0, 0, 0x7FFF0000)]))
class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(Program(6, ctypes.addressof(program))), 0, 0):
    print("no seccomp", ctypes.get_errno()); sys.exit(3)
from mmfuse.features.storage import EntryWriter
writer = EntryWriter(Path(sys.argv[1]), "k")
writer.array("pooled", (1024, 1024), "float32")
print(writer.unreserved, (writer.tmp / "pooled.npy").stat().st_blocks * 512)
"""


def test_a_file_system_without_fallocate_leaves_the_file_sparse(tmp_path):
    """Under a seccomp filter the kernel answers fallocate with EOPNOTSUPP, as NFSv3 does: glibc's
    posix_fallocate would then write a byte into each of the 1,024 blocks of a 4 MiB array."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.machine() not in NO_FALLOCATE:
        pytest.skip("a seccomp filter for fallocate is written here for Linux on x86_64 and aarch64 only")
    proc = subprocess.run([sys.executable, "-c", SECCOMP_CHILD, str(tmp_path), *map(str, NO_FALLOCATE[platform.machine()])],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode == 3:
        pytest.skip(f"seccomp filters are not allowed here ({proc.stdout.strip()})")
    assert proc.returncode == 0, proc.stderr
    unreserved, allocated = map(int, proc.stdout.split())
    assert unreserved == 4 << 20 and allocated <= 8192  # counted as sparse; only the header's page written


def test_a_full_cache_disk_stops_setup_with_the_message_and_leaves_no_entry(make_cfg, tmp_path, monkeypatch):
    cache_dir = tmp_path / "features"
    cfg = make_cfg(*FAST, "encoder.image.freeze=true", "encoder.text.freeze=true", f"cache.dir={cache_dir}")
    module = build_module(cfg)
    datamodule = build_datamodule(cfg, module)
    fake_free(monkeypatch, 0)
    with pytest.raises(MMFuseError, match=r"^feature cache: no space left on .*features, needs [\d,]+ MB \(has 0 MB "
                                          r"free\)\. Fix: .*or cache=off$"):
        datamodule.setup("fit")
    assert [p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")] == []


def test_a_vqa_question_that_is_not_a_string_is_a_bad_record(tmp_path):
    questions = [{"question_id": 1, "image_id": 5, "question": "q1?"},
                 {"question_id": 2, "image_id": 5, "question": 7},
                 {"question_id": 3, "image_id": 5, "question": "  "}]
    msg = error_of(vqa(tmp_path / "vqa", questions, [answers(1), answers(2), answers(3)]))
    assert msg.splitlines()[1:3] == [
        "  questions[1]: question is an integer 7, not a non-empty string",
        "  questions[2]: question is a string '  ', not a non-empty string"]


def test_a_split_without_its_vqa_file_names_the_key(tmp_path):
    dm = vqa(tmp_path / "vqa", [{"question_id": 1, "image_id": 5, "question": "q1?"}], [answers(1)],
             image_file={"train": "train2014/COCO_train2014_{image_id:012d}.jpg"})
    assert error_of(dm) == ("data.image_file.val is not set (data.image_file names ['train']): give the val split's "
                            "file relative to data.root, as conf/data/vqa_v2.yaml does")
