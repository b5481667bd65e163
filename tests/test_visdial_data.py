"""data=visdial: the official VisDial v1.0 files read into a DialogSplit (tiny files written here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_jpeg, write_png

from mmfuse.data.dialog import DialogInputs
from mmfuse.data.visdial import VisDialDataModule
from mmfuse.errors import MMFuseError

IDS = [42, 7, 1001]
QUESTIONS = [f"question {i}" for i in range(30)]
ANSWERS = [f"answer {i}" for i in range(40)]
K = 4
DENSE = [{"image_id": 42, "round_id": 3, "gt_relevance": [0.0, 0.5, 1.0, 0.25]},
         {"image_id": 7, "round_id": 10, "gt_relevance": [1, 0, 0, 0]}]


def options_of(answer: int, gt: int, k: int, n: int) -> list[int]:
    """k of the n answer indices, with ``answer`` at position ``gt``."""
    return [(answer + j - gt) % n for j in range(k)]


def dialog(d: int, image_id: int, k: int = K, n: int = len(ANSWERS)) -> dict:
    rounds = [{"question": 10 * d + r, "answer": 10 * d + r,
               "answer_options": options_of(10 * d + r, r % k, k, n), "gt_index": r % k} for r in range(10)]
    return {"image_id": image_id, "caption": f"caption {d}", "dialog": rounds}


def image(path: Path, value: int = 80) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.full((3, 8, 8), value, dtype=torch.uint8)
    (write_png if path.suffix == ".png" else write_jpeg)(pixels, str(path))


def write(root: Path, name: str, dialogs: list, questions=QUESTIONS, answers=ANSWERS) -> None:
    body = {"version": "1.0", "split": name, "data": {"questions": questions, "answers": answers, "dialogs": dialogs}}
    (root / f"visdial_1.0_{name}.json").write_text(json.dumps(body))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for i in IDS:
        image(tmp_path / "VisualDialog_val2018" / f"VisualDialog_val2018_{i:012d}.jpg")
    write(tmp_path, "val", [dialog(d, i) for d, i in enumerate(IDS)])
    (tmp_path / "visdial_1.0_val_dense_annotations.json").write_text(json.dumps(DENSE))
    return tmp_path


def visdial_folder(root: Path) -> Path:
    """The official layout under the config's default file names: train (COCO 2014 images) and val
    (with dense annotations), 3 dialogs each (for tests that build ``data=visdial`` from its config)."""
    for d, i in enumerate(IDS):
        image(root / ("train2014" if d else "val2014") / f"COCO_{'train' if d else 'val'}2014_{i:012d}.jpg", 40 * d)
        image(root / "VisualDialog_val2018" / f"VisualDialog_val2018_{i:012d}.jpg", 40 * d)
    write(root, "train", [dialog(d, i) for d, i in enumerate(IDS)])
    write(root, "val", [dialog(d, i) for d, i in enumerate(IDS)])
    (root / "visdial_1.0_val_dense_annotations.json").write_text(json.dumps(DENSE))
    return root


def module(root: Path, **kw) -> VisDialDataModule:
    args = {"dialogs": {"train": None, "val": "visdial_1.0_val.json"},
            "dense": {"val": "visdial_1.0_val_dense_annotations.json"},
            "image_dirs": {"train": ["train2014", "val2014"], "val": ["VisualDialog_val2018"],
                           "test": ["VisualDialog_test2018"]}, **kw}
    return VisDialDataModule(root=str(root), **args)


def test_val_split_contents(root: Path) -> None:
    split = module(root).dialogs("val")
    assert split.captions == ["caption 0", "caption 1", "caption 2"]
    assert split.image_keys == ["image id 42", "image id 7", "image id 1001"]
    assert [p.name for p in split.images] == [f"VisualDialog_val2018_{i:012d}.jpg" for i in IDS]
    assert split.questions[1] == [f"question {10 + r}" for r in range(10)]
    assert split.round_answers[2] == [f"answer {20 + r}" for r in range(10)]
    assert split.dialog.tolist() == [d for d in range(3) for _ in range(10)]
    assert split.round.tolist() == list(range(10)) * 3
    assert split.options.dtype == np.int32 and split.options.shape == (30, K)
    assert split.options[0].tolist() == [0, 1, 2, 3]
    assert split.options[13].tolist() == [10, 11, 12, 13]   # dialog 1 round 4: answer 13 at gt 3
    assert split.options[16].tolist() == [14, 15, 16, 17]  # round 7: answer 16 at gt 2
    assert split.gt_index.tolist() == [r % K for r in range(10)] * 3
    for row in range(30):  # the option at gt_index is the round's answer text
        d, r = split.dialog[row], split.round[row]
        assert split.answers[split.options[row, split.gt_index[row]]] == split.round_answers[d][r]
    assert split.relevance.dtype == np.float32 and split.relevance.shape == (30, K)
    assert split.relevance[2].tolist() == [0.0, 0.5, 1.0, 0.25]  # image 42, round_id 3 -> round 2
    assert split.relevance[19].tolist() == [1.0, 0.0, 0.0, 0.0]  # image 7, round_id 10 -> round 9
    nan_rows = [i for i in range(30) if np.isnan(split.relevance[i]).all()]
    assert nan_rows == [i for i in range(30) if i not in (2, 19)]
    assert split.kind is None and split.answers == ANSWERS
    assert split.stats == {"dialogs_in_file": 3, "dialogs_read": 3, "skipped_dialogs": 0, "dense_annotations": 2,
                           "dense_ignored": 0, "dense_rounds": 2, "hidden_answers": 0}


def test_describe_and_store(root: Path) -> None:
    dm = module(root)
    split = dm.dialogs("val")
    store = dm.image_store("val", split)
    assert len(store) == 3 and store.load(1).shape == (3, 8, 8)
    out = dm.describe()
    assert out["val"]["dialogs"] == 3 and out["val"]["rounds"] == 30 and out["val"]["dense_rounds"] == 2
    assert out["val"]["options"] == K and "train" not in out and dm.dialogs("train") is None


def test_hundred_options_from_the_data(tmp_path: Path) -> None:
    image(tmp_path / "VisualDialog_val2018" / "VisualDialog_val2018_000000000005.png")
    answers = [f"a{i}" for i in range(150)]
    write(tmp_path, "val", [dialog(0, 5, k=100, n=150)], answers=answers)
    split = module(tmp_path, dense={}).dialogs("val")
    assert split.options.shape == (10, 100) and split.relevance is None
    assert split.options[3, 3] == 3 and split.options[3, 0] == 0 and split.options[3, 99] == 99
    assert [answers[split.options[r, split.gt_index[r]]] for r in range(10)] == [f"a{r}" for r in range(10)]


def test_missing_image_error_and_skip(root: Path) -> None:
    (root / "VisualDialog_val2018" / "VisualDialog_val2018_000000000007.jpg").unlink()
    with pytest.raises(MMFuseError, match=r"visdial_1.0_val.json.*\n  image id 7 \(dialogs\[1\]\): no image file"):
        module(root).dialogs("val")
    split = module(root, on_bad_sample="skip").dialogs("val")
    assert split.image_keys == ["image id 42", "image id 1001"]
    assert split.dialog.tolist() == [0] * 10 + [1] * 10
    assert split.stats["skipped_dialogs"] == 1 and split.stats["dense_ignored"] == 1  # image 7's annotation
    assert split.stats["dense_rounds"] == 1 and split.bad.summary()["count"] == 1
    assert split.questions[1][0] == "question 20"


def test_corrupt_image_fails_the_check(root: Path) -> None:
    (root / "VisualDialog_val2018" / "VisualDialog_val2018_000000001001.jpg").write_bytes(b"not an image at all")
    with pytest.raises(MMFuseError, match=r"image id 1001 \(.*000000001001.jpg, dialogs\[2\]\): not an image"):
        module(root).dialogs("val")


def _set(d: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        d = d[key]
    if value is KeyError:
        del d[path[-1]]
    else:
        d[path[-1]] = value


@pytest.mark.parametrize(("path", "value", "record", "reason"), [
    (("caption",), KeyError, r"dialogs\[1\]", "dialog without 'image_id'"),
    (("dialog",), "x", r"dialogs\[1\]", "dialog without 'image_id'"),
    (("image_id",), 1.5, r"dialogs\[1\]", "image id not an integer"),
    (("image_id",), 42, r"dialogs\[1\]", r"image id given twice \(first at dialogs\[0\]\)"),
    (("dialog", 3, "question"), 30, "image id 7 round 4", "question index 30 outside"),
    (("dialog", 3, "answer"), -1, "image id 7 round 4", "answer index -1 outside"),
    (("dialog", 3, "answer"), KeyError, "image id 7 round 4", "round without an 'answer' before the last round"),
    (("dialog", 3, "answer_options"), [13, 14, 15], "image id 7 round 4", "3 answer_options, the split's rounds have 4"),
    (("dialog", 3, "answer_options"), [13, 14, "x", 16], "image id 7 round 4", "answer_options is not a list of answer indices"),
    (("dialog", 3, "answer_options"), [13, 14, 15, 40], "image id 7 round 4", r"answer_options index outside data.answers \(40\)"),
    (("dialog", 3, "gt_index"), 4, "image id 7 round 4", "gt_index 4 outside the 4 answer_options"),
    (("dialog", 3, "gt_index"), 1, "image id 7 round 4", "gt_index 1 points at answer 11, not the round's answer 13"),
])
def test_malformed_records(root: Path, path: tuple, value, record: str, reason: str) -> None:
    dialogs = [dialog(d, i) for d, i in enumerate(IDS)]
    _set(dialogs[1], path, value)
    write(root, "val", dialogs)
    with pytest.raises(MMFuseError, match=rf"bad record\(s\) in .*visdial_1.0_val.json.*:\n  {record}.*: {reason}"):
        module(root).dialogs("val")
    split = module(root, on_bad_sample="skip").dialogs("val")
    assert split.image_keys == ["image id 42", "image id 1001"] and split.stats["skipped_dialogs"] == 1


def test_a_malformed_first_round_does_not_set_the_number_of_options(root: Path) -> None:
    dialogs = [dialog(d, i) for d, i in enumerate(IDS)]
    dialogs[0]["dialog"][0]["answer_options"] = [0, 1, 2]  # the file's first round: 3 options, the rest 4
    write(root, "val", dialogs)
    with pytest.raises(MMFuseError, match=r"1 bad record\(s\)[^\n]*:\n  image id 42 round 1 \(dialogs\[0\]\): "
                                          "3 answer_options, the split's rounds have 4"):
        module(root).dialogs("val")
    split = module(root, on_bad_sample="skip").dialogs("val")
    assert split.image_keys == ["image id 7", "image id 1001"] and split.options.shape == (20, 4)


def test_test_split_evaluates_the_last_round(tmp_path: Path) -> None:
    for i in (3, 4):
        image(tmp_path / "VisualDialog_test2018" / f"VisualDialog_test2018_{i:012d}.jpg")
    dialogs = []
    for d, (i, n) in enumerate([(3, 4), (4, 10)]):
        rounds = [{"question": 10 * d + r, "answer": 10 * d + r} for r in range(n - 1)]
        rounds.append({"question": 10 * d + n - 1, "answer_options": [5, 6, 7, 8]})
        dialogs.append({"image_id": i, "caption": f"c{d}", "dialog": rounds})
    write(tmp_path, "test", dialogs)
    split = module(tmp_path, dialogs={"test": "visdial_1.0_test.json"}, dense={}).dialogs("test")
    assert split.dialog.tolist() == [0, 1] and split.round.tolist() == [3, 9]
    assert split.gt_index.tolist() == [-1, -1] and split.options.tolist() == [[5, 6, 7, 8]] * 2
    assert split.round_answers[0] == ["answer 0", "answer 1", "answer 2", ""]
    assert split.questions[0] == ["question 0", "question 1", "question 2", "question 3"]
    assert len(split.round_answers[1]) == 10 and split.round_answers[1][-1] == ""
    assert split.relevance is None and split.stats["hidden_answers"] == 2
    dialogs[0]["dialog"][3]["gt_index"] = 0  # a gt_index without an answer
    write(tmp_path, "test", dialogs)
    with pytest.raises(MMFuseError, match="image id 3 round 4.*gt_index given for a round without an 'answer'"):
        module(tmp_path, dialogs={"test": "visdial_1.0_test.json"}, dense={}).dialogs("test")


def test_num_val_limits_the_dialogs(root: Path) -> None:
    split = module(root, num_val=2).dialogs("val")
    assert split.image_keys == ["image id 42", "image id 7"] and len(split.dialog) == 20
    assert split.stats["dialogs_read"] == 2 and split.stats["skipped_dialogs"] == 0
    (root / "visdial_1.0_val_dense_annotations.json").write_text(json.dumps(
        [*DENSE, {"image_id": 1001, "round_id": 1, "gt_relevance": [1, 1, 1, 1]}]))
    split = module(root, num_val=2).dialogs("val")  # image 1001 is in the file, beyond the limit: ignored
    assert split.stats["dense_ignored"] == 1 and split.stats["dense_rounds"] == 2 and not len(split.bad)


def test_train_dense_key_relevance(root: Path) -> None:
    for i in (42, 7):
        image(root / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    image(root / "train2014" / "COCO_train2014_000000001001.jpg")
    image(root / "val2014" / "COCO_val2014_000000001001.jpg")  # the same id twice: the first folder listed wins
    write(root, "train", [dialog(d, i) for d, i in enumerate(IDS)])
    (root / "dense_train.json").write_text(json.dumps([{"image_id": 1001, "round_id": 1, "relevance": [0, 1, 0, 0.5]}]))
    dm = module(root, dialogs={"train": "visdial_1.0_train.json"}, dense={"train": "dense_train.json"})
    split = dm.dialogs("train")
    assert [p.parent.name for p in split.images] == ["val2014", "val2014", "train2014"]
    assert split.relevance[20].tolist() == [0.0, 1.0, 0.0, 0.5]
    assert np.isnan(split.relevance[:20]).all() and np.isnan(split.relevance[21:]).all()


@pytest.mark.parametrize(("ann", "reason"), [
    ({"image_id": 99, "round_id": 1, "gt_relevance": [0, 0, 0, 0]}, "image id 99 round 1 .*no dialog has"),
    ({"image_id": 42, "round_id": 11, "gt_relevance": [0, 0, 0, 0]}, "image id 42 round 11 .*not an evaluated round"),
    ({"image_id": 42, "round_id": 0, "gt_relevance": [0, 0, 0, 0]}, "image id 42 round 0 .*not an evaluated round"),
    ({"image_id": 42, "round_id": 3, "gt_relevance": [0, 0, 0, 0]}, "image id 42 round 3 .*given twice"),
    ({"image_id": 1001, "round_id": 2, "gt_relevance": [0, 0, 0]}, r"image id 1001 round 2 .*not 4 numbers \(3\)"),
    ({"image_id": 1001, "round_id": 2, "gt_relevance": [0, 0, "x", 0]}, "image id 1001 round 2 .*not 4 numbers"),
])
def test_bad_dense_annotations(root: Path, ann: dict, reason: str) -> None:
    (root / "visdial_1.0_val_dense_annotations.json").write_text(json.dumps([*DENSE, ann]))
    with pytest.raises(MMFuseError, match=rf"visdial_1.0_val_dense_annotations.json:\n  {reason}"):
        module(root).dialogs("val")
    split = module(root, on_bad_sample="skip").dialogs("val")
    left_out = 0 if ann["image_id"] == 99 else 1  # a known dialog's bad annotation leaves the dialog out
    assert len(split.captions) == 3 - left_out and split.stats["skipped_dialogs"] == left_out


def test_missing_files_and_paths(root: Path) -> None:
    with pytest.raises(MMFuseError, match=r"nope.json not found \(data.dialogs.val under data.root="):
        module(root, dialogs={"val": "nope.json"}).dialogs("val")
    with pytest.raises(MMFuseError, match=r"VisualDialog_x is not a folder \(data.image_dirs.val\[0\]"):
        module(root, image_dirs={"val": ["VisualDialog_x"]}).dialogs("val")
    with pytest.raises(MMFuseError, match=r"dense.json not found \(data.dense.val under data.root="):
        module(root, dense={"val": "dense.json"}).dialogs("val")
    with pytest.raises(MMFuseError, match=r"data.dialogs.val: image path outside the image folder"):
        module(root, dialogs={"val": "../visdial_1.0_val.json"}).dialogs("val")
    with pytest.raises(MMFuseError, match=r"data.image_dirs.val\[0\]: image path outside"):
        module(root, image_dirs={"val": ["/tmp"]}).dialogs("val")
    with pytest.raises(MMFuseError, match=r"data.root='/nonexistent/visdial'"):
        VisDialDataModule(root="/nonexistent/visdial")
    (root / "visdial_1.0_val.json").write_text(json.dumps({"data": {"questions": [], "answers": []}}))
    with pytest.raises(MMFuseError, match=r"data.dialogs is null, expected a list"):
        module(root).dialogs("val")


class CharTokenizer:
    """Each text as its character codes (0-padded), so that token rows decode back to the text."""

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        width = max(map(len, texts))
        ids = torch.zeros(len(texts), width, dtype=torch.long)
        for i, t in enumerate(texts):
            ids[i, :len(t)] = torch.tensor([ord(c) for c in t])
        return {"input_ids": ids, "attention_mask": ids > 0}


def decode(ids: torch.Tensor, mask: torch.Tensor) -> str:
    return "".join(chr(int(c)) for c in ids[mask.bool()])


def test_dialog_dataset_batch(root: Path) -> None:
    dm = module(root)
    dm.dialog = DialogInputs(history="concat", rounds=2)
    dm.attach(image=lambda x: x.float() / 255, text=CharTokenizer())
    ds = dm.build_split("val")
    assert len(ds) == 30
    batch = ds.__getitems__([0, 12, 19])
    assert batch["image"].shape == (3, 3, 8, 8) and batch["image_id"].tolist() == [0, 1, 1]
    assert batch["round"].tolist() == [1, 3, 10] and batch["gt_index"].tolist() == [0, 2, 1]
    texts = [decode(i, m) for i, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    assert texts == ["question 0 ; caption 0", "question 12 ; question 11 answer 11 ; question 10 answer 10",
                     "question 19 ; question 18 answer 18 ; question 17 answer 17"]
    options = [[decode(batch["option_ids"][u], batch["option_mask"][u]) for u in row] for row in batch["options"]]
    assert options == [["answer 0", "answer 1", "answer 2", "answer 3"],
                       ["answer 10", "answer 11", "answer 12", "answer 13"],
                       ["answer 18", "answer 19", "answer 20", "answer 21"]]
    assert [row[g] for row, g in zip(options, batch["gt_index"].tolist(), strict=True)] == [
        "answer 0", "answer 12", "answer 19"]
    assert batch["option_ids"].shape[0] == len({a for row in options for a in row})  # distinct candidates
    rel = batch["relevance"]
    assert torch.isnan(rel[0]).all() and torch.isnan(rel[1]).all() and rel[2].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert not math.isnan(float(dm.dialogs("val").relevance[2, 0]))


def test_the_config_reads_the_official_layout(tmp_path: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "visdial.yaml")
    cfg.root = str(visdial_folder(tmp_path))
    dm = instantiate(cfg)
    assert isinstance(dm, VisDialDataModule) and dm.dialogs("test") is None
    train, val = dm.dialogs("train"), dm.dialogs("val")
    assert [p.parent.name for p in train.images] == ["val2014", "train2014", "train2014"] and train.relevance is None
    assert len(val.dialog) == 30 and int((~np.isnan(val.relevance).any(1)).sum()) == 2
    assert (dm.batch_size, dm.eval_batch_size, dm.max_pixels) == (64, 128, 40000000)
