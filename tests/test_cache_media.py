"""The feature cache for video and audio: a fully frozen video encoder cached whole, a frozen frame
encoder under a trainable temporal model cached per frame, a frozen audio encoder cached with its mask."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import mmfuse.features.cache as cache_module
from conftest import FAST
from mmfuse.builder import build_datamodule, build_module
from mmfuse.data.pairs import PairDataset
from mmfuse.encoders.audio_logmel import LogMelEncoder
from mmfuse.features import CachedFeatures, CachedFrameFeatures, cache_settings
from mmfuse.features.cache import FeatureCache
from mmfuse.model import FusionModel
from mmfuse.train import train

TINY = (*FAST, "data=shapes_video", "data.num_train=16", "data.num_val=8", "data.num_test=8", "data.frames=4",
        "data.batch_size=8", "data.cache_dir=null")
VIDEO_FROZEN = (*TINY, "encoder.video.freeze=true")
FRAMES_FROZEN = (*TINY, "encoder.video.frame.freeze=true", "encoder.video.temporal=transformer")
CLIPS = 16 + 8 + 8


def set_up(make_cfg, tmp_path: Path, *overrides: str, subdir: str = "run"):
    cfg = make_cfg(*overrides, f"cache.dir={tmp_path / 'features'}", subdir=subdir)
    torch.manual_seed(0)
    module = build_module(cfg)
    datamodule = build_datamodule(cfg, module)
    datamodule.setup("fit")
    return module, datamodule


def report(datamodule, what: str = "status") -> dict[str, str]:
    return {f"{split}/{side}": info[what] for split, sides in datamodule.feature_cache.report.items()
            for side, info in sides.items()}


def test_a_fully_frozen_video_encoder_is_cached_whole_and_read_on_the_second_run(make_cfg, tmp_path):
    module, dm = set_up(make_cfg, tmp_path, *VIDEO_FROZEN, "cache.tokens=true", subdir="a")
    assert dm.feature_cache.cached_sides() == ["video"]  # the text encoder trains
    assert report(dm) == {"train/video": "built", "val/video": "built", "test/video": "built"}
    assert module.model.encoded_samples == {"video": CLIPS, "text": 0}

    again, dm2 = set_up(make_cfg, tmp_path, *VIDEO_FROZEN, subdir="b")  # pooled only: the full entry serves
    assert report(dm2) == {"train/video": "hit", "val/video": "hit", "test/video": "hit"}
    assert report(dm2, "key") == report(dm, "key")
    assert again.model.encoded_samples == {"video": 0, "text": 0}

    train_split = dm2.splits["train"]
    assert type(train_split.images) is CachedFeatures
    batch = train_split.__getitems__([0, 3, 5, 6])
    assert "video" not in batch and sorted(batch["video_id"].tolist()) == [0, 1, 2, 3]
    ref = type(dm2).build_split(dm2, "train").__getitems__([0, 3, 5, 6])
    assert ref["video"].shape == (4, 4, 3, 32, 32)
    with torch.no_grad():
        out = again.model.video_encoder(ref["video"])
    feats = batch["video_features"]
    assert feats.pooled.shape == (4, 64) and feats.tokens.shape == (4, 0, 64)  # fusion=mul reads pooled only
    torch.testing.assert_close(feats.pooled, out.pooled, atol=1e-6, rtol=0)
    full = dm.splits["train"].__getitems__([0, 3, 5, 6])["video_features"]  # cache.tokens=true: one per frame
    assert full.tokens.shape == (4, 4, 64) and full.mask.tolist() == [[True] * 4] * 4
    torch.testing.assert_close(full.tokens, out.tokens, atol=1e-6, rtol=0)


def test_a_frozen_frame_encoder_is_cached_per_frame_and_only_the_transformer_runs(make_cfg, tmp_path):
    module, dm = set_up(make_cfg, tmp_path, *FRAMES_FROZEN, subdir="a")
    assert dm.feature_cache.cached_sides() == ["video_frames"]
    assert set(report(dm).values()) == {"built"} and module.model.encoded_samples["video"] == CLIPS
    batch = dm.splits["train"].__getitems__([0, 1, 2])
    assert type(dm.splits["train"].images) is CachedFrameFeatures
    frames = batch["video_frame_features"]
    assert "video_features" not in batch and "video" not in batch
    assert frames.pooled.shape == (3, 4, 64) and frames.tokens.shape == (3, 4, 0, 64)  # grid=false

    model = module.model
    ref = type(dm).build_split(dm, "train").__getitems__([0, 1, 2])
    model.eval()
    with torch.no_grad():
        plain = model.encode_video(ref)
        cached = model.encode_video(batch)
        torch.testing.assert_close(frames.pooled, model.video_encoder.encode_frames(ref["video"]).pooled,
                                   atol=1e-6, rtol=0)
    assert model.encoded_samples["video"] == CLIPS + 3  # the uncached batch ran the frame encoder; the cached did not
    torch.testing.assert_close(cached.pooled, plain.pooled, atol=1e-6, rtol=0)
    torch.testing.assert_close(cached.tokens, plain.tokens, atol=1e-6, rtol=0)

    # the temporal model's settings do not change the frames' features: the entries are hit
    again, dm2 = set_up(make_cfg, tmp_path, *FRAMES_FROZEN, "encoder.video.layers=2", "encoder.video.heads=2",
                        subdir="b")
    assert set(report(dm2).values()) == {"hit"} and report(dm2, "key") == report(dm, "key")
    assert again.model.encoded_samples == {"video": 0, "text": 0}


@pytest.mark.parametrize("override", [
    "encoder.video.frame.pooling=mean",   # a frame-encoder setting (nested config)
    "encoder.video.frame.width=32",       # and its weights' shapes
    "data.frames=6",                      # the clips (frames per clip)
    "data.image_size=16",                 # the clips and the frame transform's size
])
def test_a_changed_frame_encoder_setting_or_clip_misses(make_cfg, tmp_path, override):
    _, base = set_up(make_cfg, tmp_path, *FRAMES_FROZEN, subdir="base")
    heads = ("encoder.video.heads=2",) if "width=32" in override else ()
    module, dm = set_up(make_cfg, tmp_path, *FRAMES_FROZEN, override, *heads, subdir="changed")
    assert set(report(dm).values()) == {"built"}
    assert not set(report(dm, "key").values()) & set(report(base, "key").values())
    assert module.model.encoded_samples["video"] == CLIPS


def test_cache_off_rebuild_and_a_trainable_frame_encoder(make_cfg, tmp_path, monkeypatch):
    _, dm = set_up(make_cfg, tmp_path, *FRAMES_FROZEN, "cache=off", subdir="off")
    assert dm.feature_cache is None and "video" in dm.splits["train"].__getitems__([0])
    _, dm = set_up(make_cfg, tmp_path, *TINY, "encoder.video.temporal=transformer", subdir="trainable")
    assert dm.feature_cache is None  # nothing frozen: nothing cached
    _, built = set_up(make_cfg, tmp_path, *FRAMES_FROZEN, subdir="built")
    monkeypatch.setattr(cache_module, "PROCESS_START", time.time())  # as if a new process started now
    module, dm = set_up(make_cfg, tmp_path, *FRAMES_FROZEN, "cache=rebuild", subdir="rebuild")
    assert set(report(dm).values()) == {"rebuilt"} and report(dm, "key") == report(built, "key")
    assert module.model.encoded_samples["video"] == CLIPS


def test_load_weights_is_left_out_of_the_key_at_any_depth():
    model = FusionModel(None, None, _Fusion(), video_encoder=_frozen_video())
    configs = {"video": {"temporal": "transformer", "layers": 1, "load_weights": True, "frames": 4,
                         "sampling": "uniform",
                         "frame": {"width": 8, "load_weights": False, "stages": [{"load_weights": 1, "k": 3}]}}}
    cache = FeatureCache(model, cache_settings({"dir": "unused"}), configs)
    assert cache.encoder_configs["video"] == {"temporal": "transformer", "layers": 1, "frames": 4,
                                              "sampling": "uniform", "frame": {"width": 8, "stages": [{"k": 3}]}}
    # the per-frame side: the temporal model's keys out, which frames are read (and the frame encoder) in
    assert cache.encoder_configs["video_frames"] == {"frames": 4, "sampling": "uniform",
                                                     "frame": {"width": 8, "stages": [{"k": 3}]}}


def _losses(run_dir: Path) -> list[float]:
    path = next(Path(run_dir).glob("csv/metrics.csv"))
    with open(path) as f:
        return [float(r["train/loss_step"] if "train/loss_step" in r else r["train/loss"])
                for r in csv.DictReader(f) if (r.get("train/loss_step") or r.get("train/loss"))]


def test_training_over_cached_frames_gives_the_numbers_of_training_without_the_cache(make_cfg, tmp_path):
    run = (*FRAMES_FROZEN, "trainer.max_epochs=2", "optimizer.lr=3e-3", f"cache.dir={tmp_path / 'features'}")
    off = train(make_cfg(*run, "cache=off", subdir="off"))
    on = train(make_cfg(*run, subdir="on"))
    hit = train(make_cfg(*run, subdir="hit"))
    losses = _losses(off["run_dir"])
    assert len(losses) == 2 * (2 * 16 // 8)  # two epochs of 4 steps
    assert _losses(on["run_dir"]) == losses and _losses(hit["run_dir"]) == losses
    assert on["metrics"] == off["metrics"] and hit["metrics"] == off["metrics"]
    assert off["encoded_samples"]["video"] == 2 * 2 * 16 + 2 * 2 * 8 + 2 * 8  # pairs: 2 per clip, val each epoch
    assert on["encoded_samples"]["video"] == CLIPS and hit["encoded_samples"]["video"] == 0
    saved = json.loads((Path(hit["run_dir"]) / "results.json").read_text())
    assert {split: sorted(sides) for split, sides in saved["feature_cache"].items()} == \
        {"train": ["video_frames"], "val": ["video_frames"], "test": ["video_frames"]}
    assert {v["status"] for sides in saved["feature_cache"].values() for v in sides.values()} == {"hit"}


# -- audio --------------------------------------------------------------------------------------------

class _Fusion(nn.Module):
    needs_tokens = True


def _frozen_video():
    from mmfuse.encoders.tiny_cnn import TinyCNN
    from mmfuse.encoders.video import VideoEncoder

    return VideoEncoder(TinyCNN(width=8, image_size=16, freeze=True), temporal="transformer", heads=2)


class Waves:
    """Sounds of different lengths held in memory (``load(i) -> float [S_i]``)."""

    def __init__(self, waves: list[torch.Tensor]) -> None:
        self.waves = waves

    def __len__(self) -> int:
        return len(self.waves)

    def load(self, i: int) -> torch.Tensor:
        return self.waves[i]


class AudioPairDataset(PairDataset):
    """Sound + text pairs: ``audio`` right-padded with ``audio_mask``, or ``audio_features`` from a cache."""

    modality = "audio"

    def _images(self, idx: torch.Tensor) -> dict:
        if hasattr(self.images, "features"):
            return {"audio_features": self.images.features(idx)}
        waves = [self.transform(self.images.load(int(i))) for i in idx]
        audio = torch.zeros(len(waves), max(len(w) for w in waves))
        mask = torch.zeros(audio.shape, dtype=torch.bool)
        for j, w in enumerate(waves):
            audio[j, :len(w)], mask[j, :len(w)] = w, True
        return {"audio": audio, "audio_mask": mask}


def _audio_split(lengths: list[int]) -> AudioPairDataset:
    g = torch.Generator().manual_seed(0)
    waves = [torch.randn(n, generator=g) * 0.1 for n in lengths]
    n = len(lengths)
    text = {"input_ids": torch.ones(n, 3, dtype=torch.long), "attention_mask": torch.ones(n, 3, dtype=torch.long)}
    return AudioPairDataset(Waves(waves), text, torch.arange(n), torch.arange(n), transform=lambda w: w)


def _audio_model(**kwargs) -> FusionModel:
    torch.manual_seed(0)
    encoder = LogMelEncoder(**{"sample_rate": 8000, "n_mels": 16, "width": 16, "layers": 1, "heads": 2,
                               "backbone": "transformer", "freeze": True, **kwargs})
    return FusionModel(None, None, _Fusion(), audio_encoder=encoder)


AUDIO_CONFIG = {"sample_rate": 8000, "n_mels": 16, "width": 16, "backbone": "transformer", "freeze": True}


def test_a_frozen_audio_encoder_is_cached_with_its_mask_and_hit_on_the_second_run(tmp_path):
    lengths = [800, 2400, 1600, 400, 2000]
    split = _audio_split(lengths)
    settings = cache_settings({"dir": str(tmp_path / "features"), "batch_size": 2})
    model = _audio_model()
    cache = FeatureCache(model, settings, {"audio": AUDIO_CONFIG})
    assert cache.cached_sides() == ["audio"]
    out = cache.wrap({"train": split})["train"]
    assert model.encoded_samples == {"audio": 5} and report_of(cache) == {"train/audio": "built"}
    batch = out.__getitems__([0, 1, 2, 3, 4])
    feats = batch["audio_features"]
    for i, n in enumerate(lengths):  # each sound alone, unpadded: the encoder is exactly padding invariant
        with torch.no_grad():
            alone = model.audio_encoder(split.images.load(i)[None])
        real = int(alone.mask.sum())
        assert int(feats.mask[i].sum()) == real == -(-n // 80)  # frames centred on real samples, 10 ms hop
        torch.testing.assert_close(feats.pooled[i], alone.pooled[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(feats.tokens[i, :real], alone.tokens[0, :real], atol=1e-5, rtol=0)
    assert feats.tokens.shape[1] == 30  # the longest sound's real frames (the all-padding column is dropped)

    again = _audio_model()
    cache2 = FeatureCache(again, settings, {"audio": AUDIO_CONFIG})
    cache2.wrap({"train": split})
    assert again.encoded_samples == {"audio": 0} and report_of(cache2) == {"train/audio": "hit"}

    changed = _audio_model(n_mels=8)  # another front end: another key
    cache3 = FeatureCache(changed, settings, {"audio": {**AUDIO_CONFIG, "n_mels": 8}})
    cache3.wrap({"train": split})
    assert changed.encoded_samples == {"audio": 5} and report_of(cache3) == {"train/audio": "built"}


def report_of(cache: FeatureCache) -> dict[str, str]:
    return {f"{split}/{side}": info["status"] for split, sides in cache.report.items() for side, info in sides.items()}
