"""Video and audio files in data=jsonl, and data=msrvtt (the MSR-VTT 1k-A retrieval layout).

Every clip and sound is written into ``tmp_path`` with ``test_media_files``' helpers (PyAV / ``wave``):
frame ``k`` of a clip has the colour (20k, 255 - 20k, 128), which ``frame_numbers`` reads back, so a
batch says exactly which frames were decoded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from test_media_files import FIX, frame_numbers, sine, write_video, write_wav

from mmfuse.builder import build_datamodule, build_module
from mmfuse.data.audio_files import read_audio
from mmfuse.errors import MMFuseError, user_error
from mmfuse.train import train

SMALL = ("debug=fast", "data.image_size=32", "data.num_workers=0", "data.batch_size=8")
VIDEO = ("encoder.image=none", "encoder.video=tiny_cnn")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    """``tmp_path/data``: clips/v0..v2.mp4 (12 frames at 12 fps), train.jsonl and val.jsonl over them."""
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    for k in range(3):
        write_video(root / "clips" / f"v{k}.mp4", n=12)
    records = [{"video": f"clips/v{k}.mp4", "text": f"clip number {k}"} for k in range(3)]
    write_jsonl(root / "train.jsonl", records)
    write_jsonl(root / "val.jsonl", records)
    return root


def datamodule(cfg):
    module = build_module(cfg)
    dm = build_datamodule(cfg, module)
    dm.setup()
    return dm


def unnormalise(video: torch.Tensor) -> torch.Tensor:
    """tiny_cnn's transform ``(x / 255 - 0.5) / 0.25`` undone (frames are already 32 x 32)."""
    return (video * 0.25 + 0.5) * 255


# ---- video records -------------------------------------------------------------------------------

def test_jsonl_video_records_train_end_to_end(make_cfg, clips):
    cfg = make_cfg("data=jsonl", f"data.root={clips}", *VIDEO, "task=retrieval", *SMALL)
    assert cfg.encoder.video.frames == 8  # no data.frames here: the default
    results = train(cfg)
    assert results["status"] == "completed"
    assert results["metrics"]["val/i2t_r10"] == 100.0  # 3 clips: every clip is within the top 10
    dm = datamodule(make_cfg("data=jsonl", f"data.root={clips}", *VIDEO, "task=retrieval", *SMALL, subdir="again"))
    assert dm.modalities == ("video", "text")
    assert dm.describe()["train"]["images"] == 3 and dm.describe()["modalities"] == ["video", "text"]
    batch = dm.splits["train"].__getitems__([2, 0])
    assert batch["video"].shape == (2, 8, 3, 32, 32) and batch["video"].dtype == torch.float32
    assert batch["image_id"].tolist() == [2, 0] and batch["text_id"].tolist() == [2, 0]
    assert "image" not in batch and "audio" not in batch
    assert [frame_numbers(unnormalise(v)) for v in batch["video"]] == [[0, 2, 3, 5, 6, 8, 9, 11]] * 2


@pytest.mark.parametrize(("overrides", "frames"), [
    ((), [1, 4, 7, 10]),  # uniform: the centre of each of 4 segments of 12
    (("encoder.video.sampling=stride", "encoder.video.stride=3"), [0, 3, 6, 9]),
    (("encoder.video.sampling=stride",), [0, 1, 2, 3]),
    (("encoder.video.sampling=stride", "encoder.video.fps=6"), [0, 2, 4, 6]),  # 12 fps -> 6 fps
])
def test_frames_and_sampling_reach_the_decoder(make_cfg, clips, overrides, frames):
    cfg = make_cfg("data=jsonl", f"data.root={clips}", *VIDEO, "task=retrieval", *SMALL,
                   "encoder.video.frames=4", *overrides)
    dm = datamodule(cfg)
    t = dm.transforms["video"]
    assert (t.frames, t.sampling) == (4, cfg.encoder.video.sampling)
    video = dm.splits["val"][1]["video"]
    assert video.shape == (4, 3, 32, 32)
    assert frame_numbers(unnormalise(video)) == frames


def test_encoder_frames_follow_data_frames_on_embedded_clips(make_cfg):
    assert make_cfg("data=shapes_video", "data.frames=6").encoder.video.frames == 6
    assert make_cfg("data=shapes_video", "data.frames=6", "encoder.video.frames=4", subdir="b").encoder.video.frames == 4


def test_a_sampling_setting_that_cannot_work_is_refused_at_build(make_cfg, clips):
    cfg = make_cfg("data=jsonl", f"data.root={clips}", *VIDEO, "task=retrieval", *SMALL, "encoder.video.fps=10")
    with pytest.raises(Exception) as e:  # Hydra's InstantiationException, raised from the MMFuseError
        build_module(cfg)
    assert str(user_error(e.value)) == ("encoder.video: sampling=uniform spreads frames=8 over the whole clip; fps=10 / "
                            "stride=None apply to sampling=stride. Fix: unset them or use sampling=stride")


# ---- audio records and mixed items ------------------------------------------------------------------

@pytest.fixture
def sounds(tmp_path: Path) -> Path:
    """``tmp_path/av``: a.wav (0.5 s), b.wav (0.25 s) at 8 kHz, p0.png / p1.png, and jsonl files."""
    from torchvision.io import write_png

    root = tmp_path / "av"
    root.mkdir()
    write_wav(root / "a.wav", sine(4000, 8000, 440, 0.5)[None])
    write_wav(root / "b.wav", sine(2000, 8000, 880, 0.5)[None])
    for k in range(2):
        write_png(torch.full((3, 32, 32), 60 * k + 30, dtype=torch.uint8), str(root / f"p{k}.png"))
    sound = [{"audio": "a.wav", "text": "a low tone"}, {"audio": "b.wav", "text": "a high tone"}]
    write_jsonl(root / "train.jsonl", sound)
    write_jsonl(root / "val.jsonl", sound)
    mixed = [{"image": f"p{k}.png", "audio": w, "text": t, "label": k}
             for k, (w, t) in enumerate([("a.wav", "dark, low"), ("b.wav", "light, high")])]
    write_jsonl(root / "mixed.jsonl", mixed)
    return root


def test_jsonl_audio_records_are_padded_with_a_mask(make_cfg, sounds):
    cfg = make_cfg("data=jsonl", f"data.root={sounds}", "encoder.image=none", "encoder.audio=logmel_cnn",
                   "task=retrieval", *SMALL)  # logmel_cnn reads 16 kHz: the 8 kHz files are resampled
    dm = datamodule(cfg)
    assert dm.modalities == ("audio", "text")
    batch = dm.splits["train"].__getitems__([0, 1])
    assert batch["audio"].shape == (2, 8000) and batch["audio_mask"].dtype == torch.bool
    assert batch["audio_mask"].sum(1).tolist() == [8000, 4000]
    assert torch.equal(batch["audio"][0], read_audio(sounds / "a.wav", 16000))
    assert torch.equal(batch["audio"][1, :4000], read_audio(sounds / "b.wav", 16000))
    assert not batch["audio"][1, 4000:].any()
    assert batch["image_id"].tolist() == [0, 1]


def test_audio_max_seconds_keeps_the_start(make_cfg, sounds):
    cfg = make_cfg("data=jsonl", f"data.root={sounds}", "encoder.image=none", "encoder.audio=logmel_cnn",
                   "task=retrieval", *SMALL, "data.audio_max_seconds=0.1")
    batch = datamodule(cfg).splits["train"].__getitems__([0, 1])
    assert batch["audio"].shape == (2, 1600) and batch["audio_mask"].all()


def test_jsonl_image_and_audio_records_train_a_classifier(make_cfg, sounds):
    cfg = make_cfg("data=jsonl", f"data.root={sounds}", "encoder.audio=logmel_cnn", "task=classification",
                   "data.labels=multiclass", "data.num_classes=2", "data.train=mixed.jsonl",
                   "data.val=mixed.jsonl", *SMALL)
    dm = datamodule(cfg)
    assert dm.modalities == ("image", "audio", "text")
    batch = dm.splits["train"].__getitems__([1, 0])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["audio"].shape == (2, 8000)
    assert (batch["image"][:, 0, 0, 0] * 0.25 + 0.5).mul(255).round().tolist() == [90.0, 30.0]
    assert batch["audio_mask"].sum(1).tolist() == [4000, 8000] and batch["target"].tolist() == [1, 0]
    assert train(cfg)["status"] == "completed"


# ---- bad files -------------------------------------------------------------------------------------

@pytest.fixture
def bad_clips(clips: Path) -> Path:
    """``clips`` plus a missing clip, a text file, a cut-off mp4, a clip of zero frames and a video
    named as a sound (no audio stream)."""
    (clips / "clips" / "text.mp4").write_text("not a video")
    full = (clips / "clips" / "v0.mp4").read_bytes()
    (clips / "clips" / "cut.mp4").write_bytes(full[:10])
    write_video(clips / "clips" / "empty.avi", n=0, container_format="avi")
    names = ["v0.mp4", "gone.mp4", "text.mp4", "cut.mp4", "empty.avi", "v2.mp4"]
    write_jsonl(clips / "train.jsonl", [{"video": f"clips/{n}", "text": f"clip {n}"} for n in names])
    return clips


def test_bad_video_files_stop_the_run_before_training(make_cfg, bad_clips):
    cfg = make_cfg("data=jsonl", f"data.root={bad_clips}", *VIDEO, "task=retrieval", *SMALL)
    with pytest.raises(MMFuseError) as e:
        datamodule(cfg)
    c = bad_clips / "clips"
    invalid = "([Errno 1094995529] Invalid data found when processing input: '{}'). " + FIX
    assert str(e.value).splitlines() == [
        f"data=jsonl, train split: 4 bad record(s) in {bad_clips / 'train.jsonl'}:",
        f"  video 'clips/gone.mp4' (line 2) ({c / 'gone.mp4'}, 1 caption(s)): no such file. Fix: correct "
        "the record's 'video' path (relative paths are under data.root) or drop the record",
        f"  video 'clips/text.mp4' (line 3) ({c / 'text.mp4'}, 1 caption(s)): not a video FFmpeg can "
        f"open, or truncated {invalid.format(c / 'text.mp4')}",
        f"  video 'clips/cut.mp4' (line 4) ({c / 'cut.mp4'}, 1 caption(s)): not a video FFmpeg can "
        f"open, or truncated {invalid.format(c / 'cut.mp4')}",
        f"  video 'clips/empty.avi' (line 5) ({c / 'empty.avi'}, 1 caption(s)): the video stream has "
        f"zero frames. {FIX}",
        "Fix: repair or remove them, or set data.on_bad_sample=skip to leave them out (their count goes into "
        "results.json).",
    ]


def test_bad_video_files_are_skipped_and_counted(make_cfg, bad_clips):
    dm = datamodule(make_cfg("data=jsonl", f"data.root={bad_clips}", *VIDEO, "task=retrieval", *SMALL,
                             "data.on_bad_sample=skip"))
    train_stats = dm.describe()["train"]
    assert (train_stats["images"], train_stats["captions"], train_stats["skipped"]["count"]) == (2, 2, 4)
    assert dm.split("train").captions == ["clip v0.mp4", "clip v2.mp4"]


def test_verify_none_checks_only_that_files_exist(make_cfg, bad_clips, caplog):
    dm = datamodule(make_cfg("data=jsonl", f"data.root={bad_clips}", *VIDEO, "task=retrieval", *SMALL,
                             "data.on_bad_sample=skip", "data.verify_images=none"))
    assert dm.describe()["train"]["skipped"]["by_reason"] == {"missing video file": 1}
    with caplog.at_level(logging.WARNING, logger="mmfuse.data.media"):
        batch = dm.splits["train"].__getitems__([0, 1, 2, 3, 4])  # 0 and 4 are good; 1..3 fail to decode
    assert batch["image_id"].tolist() == [0, 4] and batch["video"].shape[0] == 2
    c = bad_clips / "clips"
    assert dm.describe()["train"]["failed_at_load"] == [str(c / n) for n in ("text.mp4", "cut.mp4", "empty.avi")]
    assert [r.getMessage().split(": ")[0] for r in caplog.records if r.name == "mmfuse.data.media"] == [
        f"skipping the pairs of {c / n} in this batch" for n in ("text.mp4", "cut.mp4", "empty.avi")]


def test_bad_audio_files_and_paths(make_cfg, sounds):
    write_video(sounds / "silent.mp4", n=2)
    records = [{"audio": "a.wav", "text": "fine"}, {"audio": "silent.mp4", "text": "no sound"},
               {"audio": "../a.wav", "text": "outside"}, {"audio": 3, "text": "a number"}, {"text": "nothing"}]
    write_jsonl(sounds / "train.jsonl", records)
    cfg = make_cfg("data=jsonl", f"data.root={sounds}", "encoder.image=none", "encoder.audio=logmel_cnn",
                   "task=retrieval", *SMALL)
    with pytest.raises(MMFuseError) as e:
        datamodule(cfg)
    assert str(e.value).splitlines()[1:5] == [  # records are read (lines 3-5), then files checked (line 2)
        "  line 5: missing key(s) ['audio']",
        "  line 3: audio path outside the audio folder ('../a.wav' has a '..' component; paths are relative "
        f"to {sounds})",
        "  line 4: audio and text must be strings",
        f"  audio 'silent.mp4' (line 2) ({sounds / 'silent.mp4'}, 1 caption(s)): no audio stream "
        "(streams: video). Fix: give a file with sound, or drop the record",
    ]


def test_image_records_keep_the_image_path(make_cfg, tmp_path):
    from torchvision.io import write_png

    root = tmp_path / "img"
    root.mkdir()
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(root / "p.png"))
    write_jsonl(root / "train.jsonl", [{"image": "p.png", "text": "black", "video": 1}, {"image": "p.png", "text": "x"}])
    write_jsonl(root / "val.jsonl", [{"image": "p.png", "text": "black"}])
    cfg = make_cfg("data=jsonl", f"data.root={root}", "task=retrieval", *SMALL, "data.video_key=clip")
    dm = datamodule(cfg)
    assert dm.modalities == ("image", "text")
    assert type(dm.splits["train"]).__name__ == "FilePairDataset"
    assert "modalities" not in dm.describe()


# ---- data=msrvtt ----------------------------------------------------------------------------------

def msrvtt_folder(root: Path) -> Path:
    """A tiny MSR-VTT in ``root``: train videos video0..2 (2 captions each), test videos video7 / video8."""
    (root / "videos" / "all").mkdir(parents=True)
    for v in (0, 1, 2, 7, 8):
        write_video(root / "videos" / "all" / f"video{v}.mp4", n=6)
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\nvideo2\n")
    (root / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr7,video7,a cat jumps\nret1,msr8,video8,a man cooks pasta\n")
    sentences = [{"sen_id": 10 * v + j, "video_id": f"video{v}", "caption": f"caption {j} of video{v}"}
                 for v in (0, 1, 2, 7, 8) for j in range(2)]
    data = {"videos": [{"id": v, "video_id": f"video{v}"} for v in (0, 1, 2, 7, 8)], "sentences": sentences}
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def msrvtt(tmp_path: Path) -> Path:
    return msrvtt_folder(tmp_path / "msrvtt")


def test_msrvtt_pairs(make_cfg, msrvtt):
    cfg = make_cfg("data=msrvtt", f"data.root={msrvtt}", "task=retrieval", *SMALL, "encoder.video.frames=2")
    assert (cfg.encoder.image._target_, cfg.encoder.video.frame._target_) == (None, "mmfuse.encoders.tiny_cnn.TinyCNN")
    dm = datamodule(cfg)
    train_split, test_split = dm.split("train"), dm.split("test")
    assert [str(i) for i in train_split.images] == [str(msrvtt / "videos" / "all" / f"video{v}.mp4") for v in (0, 1, 2)]
    assert train_split.captions == [f"caption {j} of video{v}" for v in (0, 1, 2) for j in range(2)]
    assert train_split.caption_image == [0, 0, 1, 1, 2, 2]
    assert train_split.caption_keys == [f"sentence {10 * v + j}" for v in (0, 1, 2) for j in range(2)]
    assert test_split.captions == ["a cat jumps", "a man cooks pasta"] and test_split.caption_image == [0, 1]
    assert dm.split("val").captions == test_split.captions
    batch = dm.splits["train"].__getitems__([5, 0])
    assert batch["video"].shape == (2, 2, 3, 32, 32) and batch["image_id"].tolist() == [2, 0]
    assert frame_numbers(unnormalise(batch["video"][0])) == [1, 4]  # uniform over 6 frames


def test_msrvtt_trains(make_cfg, msrvtt):
    cfg = make_cfg("data=msrvtt", f"data.root={msrvtt}", "task=retrieval", *SMALL, "encoder.video.frames=2")
    assert train(cfg)["status"] == "completed"


def test_msrvtt_missing_video_and_unknown_video(make_cfg, msrvtt):
    (msrvtt / "videos" / "all" / "video1.mp4").unlink()
    data = json.loads((msrvtt / "MSRVTT_data.json").read_text())
    data["sentences"].append({"sen_id": 99, "video_id": "video99", "caption": "nobody's video"})
    (msrvtt / "MSRVTT_data.json").write_text(json.dumps(data))
    cfg = make_cfg("data=msrvtt", f"data.root={msrvtt}", "task=retrieval", *SMALL)
    with pytest.raises(MMFuseError) as e:
        datamodule(cfg)
    video1 = msrvtt / "videos" / "all" / "video1.mp4"
    assert str(e.value).splitlines()[:3] == [
        f"data=msrvtt, train split: 2 bad record(s) in {msrvtt / 'MSRVTT_train.9k.csv'} and "
        f"{msrvtt / 'MSRVTT_data.json'}:",
        "  sentence 99: caption for an unknown video 'video99' (not among the videos of MSRVTT_data.json)",
        f"  video 'video1' ({video1}, 2 caption(s)): no such file. Fix: correct the record's "
        "'video_id' path (relative paths are under data.root) or drop the record",
    ]
    skip = datamodule(make_cfg("data=msrvtt", f"data.root={msrvtt}", "task=retrieval", *SMALL,
                               "data.on_bad_sample=skip", subdir="skip"))
    assert skip.split("train").captions == [f"caption {j} of video{v}" for v in (0, 2) for j in range(2)]
    assert skip.describe()["train"]["skipped"]["count"] == 2


def test_msrvtt_file_without_its_column(make_cfg, msrvtt):
    (msrvtt / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id\nret0,msr7,video7\n")
    with pytest.raises(MMFuseError) as e:
        datamodule(make_cfg("data=msrvtt", f"data.root={msrvtt}", "task=retrieval", *SMALL))
    assert str(e.value) == (f"{msrvtt / 'MSRVTT_JSFUSION_test.csv'}: no column(s) ['sentence'] (header: ['key', "
                            "'vid_key', 'video_id']). Fix: point data.train_csv / data.test_csv at the MSR-VTT csv files")
