"""Real dataset formats (COCO 2014 / 2017 / Karpathy, Flickr30k, VQA v2, JSONL) and bad input.

Small synthetic copies of each layout are written to tmp (a few 24x32 JPEGs + JSON); the real COCO
2017 layout is ``../shared/data/coco_mini``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torchvision.io import encode_jpeg

from conftest import CONF_DIR, assert_recalls_add_up, needs_shared
from mmfuse.builder import build_datamodule, build_module
from mmfuse.data.coco import COCOCaptionsDataModule
from mmfuse.data.flickr30k import Flickr30kDataModule
from mmfuse.data.images import FilePairDataset, ImageFiles
from mmfuse.data.jsonl import JSONLDataModule
from mmfuse.data.validation import check_image_file
from mmfuse.data.vqa import VQAv2DataModule, normalize_answer, soft_score
from mmfuse.encoders.transforms import ImageTransform
from mmfuse.encoders.word_tokenizer import WordTokenizer
from mmfuse.errors import MMFuseError
from mmfuse.train import train

FILE_OPTIONS = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml") if p.stem != "shapes"
                      and "root: ???" in p.read_text())


# -- fixtures: files in the official layouts ---------------------------------------------------------


def write_jpeg(path: Path, value: int, size: tuple[int, int] = (24, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = torch.full((3, *size), value, dtype=torch.uint8)
    image[0, : size[0] // 2] = 255 - value  # not flat, so that images differ after resizing
    path.write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
    return path


def corrupt_middle(path: Path) -> None:
    """Keep the JPEG header and end marker, destroy the data between: passes the quick check, fails decoding."""
    data = path.read_bytes()
    path.write_bytes(data[:40] + bytes(range(256)) * 4 + b"\xff\xd9")


def coco_2014(root: Path, n_train: int = 6, n_val: int = 4) -> Path:
    for split, n in (("train", n_train), ("val", n_val)):
        images, anns = [], []
        for k in range(n):
            image_id = 100 * (split == "val") + k + 1
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            write_jpeg(root / f"{split}2014" / name, 20 * k + 10)
            images.append({"id": image_id, "file_name": name, "height": 24, "width": 32})
            for c in range(6 if k == 0 else 5):  # the first image has a 6th caption (COCO has some)
                anns.append({"image_id": image_id, "id": 1000 * image_id + c, "caption": f"{split} image {k} caption {c}"})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{split}2014.json").write_text(
            json.dumps({"info": {}, "licenses": [], "images": images, "annotations": anns}))
    return root


def attached(dm, size: int = 16):
    dm.attach(ImageTransform(size, (0.5,) * 3, (0.25,) * 3), WordTokenizer(512, 16))
    return dm


def caption_text(dm, split: str, text_id: int) -> str:
    return dm.split(split).captions[text_id]


# -- COCO ---------------------------------------------------------------------------------------------


def test_coco_2014_layout_keeps_five_captions_per_image_together(tmp_path):
    dm = attached(COCOCaptionsDataModule(str(coco_2014(tmp_path)), batch_size=7, num_workers=0))
    dm.setup("fit")
    assert dm.year == "2014" and dm.splits["test"] is None  # COCO's test captions are not public
    train = dm.splits["train"]
    assert len(train) == 30  # 6 images x 5 (the 6th caption of image 0 is over the limit)
    assert train.image_index.tolist() == [i for i in range(6) for _ in range(5)]
    assert [caption_text(dm, "train", t) for t in range(5)] == [f"train image 0 caption {c}" for c in range(5)]
    d = dm.describe()
    assert d["train"]["captions_over_limit"] == 1 and d["train"]["captions_per_image"] == {"min": 5, "max": 5}
    assert d["val"]["images"] == 4 and d["val"]["captions"] == 20 and d["split_file"] == "official 2014"
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (7, 3, 16, 16) and "label" not in batch
    assert batch["image_id"].tolist() == [0] * 5 + [1] * 2 and batch["text_id"].tolist() == list(range(7))
    # the pixels are the file's: image 1 (value 30) differs from image 0 (value 10)
    assert not torch.equal(batch["image"][0], batch["image"][5]) and torch.equal(batch["image"][0], batch["image"][4])
    everything = attached(COCOCaptionsDataModule(str(tmp_path), captions_per_image=None, num_workers=0))
    everything.setup("fit")
    assert len(everything.splits["train"]) == 31


def test_coco_2017_layout_on_real_coco_mini():
    root = needs_shared("data", "coco_mini")
    dm = attached(COCOCaptionsDataModule(str(root), batch_size=10, num_workers=0), size=32)
    dm.setup("fit")
    assert dm.year == "2017"
    assert (len(dm.splits["train"]), len(dm.splits["val"])) == (400, 395)
    d = dm.describe()
    assert (d["train"]["images"], d["val"]["images"]) == (80, 79) and d["val"]["skipped"] == {"count": 0}
    raw = json.loads((root / "annotations" / "captions_val2017.json").read_text())
    first = raw["images"][0]
    val = dm.split("val")
    assert val.images[0] == root / "val2017" / first["file_name"]
    official = [a["caption"] for a in raw["annotations"] if a["image_id"] == first["id"]][:5]
    assert val.captions[:5] == official
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (10, 3, 32, 32) and batch["image_id"].tolist() == [0] * 5 + [1] * 5


def test_karpathy_split_file_with_restval(tmp_path):
    root = tmp_path / "coco"
    records = []
    for k, split in enumerate(["train", "restval", "val", "test", "test"]):
        name = f"COCO_val2014_{k:012d}.jpg"
        write_jpeg(root / "val2014" / name, 30 * k)
        records.append({"filepath": "val2014", "filename": name, "split": split, "cocoid": k,
                        "sentences": [{"raw": f"img {k} sent {s}", "sentid": 10 * k + s} for s in range(5)]})
    split_file = tmp_path / "dataset_coco.json"
    split_file.write_text(json.dumps({"images": records, "dataset": "coco"}))
    dm = attached(COCOCaptionsDataModule(str(root), karpathy_split=str(split_file), num_workers=0))
    dm.setup("fit")
    assert {k: len(dm.splits[k]) for k in ("train", "val", "test")} == {"train": 10, "val": 5, "test": 10}
    assert dm.describe()["split_file"] == str(split_file)
    no_restval = attached(COCOCaptionsDataModule(str(root), karpathy_split=str(split_file), include_restval=False,
                                                 num_workers=0))
    no_restval.setup("fit")
    assert len(no_restval.splits["train"]) == 5


def flickr_folder(tmp_path: Path) -> Path:
    records = []
    for k, split in enumerate(["train", "train", "val", "test"]):
        write_jpeg(tmp_path / "flickr30k-images" / f"{1000 + k}.jpg", 40 * k)
        records.append({"filename": f"{1000 + k}.jpg", "imgid": k, "split": split,
                        "sentences": [{"raw": f"photo {k} text {s}", "sentid": 5 * k + s} for s in range(5)]})
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": records, "dataset": "flickr30k"}))
    return tmp_path


def test_flickr30k_karpathy_layout(tmp_path):
    dm = attached(Flickr30kDataModule(str(flickr_folder(tmp_path)), num_workers=0))
    dm.setup("fit")
    assert {k: len(dm.splits[k]) for k in ("train", "val", "test")} == {"train": 10, "val": 5, "test": 5}
    assert dm.split("test").captions[0] == "photo 3 text 0"


# -- bad input ----------------------------------------------------------------------------------------


def broken_coco(tmp_path: Path) -> Path:
    """A 2014 layout with one of each kind of bad record in train."""
    root = coco_2014(tmp_path, n_train=8)
    (root / "train2014" / "COCO_train2014_000000000002.jpg").unlink()  # missing file
    truncated = root / "train2014" / "COCO_train2014_000000000003.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])  # truncated JPEG
    (root / "train2014" / "COCO_train2014_000000000004.jpg").write_text("not an image")  # unreadable
    path = root / "annotations" / "captions_train2014.json"
    data = json.loads(path.read_text())
    data["annotations"].append({"image_id": 999, "id": 1, "caption": "a caption for an image that is not there"})
    data["annotations"][31]["caption"] = "   "  # empty captions: image 6, caption 0 (image 0 has 6 captions)
    data["annotations"][36]["caption"] = ""  # image 7, caption 0
    path.write_text(json.dumps(data))
    return root


def test_bad_records_stop_before_training_naming_file_records_and_count(tmp_path):
    root = broken_coco(tmp_path)
    dm = attached(COCOCaptionsDataModule(str(root), num_workers=0))
    with pytest.raises(MMFuseError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert "captions_train2014.json" in msg and "6 bad record(s)" in msg
    assert "missing image file" in msg and "COCO_train2014_000000000002.jpg" in msg
    assert "truncated JPEG" in msg and "not an image" in msg
    assert "... and 1 more" in msg  # five listed, the rest counted
    assert "data.on_bad_sample=skip" in msg


def test_skip_leaves_bad_records_out_and_counts_them(tmp_path, caplog):
    root = broken_coco(tmp_path)
    dm = attached(COCOCaptionsDataModule(str(root), on_bad_sample="skip", num_workers=0))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "skipping 6 bad record(s)" in caplog.text
    skipped = dm.describe()["train"]["skipped"]
    assert skipped["count"] == 6
    assert skipped["by_reason"] == {"missing image file": 1, "truncated JPEG file": 1, "empty caption": 2,
                                    "caption for unknown image id 999": 1,
                                    "not an image": 1}
    train = dm.split("train")
    assert len(train.images) == 5 and not any(str(p).endswith(("2.jpg", "3.jpg", "4.jpg")) for p in train.images)
    assert len(train.captions) == 5 + 5 + 5 + 4 + 4 and all(c.strip() for c in train.captions)


def test_json_without_the_expected_keys_is_a_clear_error(tmp_path):
    root = coco_2014(tmp_path)
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": [], "captions": []}))
    with pytest.raises(MMFuseError, match=r"captions_val2014.json: missing the key\(s\) \['annotations'\]"):
        attached(COCOCaptionsDataModule(str(root), num_workers=0)).setup("fit")
    (root / "annotations" / "captions_val2014.json").write_text("{not json")
    with pytest.raises(MMFuseError, match="captions_val2014.json: not valid JSON"):
        attached(COCOCaptionsDataModule(str(root), num_workers=0)).setup("fit")
    with pytest.raises(MMFuseError, match="is not a folder"):
        COCOCaptionsDataModule(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MMFuseError, match="captions_train2017.json nor"):
        COCOCaptionsDataModule(str(empty))


def test_image_checks():
    shared = needs_shared("data", "coco_mini", "val2017", "000000217285.jpg")
    assert check_image_file(shared) is None
    assert check_image_file(shared, "decode") is None


def test_image_checks_find_each_kind_of_bad_file(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg", 50)
    assert check_image_file(good) is None
    assert check_image_file(tmp_path / "nope.jpg") == "missing image file"
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert check_image_file(tmp_path / "empty.jpg") == "empty image file"
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:150])
    assert check_image_file(tmp_path / "trunc.jpg").startswith("truncated JPEG file (cannot be decoded")
    bad_middle = write_jpeg(tmp_path / "middle.jpg", 90)
    corrupt_middle(bad_middle)
    assert check_image_file(bad_middle, "quick") is None  # header and end marker are fine
    assert check_image_file(bad_middle, "decode").startswith("cannot be decoded")
    assert check_image_file(tmp_path, "none") == "not a file"


def test_an_image_that_fails_mid_epoch_drops_its_pairs_and_is_reported(tmp_path, make_cfg):
    root = coco_2014(tmp_path / "coco")
    corrupt_middle(root / "train2014" / "COCO_train2014_000000000002.jpg")  # passes the quick check
    store = ImageFiles([root / "train2014" / f"COCO_train2014_{k:012d}.jpg" for k in (1, 2)])
    ds = FilePairDataset(store, {"input_ids": torch.ones(4, 3, dtype=torch.long),
                                 "attention_mask": torch.ones(4, 3, dtype=torch.long)},
                         torch.tensor([0, 1, 1, 0]), torch.arange(4), transform=lambda x: x.float())
    batch = ds.__getitems__([0, 1, 2, 3])
    assert batch["image_id"].tolist() == [0, 0] and batch["text_id"].tolist() == [0, 3]
    assert store.failures() == [str(store.paths[1])]
    assert ds.__getitems__([1])["image_id"].tolist() == [0]  # a batch of only bad images takes a good pair
    # a whole training run: no crash, the file is named in results.json
    cfg = make_cfg("data=coco_captions", f"data.root={root}", "data.num_workers=1", "data.image_size=16",
                   "trainer.max_epochs=1", "data.batch_size=8", "callbacks.progress_bar=null")
    results = train(cfg)
    assert results["status"] == "completed"
    assert results["data"]["train"]["failed_at_load"] == [str(store.paths[1])]
    assert results["data"]["val"]["images"] == 4 and results["data"]["val"]["captions"] == 20
    assert_recalls_add_up(results["metrics"], images=4, texts=20)  # t2i R@5 and R@10: 4 images, all found
    on_disk = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert on_disk["data"]["train"]["failed_at_load"] == [str(store.paths[1])]
    # verify_images=decode finds it before training instead
    with pytest.raises(MMFuseError, match="cannot be decoded"):
        attached(COCOCaptionsDataModule(str(root), verify_images="decode", num_workers=0)).setup("fit")


def test_skip_count_reaches_results_json(tmp_path, make_cfg):
    root = broken_coco(tmp_path / "coco")
    cfg = make_cfg("data=coco_captions", f"data.root={root}", "data.on_bad_sample=skip", "data.num_workers=0",
                   "data.image_size=16", "trainer.max_epochs=1", "callbacks.progress_bar=null", "task.retrieval=false")
    results = train(cfg)
    on_disk = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["data"]["train"]["skipped"]["count"] == on_disk["data"]["train"]["skipped"]["count"] == 6
    assert on_disk["data"]["val"]["skipped"] == {"count": 0}
    assert "val/acc" in on_disk["metrics"] and "val/rsum" not in on_disk["metrics"]  # task.retrieval=false


# -- JSONL --------------------------------------------------------------------------------------------


def jsonl_folder(tmp_path: Path, records: dict[str, list[dict]]) -> Path:
    for k in range(4):
        write_jpeg(tmp_path / "img" / f"{k}.jpg", 60 * k)
    for split, rows in records.items():
        (tmp_path / f"{split}.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return tmp_path


def test_jsonl_multiclass_with_class_names(tmp_path):
    rows = [{"image": f"img/{k % 4}.jpg", "text": f"t{k}", "label": ["cat", "dog", "eel"][k % 3]} for k in range(9)]
    root = jsonl_folder(tmp_path, {"train": rows, "val": rows[:4]})
    dm = attached(JSONLDataModule(str(root), labels="multiclass", num_classes=3, num_workers=0, batch_size=9))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert dm.classes == ["cat", "dog", "eel"]
    by_text = {dm.split("train").captions[t]: int(y) for t, y in zip(batch["text_id"], batch["target"])}
    assert by_text == {f"t{k}": k % 3 for k in range(9)}
    assert dm.describe()["classes"] == ["cat", "dog", "eel"]
    with pytest.raises(MMFuseError, match="3 distinct class names but data.num_classes=4"):
        attached(JSONLDataModule(str(root), labels="multiclass", num_classes=4, num_workers=0)).setup("fit")
    with pytest.raises(MMFuseError, match="needs data.num_classes"):
        JSONLDataModule(str(root), labels="multiclass")


def test_jsonl_multilabel_match_and_none(tmp_path):
    rows = [{"image": "img/0.jpg", "text": "a", "label": [0, 2]}, {"image": "img/1.jpg", "text": "b", "label": [1]}]
    root = jsonl_folder(tmp_path, {"train": rows, "val": rows})
    dm = attached(JSONLDataModule(str(root), labels="multilabel", num_classes=3, num_workers=0))
    dm.setup("fit")
    assert dm.splits["train"].fields["target"].tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    match = [{"image": "img/0.jpg", "text": "a", "label": 1}, {"image": "img/0.jpg", "text": "b", "label": 0}]
    root2 = jsonl_folder(tmp_path / "m", {"train": match, "val": match})
    dm = attached(JSONLDataModule(str(root2), labels="match", num_workers=0))
    dm.setup("fit")
    assert dm.splits["train"].fields["label"].tolist() == [1.0, 0.0]
    assert dm.splits["train"].image_index.tolist() == [0, 0]  # one image, two records
    dm = attached(JSONLDataModule(str(root2), num_workers=0))
    dm.setup("fit")
    assert dm.splits["train"].fields == {}


def test_jsonl_bad_lines(tmp_path):
    rows = [{"image": "img/0.jpg", "text": "fine", "label": 0},
            "{broken json",
            {"image": "img/1.jpg", "label": 1},
            {"image": "img/2.jpg", "text": "x", "label": 7},
            {"image": "img/missing.jpg", "text": "y", "label": 1},
            {"image": "img/3.jpg", "text": "", "label": 1}]
    root = jsonl_folder(tmp_path, {"train": rows, "val": rows[:1]})
    with pytest.raises(MMFuseError) as err:
        attached(JSONLDataModule(str(root), labels="multiclass", num_classes=2, num_workers=0)).setup("fit")
    msg = str(err.value)
    assert "train.jsonl" in msg and "5 bad record(s)" in msg
    for part in ("line 2: not valid JSON", "line 3: missing key(s) ['text']", "line 4: unknown class 7",
                 "missing image file", "empty caption"):
        assert part in msg, part
    dm = attached(JSONLDataModule(str(root), labels="multiclass", num_classes=2, num_workers=0, on_bad_sample="skip"))
    dm.setup("fit")
    assert len(dm.splits["train"]) == 1 and dm.describe()["train"]["skipped"]["count"] == 5


# -- VQA v2 -------------------------------------------------------------------------------------------


def vqa_folder(root: Path) -> Path:
    answers = {  # question id -> the 10 annotators' answers
        1: ["two"] * 6 + ["2"] * 2 + ["three"] * 2,
        2: ["yes"] * 10,
        3: ["red"] * 2 + ["blue"] * 8,
        4: ["no"] * 9 + ["yes"],
        5: ["a dog"] * 3 + ["cat"] * 7,
    }
    for split, qids in (("train", [1, 2, 3, 4]), ("val", [5, 2])):
        questions, anns = [], []
        for q in qids:
            image_id = 10 + q % 3
            write_jpeg(root / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg", 40 * (q % 3))
            questions.append({"question_id": q, "image_id": image_id, "question": f"question {q}?"})
            anns.append({"question_id": q, "image_id": image_id, "answers": [{"answer": a, "answer_id": i}
                                                                             for i, a in enumerate(answers[q])]})
        (root / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps({"questions": questions}))
        (root / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": anns}))
    return root


def vqa_module(root: Path, **kw) -> VQAv2DataModule:
    import yaml

    cfg = yaml.safe_load((CONF_DIR / "data" / "vqa_v2.yaml").read_text())
    kwargs = {k: cfg[k] for k in ("questions", "annotations", "image_file")}
    return attached(VQAv2DataModule(str(root), num_workers=0, batch_size=8, **{**kwargs, **kw}))


def test_vqa_answer_vocabulary_and_soft_scores(tmp_path):
    dm = vqa_module(vqa_folder(tmp_path), num_answers=4)
    dm.setup("fit")
    # train answer counts: 2 (6 "two" + 2 "2"), yes 11, blue 8, no 9, red 2, three 2 -> top 4
    assert dm.vocabulary() == ["yes", "no", "2", "blue"]
    train = dm.splits["train"]
    q1 = train.fields["answer_ids"][0].tolist(), train.fields["answer_scores"][0].tolist()
    assert q1[0][:1] == [2] and q1[0][1:] == [-1] * 9 and q1[1][0] == 1.0  # "three" is not in the vocabulary
    val = dm.split("val")
    cat = val.captions.index("question 5?")
    assert dm.splits["val"].fields["answer_ids"][cat].tolist() == [-1] * 10  # neither "dog" nor "cat" is known
    assert dm.describe()["val"]["questions_without_vocab_answer"] == 1
    assert dm.splits["test"] is None
    assert normalize_answer(" A Dog. ") == "dog" and normalize_answer("Two") == "2"
    assert [soft_score(n) for n in (1, 2, 3, 4)] == pytest.approx([1 / 3, 2 / 3, 1, 1])
    assert [soft_score(n, "official") for n in (1, 2, 3, 4, 10)] == pytest.approx([0.3, 0.6, 0.9, 1, 1])


def test_vqa_bad_records(tmp_path):
    root = vqa_folder(tmp_path)
    qpath = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    data = json.loads(qpath.read_text())
    data["questions"].append({"question_id": 99, "image_id": 10, "question": "no annotation?"})
    data["questions"].append({"question_id": 98, "question": "no image id?"})
    qpath.write_text(json.dumps(data))
    with pytest.raises(MMFuseError) as err:
        vqa_module(root).setup("fit")
    assert "question id 99: question without an annotation" in str(err.value) and "2 bad record(s)" in str(err.value)


# -- configs ------------------------------------------------------------------------------------------


def fixture_for(option: str, tmp_path: Path) -> list[str]:
    if option == "coco_captions":
        return [f"data.root={coco_2014(tmp_path)}"]
    if option == "flickr30k":
        return [f"data.root={flickr_folder(tmp_path)}"]
    if option == "vqa_v2":
        return [f"data.root={vqa_folder(tmp_path)}", "task=vqa", "data.num_answers=8"]
    if option == "jsonl":
        rows = [{"image": f"img/{k}.jpg", "text": f"t{k}", "label": k % 2} for k in range(4)]
        return [f"data.root={jsonl_folder(tmp_path, {'train': rows, 'val': rows})}", "data.labels=multiclass",
                "data.num_classes=2", "task=classification"]
    if option == "msrvtt":
        from test_media_datasets import msrvtt_folder

        return [f"data.root={msrvtt_folder(tmp_path)}", "task=retrieval", "encoder.video.frames=2"]
    if option == "visdial":
        from test_visdial_data import visdial_folder

        return [f"data.root={visdial_folder(tmp_path)}", "task=dialog"]
    raise AssertionError(f"add a fixture for the new data option {option}")


@pytest.mark.parametrize("option", FILE_OPTIONS)
def test_every_file_data_option_builds_batches_from_the_config(make_cfg, tmp_path, option):
    cfg = make_cfg(f"data={option}", *fixture_for(option, tmp_path / "data"), "data.num_workers=0",
                   "data.image_size=16", "data.batch_size=4")
    module = build_module(cfg)
    dm = build_datamodule(cfg, module)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    shape = (4, 2, 3, 16, 16) if option == "msrvtt" else (4, 3, 16, 16)  # msrvtt: clips of 2 frames
    assert batch[dm.modalities[0]].shape == shape and batch["input_ids"].dtype == torch.long
    loss, _ = module.task.step(module.model, batch)
    assert torch.isfinite(loss)
    assert isinstance(instantiate(cfg.data), type(dm))


@pytest.mark.slow
def test_retrieval_metrics_under_ddp_equal_one_process(tmp_path, make_cfg):
    """Two processes (ddp_cpu) each see half of the val pairs; the galleries are gathered, so the recalls
    equal those of one process evaluating the same checkpoint."""
    from conftest import run_cli
    from mmfuse.evaluate import evaluate

    root = coco_2014(tmp_path / "coco", n_train=12, n_val=10)
    out = tmp_path / "out"
    proc = run_cli("train.py", "trainer=ddp_cpu", "data=coco_captions", f"data.root={root}", "data.image_size=16",
                   "data.num_workers=0", "trainer.max_epochs=1", "data.batch_size=8", "callbacks.progress_bar=null",
                   outputs=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = [p.parent for p in out.rglob("results.json")]
    trained = json.loads((run_dir / "results.json").read_text())["metrics"]
    evaluated = evaluate(make_cfg(f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", config_name="eval"))["metrics"]
    recalls = [k for k in trained if "_r" in k or k.endswith("rsum")]
    assert len(recalls) == 7
    assert {k: trained[k] for k in recalls} == pytest.approx({k: evaluated[k] for k in recalls})
