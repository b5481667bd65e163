"""The feature cache: keys hit and miss on exactly their inputs, faults are detected, races encode once."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST, ROOT, needs_shared, run_cli
from mmfuse.builder import build_datamodule, build_module
from mmfuse.encoders.transforms import ImageTransform
from mmfuse.errors import MMFuseError
from mmfuse.features import CachedFeatures, cache_settings
from mmfuse.features.cache import FeatureCache
from mmfuse.features.encode import encode_into
from mmfuse.features.keys import key_of
from mmfuse.features.storage import EntryWriter
from mmfuse.train import train
from mmfuse.types import EncoderOutput

FROZEN = (*FAST, "encoder.image.freeze=true", "encoder.text.freeze=true")
WORKER = ROOT / "tests" / "cache_worker.py"


def set_up(make_cfg, tmp_path: Path, *overrides: str, subdir: str = "run", seed: int = 0):
    """Module and datamodule after ``setup`` (features cached under ``tmp_path/features``)."""
    cfg = make_cfg(*FROZEN, f"cache.dir={tmp_path / 'features'}", *overrides, subdir=subdir)
    torch.manual_seed(seed)
    module = build_module(cfg)
    datamodule = build_datamodule(cfg, module)
    datamodule.setup("fit")
    return module, datamodule


def statuses(datamodule) -> dict[str, str]:
    return {f"{split}/{side}": info["status"] for split, sides in datamodule.feature_cache.report.items()
            for side, info in sides.items()}


def keys(datamodule) -> dict[str, str]:
    return {f"{split}/{side}": info["key"] for split, sides in datamodule.feature_cache.report.items()
            for side, info in sides.items()}


def entry(datamodule, split: str = "train", side: str = "image") -> Path:
    return Path(datamodule.feature_cache.report[split][side]["path"])


def unique_samples(datamodule) -> dict[str, int]:
    """Images and texts of the three splits: what the encoders run on when every entry is built."""
    splits = [datamodule.splits[name] for name in ("train", "val", "test")]
    return {"image": sum(len(s.images) for s in splits), "text": sum(len(s.text) for s in splits)}


def test_first_setup_encodes_once_second_reads_and_features_equal_the_encoders(make_cfg, tmp_path):
    module, dm = set_up(make_cfg, tmp_path, subdir="a")
    sizes = {name: (len(dm.splits[name].images), len(dm.splits[name].text)) for name in ("train", "val", "test")}
    assert module.model.encoded_samples == {"image": sum(s[0] for s in sizes.values()),
                                            "text": sum(s[1] for s in sizes.values())}
    assert set(statuses(dm).values()) == {"built"}
    assert sizes["train"][0] == 256

    again, dm2 = set_up(make_cfg, tmp_path, subdir="b")
    assert again.model.encoded_samples == {"image": 0, "text": 0}
    assert set(statuses(dm2).values()) == {"hit"} and keys(dm2) == keys(dm)

    # what a batch carries is what the encoders compute (float32 storage: to the last bit up to batching)
    train = dm2.splits["train"]
    assert isinstance(train.images, CachedFeatures) and isinstance(train.text, CachedFeatures)
    batch = train.__getitems__(list(range(0, 40, 3)))
    assert "image" not in batch and "input_ids" not in batch
    plain = type(dm2).build_split(dm2, "train")  # the uncached split
    ref = plain.__getitems__(list(range(0, 40, 3)))
    with torch.no_grad():
        img = again.model.image_encoder(ref["image"])
        txt = again.model.text_encoder(ref["input_ids"], ref["attention_mask"])
    assert torch.allclose(batch["image_features"].pooled, img.pooled, atol=1e-6)
    assert torch.allclose(batch["text_features"].pooled, txt.pooled, atol=1e-6)
    assert batch["text_features"].tokens.shape[1] == 0  # fusion=mul reads pooled only: no tokens read


def test_token_sequences_are_stored_when_needed_and_a_full_entry_serves_pooled_use(make_cfg, tmp_path):
    module, dm = set_up(make_cfg, tmp_path, "cache.tokens=true", subdir="a")
    manifest = json.loads((entry(dm, "train", "text") / "manifest.json").read_text())
    assert set(manifest["files"]) == {"pooled", "tokens", "mask"}
    batch = dm.splits["train"].__getitems__(list(range(8)))
    plain = type(dm).build_split(dm, "train").__getitems__(list(range(8)))
    with torch.no_grad():
        txt = module.model.text_encoder(plain["input_ids"], plain["attention_mask"])
    feats = batch["text_features"]
    assert feats.tokens.shape == txt.tokens.shape and torch.equal(feats.mask, txt.mask)
    assert torch.allclose(feats.tokens, txt.tokens, atol=1e-5)
    assert feats.mask.dtype == torch.bool and batch["image_features"].tokens.shape[1] == 64  # 8x8 grid

    # fusion=mul (pooled only) with tokens=auto: the entries above hold more than needed and are used
    again, dm2 = set_up(make_cfg, tmp_path, subdir="b")
    assert again.model.encoded_samples == {"image": 0, "text": 0} and keys(dm2) == keys(dm)
    assert dm2.splits["train"].__getitems__([0])["text_features"].tokens.shape[1] == 0


@pytest.mark.parametrize(("override", "image_misses", "text_misses"), [
    ("encoder.image.pooling=mean", True, False),        # an encoder setting
    ("encoder.text.max_length=6", False, True),         # a tokenizer setting
    ("encoder.text.pooling=cls", False, True),
    ("data.negatives.other=2.0", False, True),          # the split's texts (other negatives)
    ("cache.dtype=float16", True, True),
])
def test_a_changed_input_misses_only_its_side(make_cfg, tmp_path, override, image_misses, text_misses):
    _, base = set_up(make_cfg, tmp_path, subdir="base")
    module, dm = set_up(make_cfg, tmp_path, override, subdir="changed")
    for split in ("train", "val"):
        for side, misses in (("image", image_misses), ("text", text_misses)):
            changed = keys(dm)[f"{split}/{side}"] != keys(base)[f"{split}/{side}"]
            assert changed == misses, (split, side)
            assert statuses(dm)[f"{split}/{side}"] == ("built" if misses else "hit")
    every = unique_samples(dm)
    assert module.model.encoded_samples == {"image": every["image"] if image_misses else 0,
                                            "text": every["text"] if text_misses else 0}


def test_other_weights_a_changed_transform_or_vocabulary_miss(make_cfg, tmp_path):
    module, dm = set_up(make_cfg, tmp_path, subdir="base")
    _, other_seed = set_up(make_cfg, tmp_path, subdir="seed", seed=1)  # other random weights
    assert not set(keys(dm).values()) & set(keys(other_seed).values())

    cache: FeatureCache = dm.feature_cache
    plain = type(dm).build_split(dm, "train")
    cpu = f"cpu/32-true/matmul-{torch.get_float32_matmul_precision()}"
    parts = cache.key_parts("image", plain, cpu, tokens=False)
    assert key_of(parts) == keys(dm)["train/image"]  # what setup used (no trainer: CPU, float32)
    moved = copy.copy(plain)
    moved.transform = ImageTransform(size=32, mean=(0.5, 0.5, 0.5), std=(0.3, 0.25, 0.25))
    assert key_of(cache.key_parts("image", moved, cpu, tokens=False)) != key_of(parts)
    assert key_of(cache.key_parts("image", plain, "cuda/bf16-mixed/matmul-high", tokens=False)) != key_of(parts)

    text_parts = cache.key_parts("text", plain, cpu, tokens=False)
    tokenizer = module.model.text_encoder.tokenizer
    tokenizer.set_vocab(tokenizer.vocab[:-1])  # same ids for this split would still be another vocabulary
    cache._encoder_identity.clear()
    assert key_of(cache.key_parts("text", plain, cpu, tokens=False)) != key_of(text_parts)


def test_trainable_encoders_and_cache_off_are_never_cached(make_cfg, tmp_path):
    cfg = make_cfg(*FAST, f"cache.dir={tmp_path / 'features'}", subdir="trainable")
    assert build_datamodule(cfg, build_module(cfg)).feature_cache is None
    cfg = make_cfg(*FAST, "encoder.image.freeze=true", "encoder.image.trainable_last=1",
                   "encoder.text.freeze=true", f"cache.dir={tmp_path / 'features'}", subdir="partial")
    dm = build_datamodule(cfg, build_module(cfg))
    assert dm.feature_cache.cached_sides() == ["text"]  # a partly trainable encoder is not cached
    module, dm = set_up(make_cfg, tmp_path, "cache=off", subdir="off")
    assert dm.feature_cache is None and "image" in dm.splits["train"].__getitems__([0])
    assert not (tmp_path / "features").exists()


def test_truncated_file_is_detected_and_rebuilt_with_a_warning(make_cfg, tmp_path, caplog):
    _, dm = set_up(make_cfg, tmp_path, subdir="a")
    pooled = entry(dm) / "pooled.npy"
    good = np.load(pooled).copy()
    with open(pooled, "r+b") as f:
        f.truncate(pooled.stat().st_size - 100)
    with caplog.at_level(logging.WARNING, logger="mmfuse.features"):
        module, dm2 = set_up(make_cfg, tmp_path, "cache.verify=size", subdir="b")
    assert any("truncated" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    assert statuses(dm2)["train/image"] == "rebuilt" and statuses(dm2)["train/text"] == "hit"
    assert module.model.encoded_samples["image"] == 256
    assert np.array_equal(np.load(pooled), good)


def test_corrupted_bytes_pass_a_size_check_and_fail_the_checksum(make_cfg, tmp_path, caplog):
    _, dm = set_up(make_cfg, tmp_path, subdir="a")
    pooled = entry(dm) / "pooled.npy"
    data = bytearray(pooled.read_bytes())
    data[-1] ^= 0xFF
    pooled.write_bytes(bytes(data))
    _, sized = set_up(make_cfg, tmp_path, "cache.verify=size", subdir="b")
    assert statuses(sized)["train/image"] == "hit"  # the documented trade-off of verify=size
    with caplog.at_level(logging.WARNING, logger="mmfuse.features"):
        module, dm2 = set_up(make_cfg, tmp_path, subdir="c")
    assert any("sha256 differs" in r.getMessage() for r in caplog.records)
    assert statuses(dm2)["train/image"] == "rebuilt" and module.model.encoded_samples["image"] == 256


def test_rebuild_recomputes_once_per_process(make_cfg, tmp_path, monkeypatch):
    _, dm = set_up(make_cfg, tmp_path, subdir="a")
    import mmfuse.features.cache as cache_module

    monkeypatch.setattr(cache_module, "PROCESS_START", time.time())  # as if a new process started now
    module, dm2 = set_up(make_cfg, tmp_path, "cache=rebuild", subdir="b")
    assert set(statuses(dm2).values()) == {"rebuilt"} and module.model.encoded_samples == unique_samples(dm2)
    assert unique_samples(dm2)["image"] == 256 + 128 + 128
    again, dm3 = set_up(make_cfg, tmp_path, "cache=rebuild", subdir="c")  # next job of the same sweep
    assert set(statuses(dm3).values()) == {"hit"} and again.model.encoded_samples == {"image": 0, "text": 0}


def test_store_is_memory_mapped_and_pickles_without_its_data(make_cfg, tmp_path):
    _, dm = set_up(make_cfg, tmp_path, "cache.tokens=true")
    store = dm.splits["train"].images
    assert isinstance(store.arrays["tokens"], np.memmap)
    tokens = store.arrays["tokens"]
    assert tokens.shape == (256, 64, 64) and tokens.dtype == np.float32  # images x 8x8 grid x width, 4 MiB
    clone = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 20_000 and clone._arrays is None
    idx = torch.tensor([5, 1, 200])
    assert torch.equal(clone.features(idx).tokens, store.features(idx).tokens)


def test_values_beyond_float16_stop_the_encoding_with_the_fix(tmp_path):
    writer = EntryWriter(tmp_path, "k")
    big = EncoderOutput(torch.full((2, 4), 1e6), torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(MMFuseError, match="cache.dtype=float32"):
        encode_into(writer, iter([(np.arange(2), None)]), lambda _: big, 2, False, np.dtype(np.float16), "x")
    writer.abort()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("node", "message"), [
    ({"mode": "sometimes"}, r"cache.mode='sometimes': expected one of \['auto', 'off', 'rebuild'\]"),
    ({"mode": "auto", "dtype": "bfloat16"}, "cache.dtype='bfloat16'"),
    ({"mode": "auto", "batch_size": 0}, "cache.batch_size=0"),
    ({"mode": "auto", "verfy": "size"}, r"unknown keys \['verfy'\]"),
])
def test_bad_settings_name_the_field(node, message):
    with pytest.raises(MMFuseError, match=message):
        cache_settings(node)
    assert cache_settings(False).mode == "off" and cache_settings("rebuild").mode == "rebuild"


def _worker(tmp_path: Path, name: str, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / name), str(tmp_path / "cache"), str(delay)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_processes_racing_for_the_same_cache_encode_it_once(tmp_path):
    procs = [_worker(tmp_path, name, delay=0.3) for name in ("a", "b")]
    a, b = [_result(p) for p in procs]
    for split in ("train", "val", "test"):
        for side in ("image", "text"):  # every entry was encoded by exactly one of the two
            assert sorted([a["report"][split][side]["status"], b["report"][split][side]["status"]]) == ["built", "hit"]
    assert a["encoded"]["image"] + b["encoded"]["image"] == 256 + 128 + 128
    assert a["digest"] == b["digest"]


@pytest.mark.slow
def test_a_killed_writer_leaves_nothing_a_later_run_trusts(tmp_path):
    proc = _worker(tmp_path, "killed", delay=0.5)
    features = tmp_path / "cache" / "features"
    deadline = time.time() + 120
    while not list(features.glob("*.tmp-*/pooled.npy")) and time.time() < deadline:
        time.sleep(0.2)
    assert list(features.glob("*.tmp-*/pooled.npy")), proc.stderr.read()[-2000:] if proc.poll() is not None else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not [p for p in features.iterdir() if p.is_dir() and "." not in p.name]  # no published entry
    result = _result(_worker(tmp_path, "after", delay=0.0))
    assert result["encoded"]["image"] == 512 and result["report"]["train"]["image"]["status"] == "built"
    assert not list(features.glob("*.tmp-*"))  # the leftovers were removed under the lock


@pytest.mark.slow
def test_metrics_identical_with_and_without_the_cache(make_cfg, tmp_path):
    run = (*FROZEN, "data.num_train=600", "data.num_val=200", "trainer.max_epochs=2", "optimizer.lr=3e-3",
           f"cache.dir={tmp_path / 'features'}")
    off = train(make_cfg(*run, "cache=off", subdir="off"))
    on = train(make_cfg(*run, subdir="on"))
    hit = train(make_cfg(*run, subdir="hit"))
    half = train(make_cfg(*run, "cache.dtype=float16", subdir="half"))
    assert on["metrics"] == pytest.approx(off["metrics"], abs=1e-6, rel=0)
    assert hit["metrics"] == on["metrics"]
    assert half["metrics"]["val/acc"] == pytest.approx(off["metrics"]["val/acc"], abs=0.02)
    assert half["metrics"]["val/loss"] == pytest.approx(off["metrics"]["val/loss"], abs=1e-3)
    # the encoders ran on every batch without the cache, once per unique sample with it, never on a hit
    pairs = 2 * (600 + 200 + 128)
    assert off["encoded_samples"]["image"] == 2 * 1200 + 2 * 400 + 256 == off["encoded_samples"]["text"]
    assert on["encoded_samples"]["image"] == 600 + 200 + 128 < pairs
    assert hit["encoded_samples"] == {"image": 0, "text": 0}
    saved = json.loads((Path(hit["run_dir"]) / "results.json").read_text())
    assert saved["encoded_samples"] == {"image": 0, "text": 0}
    assert {v["status"] for sides in saved["feature_cache"].values() for v in sides.values()} == {"hit"}


@pytest.mark.slow
@pytest.mark.shared
def test_building_the_cache_leaves_the_random_negatives_of_training_unchanged(make_cfg, tmp_path):
    """COCO pairs are positives; ITM draws in-batch negatives from torch's generator while training, and
    the images are encoded through a DataLoader (which draws a seed). Metrics must still be equal."""
    root = needs_shared("data", "coco_mini")
    run = ("data=coco_captions", f"data.root={root}", "data.num_train=16", "data.num_val=16", "data.num_workers=0",
           "data.batch_size=8", "data.image_size=32", "encoder.image.freeze=true", "encoder.text.freeze=true",
           "trainer.max_epochs=2", "test=false", "callbacks.progress_bar=null", f"cache.dir={tmp_path / 'features'}")
    off = train(make_cfg(*run, "cache=off", subdir="off"))
    built = train(make_cfg(*run, subdir="built"))
    assert {v["status"] for s in built["feature_cache"].values() for v in s.values()} == {"built"}
    assert built["metrics"] == pytest.approx(off["metrics"], abs=1e-6, rel=0)


@pytest.mark.slow
def test_a_sweep_encodes_once_for_all_its_jobs(tmp_path):
    proc = run_cli("train.py", "-m", *FROZEN, "fusion=add,mul,concat", "test=false", outputs=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((tmp_path / "multirun").glob("*/*/[0-9]*/results.json"), key=lambda p: int(p.parent.name))
    results = [json.loads(p.read_text()) for p in jobs]
    assert [r["status"] for r in results] == ["completed"] * 3
    assert results[0]["encoded_samples"]["image"] == 256 + 128 + 128
    assert [r["encoded_samples"] for r in results[1:]] == [{"image": 0, "text": 0}] * 2
