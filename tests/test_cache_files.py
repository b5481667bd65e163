"""The feature cache over splits that are not a ``PairDataset``: video / audio files (data=jsonl,
``MediaPairDataset``) and data=shapes_av (``AVDataset``). Frozen encoders are encoded once, a second run
encodes 0 samples, training with and without the cache gives the same losses and metrics, a rewritten
file misses, a file that fails to decode while the cache encodes is dropped as in training."""

from __future__ import annotations

import logging
from pathlib import Path

import test_media_datasets
import torch
from test_cache_media import _losses, report, set_up
from test_media_datasets import SMALL, VIDEO, write_jsonl
from test_media_files import write_video

from conftest import FAST
from mmfuse.data.media import MediaPairDataset
from mmfuse.data.shapes_av.dataset import AVDataset
from mmfuse.features import CachedFeatures, CachedFrameFeatures
from mmfuse.train import train

VIDEO_FROZEN = ("data=jsonl", *VIDEO, "task=retrieval", *SMALL, "encoder.video.freeze=true")
AUDIO_FROZEN = ("data=jsonl", "encoder.image=none", "encoder.audio=logmel_cnn", "encoder.audio.freeze=true",
                "task=retrieval", *SMALL)
AV_FROZEN = ("data=shapes_av", "task=classification", *FAST, "data.num_train=16", "data.num_val=8",
             "data.num_test=0", "data.batch_size=8", "data.cache_dir=null", "encoder.video.frame.freeze=true",
             "encoder.audio.freeze=true", "encoder.text.freeze=true")

clips = test_media_datasets.clips  # fixtures: tmp_path/data (3 clips), tmp_path/av (2 sounds)
sounds = test_media_datasets.sounds


def three_runs(make_cfg, tmp_path: Path, *overrides: str) -> tuple[dict, dict, dict]:
    run = (*overrides, "trainer.max_epochs=2", f"cache.dir={tmp_path / 'features'}")
    off = train(make_cfg(*run, "cache=off", subdir="off"))
    on = train(make_cfg(*run, subdir="on"))
    hit = train(make_cfg(*run, subdir="hit"))
    losses = _losses(off["run_dir"])
    assert losses and _losses(on["run_dir"]) == losses and _losses(hit["run_dir"]) == losses
    assert on["metrics"] == off["metrics"] and hit["metrics"] == off["metrics"]
    return off, on, hit


def test_video_files_with_a_frozen_video_encoder_are_cached_and_hit(make_cfg, clips, tmp_path):
    module, dm = set_up(make_cfg, tmp_path, f"data.root={clips}", *VIDEO_FROZEN, subdir="a")
    # val lists the same 3 files as train: the same key, so the entry train built serves it
    assert report(dm) == {"train/video": "built", "val/video": "hit"}
    assert len(set(report(dm, "key").values())) == 1
    assert module.model.encoded_samples == {"video": 3, "text": 0}
    split = dm.splits["train"]
    assert type(split) is MediaPairDataset and type(split.cached["video"]) is CachedFeatures
    batch = split.__getitems__([2, 0])
    assert "video" not in batch and batch["image_id"].tolist() == [2, 0]
    ref = type(dm).build_split(dm, "train").__getitems__([2, 0])
    with torch.no_grad():
        out = module.model.video_encoder(ref["video"])
    torch.testing.assert_close(batch["video_features"].pooled, out.pooled, atol=1e-6, rtol=0)
    assert torch.equal(batch["input_ids"], ref["input_ids"])

    again, dm2 = set_up(make_cfg, tmp_path, f"data.root={clips}", *VIDEO_FROZEN, subdir="b")
    assert report(dm2) == {"train/video": "hit", "val/video": "hit"}
    assert report(dm2, "key") == report(dm, "key") and again.model.encoded_samples == {"video": 0, "text": 0}


def test_training_over_cached_video_files_gives_the_numbers_of_training_without(make_cfg, clips, tmp_path):
    off, on, hit = three_runs(make_cfg, tmp_path, f"data.root={clips}", *VIDEO_FROZEN)
    assert on["encoded_samples"]["video"] == 3 and hit["encoded_samples"]["video"] == 0
    assert off["encoded_samples"]["video"] > 3
    assert {s: sorted(v) for s, v in hit["feature_cache"].items()} == {"train": ["video"], "val": ["video"]}


def test_a_rewritten_clip_misses(make_cfg, clips, tmp_path):
    _, dm = set_up(make_cfg, tmp_path, f"data.root={clips}", *VIDEO_FROZEN, subdir="a")
    write_video(clips / "clips" / "v1.mp4", n=14)  # another size and mtime
    module, dm2 = set_up(make_cfg, tmp_path, f"data.root={clips}", *VIDEO_FROZEN, subdir="b")
    assert report(dm2) == {"train/video": "built", "val/video": "hit"}
    assert not set(report(dm2, "key").values()) & set(report(dm, "key").values())
    assert module.model.encoded_samples["video"] == 3


def test_a_clip_that_fails_while_the_cache_encodes_drops_its_pairs(make_cfg, clips, tmp_path, caplog):
    (clips / "clips" / "text.mp4").write_text("not a video")
    names = ["v0.mp4", "text.mp4", "v2.mp4"]
    write_jsonl(clips / "train.jsonl", [{"video": f"clips/{n}", "text": f"clip {n}"} for n in names])
    bad = ("data.verify_images=none", "data.on_bad_sample=skip")
    with caplog.at_level(logging.WARNING, logger="mmfuse.data.media"):
        module, dm = set_up(make_cfg, tmp_path, f"data.root={clips}", *VIDEO_FROZEN, *bad, subdir="a")
    text = clips / "clips" / "text.mp4"
    assert module.model.encoded_samples["video"] == 2 + 3  # the bad clip is not encoded
    assert dm.describe()["train"]["failed_at_load"] == [str(text)]
    assert [r.getMessage().split(": ")[0] for r in caplog.records if r.name == "mmfuse.data.media"] == [
        f"skipping the pairs of {text} in every batch"]
    store = dm.splits["train"].cached["video"]
    assert list(store.failed) == [1] and store.failed[1].startswith("MMFuseError: ")

    _, dm2 = set_up(make_cfg, tmp_path, f"data.root={clips}", *VIDEO_FROZEN, *bad, subdir="b")
    assert report(dm2)["train/video"] == "hit"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmfuse.data.media"):
        batch = dm2.splits["train"].__getitems__([0, 1, 2])
    assert batch["image_id"].tolist() == [0, 2] and batch["video_features"].pooled.shape[0] == 2
    assert [r.getMessage() for r in caplog.records if r.name == "mmfuse.data.media"] == [
        f"skipping the pairs of {text} in this batch: {store.failed[1]}"]
    assert dm2.describe()["train"]["failed_at_load"] == [str(text)]


def test_sound_files_with_a_frozen_logmel_encoder_are_cached(make_cfg, sounds, tmp_path):
    module, dm = set_up(make_cfg, tmp_path, f"data.root={sounds}", *AUDIO_FROZEN, "cache.tokens=true", subdir="a")
    assert report(dm) == {"train/audio": "built", "val/audio": "hit"}  # val: the same 2 files
    assert module.model.encoded_samples == {"audio": 2, "text": 0}
    batch = dm.splits["train"].__getitems__([0, 1])
    assert "audio" not in batch and "audio_mask" not in batch
    ref = type(dm).build_split(dm, "train").__getitems__([0, 1])
    assert ref["audio_mask"].sum(1).tolist() == [8000, 4000]
    module.model.eval()
    with torch.no_grad():
        out = module.model.audio_encoder(ref["audio"], ref["audio_mask"])
    feats = batch["audio_features"]
    assert feats.mask.sum(1).tolist() == out.mask.sum(1).tolist() == [50, 25]  # 10 ms frames at 16 kHz
    torch.testing.assert_close(feats.pooled, out.pooled, atol=1e-5, rtol=0)

    off, on, hit = three_runs(make_cfg, tmp_path / "runs", f"data.root={sounds}", *AUDIO_FROZEN)
    assert on["encoded_samples"]["audio"] == 2 and hit["encoded_samples"]["audio"] == 0


def test_shapes_av_with_frozen_encoders(make_cfg, tmp_path):
    module, dm = set_up(make_cfg, tmp_path, *AV_FROZEN, subdir="a")
    assert dm.feature_cache.cached_sides() == ["video_frames", "audio", "text"]
    assert set(report(dm)) == {f"{s}/{side}" for s in ("train", "val") for side in ("video_frames", "audio", "text")}
    assert set(report(dm).values()) == {"built"}
    texts = sum(len(dm.splits[s].text) for s in ("train", "val"))  # distinct captions per split
    assert texts == sum(len(type(dm).build_split(dm, s).text["input_ids"]) for s in ("train", "val")) == 22
    assert module.model.encoded_samples == {"video": 24, "audio": 24, "text": 22}
    split = dm.splits["train"]
    assert type(split) is AVDataset and type(split.cached["video"]) is CachedFrameFeatures
    batch = split.__getitems__([0, 5])
    assert not {"video", "audio", "input_ids"} & set(batch)
    ref = type(dm).build_split(dm, "train").__getitems__([0, 5])
    with torch.no_grad():
        frames = module.model.video_encoder.encode_frames(ref["video"])
        audio = module.model.audio_encoder(ref["audio"], ref["audio_mask"])
    torch.testing.assert_close(batch["video_frame_features"].pooled, frames.pooled, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch["audio_features"].pooled, audio.pooled, atol=1e-5, rtol=0)
    assert torch.equal(batch["target"], ref["target"])

    off, on, hit = three_runs(make_cfg, tmp_path / "runs", *AV_FROZEN)
    assert on["encoded_samples"] == {"video": 24, "audio": 24, "text": 22}
    assert hit["encoded_samples"] == {"video": 0, "audio": 0, "text": 0}


def test_audio_batches_give_the_store_rate_to_an_audio_transform():
    from mmfuse.encoders.audio_transform import AudioTransform
    from mmfuse.features.encode import audio_batches

    class Sounds:  # 8 kHz sounds; AudioTransform(16000) resamples them: S' = 2 S
        sample_rate = 8000
        waves = [torch.ones(40), torch.ones(100)]

        def __len__(self) -> int:
            return 2

        def load(self, i: int) -> torch.Tensor:
            return self.waves[i]

    (rows, batch), = audio_batches(Sounds(), AudioTransform(16000), 2, torch.device("cpu"))
    assert rows.tolist() == [1, 0] and batch["audio"].shape == (2, 200)
    assert batch["audio_mask"].sum(1).tolist() == [200, 80]


def test_image_and_sound_records_cache_both_frozen_encoders(make_cfg, sounds, tmp_path):
    mixed = ("data=jsonl", f"data.root={sounds}", "encoder.audio=logmel_cnn", "encoder.audio.freeze=true",
             "encoder.image.freeze=true", "task=classification", "data.labels=multiclass", "data.num_classes=2",
             "data.train=mixed.jsonl", "data.val=mixed.jsonl", *SMALL)
    module, dm = set_up(make_cfg, tmp_path, *mixed)
    assert report(dm) == {"train/image": "built", "train/audio": "built", "val/image": "hit", "val/audio": "hit"}
    batch = dm.splits["train"].__getitems__([1, 0])
    assert not {"image", "audio"} & set(batch) and batch["target"].tolist() == [1, 0]
    ref = type(dm).build_split(dm, "train").__getitems__([1, 0])
    module.model.eval()
    with torch.no_grad():
        image = module.model.image_encoder(ref["image"])
        audio = module.model.audio_encoder(ref["audio"], ref["audio_mask"])
    torch.testing.assert_close(batch["image_features"].pooled, image.pooled, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch["audio_features"].pooled, audio.pooled, atol=1e-5, rtol=0)


def test_a_frozen_text_encoder_is_cached_beside_the_clips(make_cfg, clips, tmp_path):
    module, dm = set_up(make_cfg, tmp_path, f"data.root={clips}", *VIDEO_FROZEN, "encoder.text.freeze=true")
    assert report(dm) == {"train/video": "built", "train/text": "built", "val/video": "hit", "val/text": "hit"}
    assert module.model.encoded_samples == {"video": 3, "text": 3}
    batch = dm.splits["train"].__getitems__([2, 0])
    assert not {"input_ids", "attention_mask"} & set(batch) and batch["text_id"].tolist() == [2, 0]
    ref = type(dm).build_split(dm, "train").__getitems__([2, 0])
    with torch.no_grad():
        text = module.model.text_encoder(ref["input_ids"], ref["attention_mask"])
    torch.testing.assert_close(batch["text_features"].pooled, text.pooled, atol=1e-6, rtol=0)
