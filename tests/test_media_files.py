"""Decoding video and audio files: frame sampling, PyAV / torchcodec, resampling, and bad files.

Every file is written here, into ``tmp_path``, with PyAV's own encoders (FFmpeg bundled) or the stdlib
``wave`` module. Frame ``k`` of a test video is the colour (20k, 255 - 20k, 128) with a little fixed
noise (so that intra frames are large enough for an MP4 cut in half to keep some of them), and
``frame_numbers`` reads ``k`` back from the decoded frames' mean colour.
"""

from __future__ import annotations

import logging
import sys
import types
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from mmfuse.data.audio_files import read_audio, resample
from mmfuse.data.video_files import probe_video, read_video, sample_frame_indices
from mmfuse.errors import MMFuseError

FIX = "Fix: re-encode or replace the file, or drop the record"


def write_video(path: Path, n: int = 12, fps: int = 12, size: int = 32, options: dict | None = None,
                container_format: str | None = None, audio: np.ndarray | None = None) -> Path:
    """An MPEG-4 Part 2 clip of ``n`` intra frames (frame k: colour (20k, 255 - 20k, 128) + noise of +-16),
    with ``audio`` (int16 mono at 8 kHz) as a PCM soundtrack when given."""
    rng = np.random.default_rng(0)
    container = av.open(str(path), "w", format=container_format, options=options or {})
    stream = container.add_stream("mpeg4", rate=fps, options={"qmin": "2", "qmax": "3"})
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.codec_context.gop_size = 1
    if audio is not None:
        sound = container.add_stream("pcm_s16le", rate=8000)
        sound.layout = "mono"
    if n == 0:
        container.start_encoding()
    for k in range(n):
        rgb = np.empty((size, size, 3), np.int16)
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = 20 * k, 255 - 20 * k, 128
        rgb = np.clip(rgb + rng.integers(-16, 17, rgb.shape), 0, 255).astype(np.uint8)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    if audio is not None:
        frame = av.AudioFrame.from_ndarray(audio[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(sound.encode(frame))
        container.mux(sound.encode())
    container.mux(stream.encode())
    container.close()
    return path


def frame_numbers(video: torch.Tensor) -> list[int]:
    """``k`` of each frame ``[T, 3, H, W]``, from its mean colour; asserts the colour is frame k's
    (RGB order included) within the codec's error."""
    mean = video.double().mean(dim=(2, 3))
    numbers = (mean[:, 0] / 20).round().long().tolist()
    expected = torch.tensor([[20.0 * k, 255.0 - 20 * k, 128.0] for k in numbers], dtype=torch.double)
    assert (mean - expected).abs().max() <= 8, (mean, expected)
    return numbers


def packet_ends(path: Path) -> list[int]:
    """The byte offset where each video packet of ``path`` ends."""
    with av.open(str(path)) as container:
        return [p.pos + p.size for p in container.demux(video=0) if p.size]


def sine(n: int, rate: int, hz: float, amplitude: float) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(n) / rate) * 32767).round().astype(np.int16)


def write_wav(path: Path, channels: np.ndarray, rate: int = 8000) -> Path:
    """``channels`` int16 ``[C, n]`` as a 16-bit PCM WAV (stdlib ``wave``)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(channels.T.astype("<i2").tobytes())
    return path


@pytest.fixture
def stereo() -> np.ndarray:
    """0.5 s of 440 Hz at 8 kHz: left at amplitude 0.5, right at 0.25 (int16 [2, 4000])."""
    return np.stack([sine(4000, 8000, 440, 0.5), sine(4000, 8000, 440, 0.25)])


# ---- frame sampling --------------------------------------------------------------------------------

@pytest.mark.parametrize(("num_frames", "frames", "expected"), [
    (12, 4, [1, 4, 7, 10]),
    (12, 12, list(range(12))),
    (10, 4, [1, 3, 6, 8]),
    (100, 8, [6, 18, 31, 43, 56, 68, 81, 93]),
    (3, 8, [0, 0, 0, 1, 1, 2, 2, 2]),  # shorter than asked: each frame about T / N times, in order
    (1, 3, [0, 0, 0]),
])
def test_uniform_takes_the_centre_of_each_segment(num_frames, frames, expected):
    assert sample_frame_indices(num_frames, frames, "uniform", 30.0, None) == expected


@pytest.mark.parametrize(("num_frames", "frames", "video_fps", "fps", "stride", "expected"), [
    (12, 4, 12.0, None, 3, [0, 3, 6, 9]),
    (12, 4, 12.0, None, None, [0, 1, 2, 3]),  # stride 1 by default
    (12, 4, 12.0, None, 4, [0, 4, 8, 11]),  # 12 is past the clip: its last index repeats
    (5, 4, 12.0, None, 2, [0, 2, 4, 4]),
    (2, 4, None, None, 1, [0, 1, 1, 1]),
    (100, 4, 30.0, 10.0, None, [0, 3, 6, 9]),
    (100, 4, 25.0, 10.0, None, [0, 2, 5, 7]),  # a fractional stride (2.5) stays exact
    (100, 4, 12.0, 24.0, None, [0, 0, 1, 1]),  # a higher fps than the video's repeats frames
    (100, 3, 29.97, 29.97, None, [0, 1, 2]),
])
def test_stride_and_fps_sampling(num_frames, frames, video_fps, fps, stride, expected):
    assert sample_frame_indices(num_frames, frames, "stride", video_fps, fps, stride) == expected


@pytest.mark.parametrize(("args", "message"), [
    ((12, 0, "uniform", 30.0, None), "frames=0: the number of frames to sample must be a positive integer"),
    ((12, 4, "random", 30.0, None), "sampling='random': expected one of uniform, stride"),
    ((12, 4, "uniform", 30.0, 10.0), "sampling=uniform spreads frames=4 over the whole clip; fps=10.0 / "
                                     "stride=None apply to sampling=stride. Fix: unset them or use sampling=stride"),
    ((12, 4, "stride", 30.0, 10.0, 2), "stride=2 and fps=10.0 both set: give one (fps picks the stride from "
                                       "the video's own frame rate)"),
    ((12, 4, "stride", None, 10.0), "fps=10.0 needs the video's frame rate, which this file does not give. "
                                    "Fix: sample with stride= instead of fps="),
    ((12, 4, "stride", 30.0, None, 0), "stride=0: expected a positive integer (1 = consecutive frames)"),
    ((0, 4, "stride", 30.0, None), "a clip of 0 frames has no frame to sample"),
])
def test_sampling_settings_that_cannot_work_are_refused(args, message):
    with pytest.raises(MMFuseError) as e:
        sample_frame_indices(*args)
    assert str(e.value) == message


# ---- video decoding (PyAV here: torchcodec is not installed) ---------------------------------------

def test_read_video_returns_the_sampled_frames(tmp_path):
    path = write_video(tmp_path / "clip.mp4")
    assert probe_video(path) == (12, 12.0, 32, 32)
    video = read_video(path, frames=4)
    assert video.shape == (4, 3, 32, 32) and video.dtype == torch.uint8
    assert frame_numbers(video) == [1, 4, 7, 10]
    assert frame_numbers(read_video(path, frames=4, sampling="stride", stride=3, decoder="pyav")) == [0, 3, 6, 9]
    assert frame_numbers(read_video(path, frames=4, sampling="stride", stride=5)) == [0, 5, 10, 11]
    assert frame_numbers(read_video(path, frames=5, sampling="stride", fps=6.0)) == [0, 2, 4, 6, 8]
    assert frame_numbers(read_video(path, frames=16)) == [0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9, 10, 10, 11]


def test_a_container_without_a_frame_count_is_counted(tmp_path):
    """Matroska stores no frame count: the video packets are counted (nothing decoded)."""
    path = write_video(tmp_path / "clip.mkv", n=6)
    assert probe_video(path) == (6, 12.0, 32, 32)
    assert frame_numbers(read_video(path, frames=3)) == [1, 3, 5]


def test_an_mp4_cut_in_half_gives_the_frames_that_decode(tmp_path, caplog):
    """With its index first (faststart), half an MP4 still claims 12 frames; those whose packet is whole
    decode, the cut one does not, and the frames are sampled from the whole ones."""
    full = write_video(tmp_path / "full.mp4", options={"movflags": "+faststart"})
    data = full.read_bytes()
    cut = len(data) // 2
    whole = sum(end <= cut for end in packet_ends(full))
    assert 2 <= whole <= 10  # the cut falls inside the frames, not in the index
    half = tmp_path / "half.mp4"
    half.write_bytes(data[:cut])
    with caplog.at_level(logging.WARNING, logger="mmfuse.data.video_files"):
        video = read_video(half, frames=4)
    assert frame_numbers(video) == sample_frame_indices(whole, 4, "uniform", 12.0, None)
    assert caplog.messages == [f"{half} (video): {whole} of the 12 frames its container claims decode "
                               f"(video packet {whole} is corrupt or truncated); sampling from those"]
    assert frame_numbers(read_video(half, frames=3, sampling="stride", stride=4)) == [
        min(i, whole - 1) for i in (0, 4, 8)]


def test_an_mp4_cut_before_its_first_whole_frame_fails(tmp_path):
    full = write_video(tmp_path / "full.mp4", options={"movflags": "+faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[:packet_ends(full)[0] - 1])
    with pytest.raises(MMFuseError) as e:
        read_video(cut, field="clip")
    assert str(e.value) == (f"{cut} (clip): no frame decodes (video packet 0 is corrupt or truncated; the "
                            f"container claims 12). {FIX}")


def test_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    full = write_video(tmp_path / "full.mp4")  # index at the end, as the MP4 muxer writes by default
    half, tiny, text = tmp_path / "half.mp4", tmp_path / "tiny.mp4", tmp_path / "notes.mp4"
    half.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
    tiny.write_bytes(full.read_bytes()[:10])
    text.write_text("not a video\n")
    sound = write_wav(tmp_path / "sound.wav", np.zeros((1, 80), np.int16))
    cases = {
        half: f"{half} (video): not a video FFmpeg can open, or truncated ([Errno 1094995529] Invalid data "
              f"found when processing input: '{half}'). {FIX}",  # its index (moov) was in the lost half
        sound: f"{sound} (video): no video stream (streams: audio). {FIX}",
        tiny: f"{tiny} (video): not a video FFmpeg can open, or truncated ([Errno 1094995529] Invalid data "
              f"found when processing input: '{tiny}'). {FIX}",
        text: f"{text} (video): not a video FFmpeg can open, or truncated ([Errno 1094995529] Invalid data "
              f"found when processing input: '{text}'). {FIX}",
        tmp_path / "gone.mp4": f"{tmp_path / 'gone.mp4'} (video): no such file. Fix: correct the record's "
                               "'video' path (relative paths are under data.root) or drop the record",
        write_video(tmp_path / "empty.avi", n=0, container_format="avi"):
            f"{tmp_path / 'empty.avi'} (video): the video stream has zero frames. {FIX}",
    }
    for path, message in cases.items():
        with pytest.raises(MMFuseError) as e:
            read_video(path, frames=2)
        assert str(e.value) == message
        assert "\n" not in message


def test_decoder_choice(tmp_path, monkeypatch):
    """``auto`` takes torchcodec when it imports (here a stand-in that records its calls), falls back to
    PyAV when it fails on a file; ``torchcodec`` forced gives its failure as the error."""
    path = write_video(tmp_path / "clip.mp4")
    calls = []

    class VideoDecoder:
        def __init__(self, source, dimension_order):
            calls.append((source, dimension_order))
            if source.endswith("bad.mp4"):
                raise RuntimeError("stand-in cannot decode\nthis")
            self.metadata = types.SimpleNamespace(average_fps=12.0)

        def __len__(self):
            return 12

        def get_frames_at(self, indices):
            calls.append(indices)
            return types.SimpleNamespace(data=torch.stack([torch.full((3, 2, 2), i, dtype=torch.uint8)
                                                           for i in indices]))

    package = types.ModuleType("torchcodec")
    package.decoders = types.SimpleNamespace(VideoDecoder=VideoDecoder)
    monkeypatch.setitem(sys.modules, "torchcodec", package)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", package.decoders)
    video = read_video(path, frames=4)
    assert video[:, 0, 0, 0].tolist() == [1, 4, 7, 10] and calls == [(str(path), "NCHW"), [1, 4, 7, 10]]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(path.read_bytes())
    assert frame_numbers(read_video(bad, frames=4)) == [1, 4, 7, 10]  # auto: PyAV decoded it
    assert frame_numbers(read_video(path, frames=4, decoder="pyav")) == [1, 4, 7, 10]
    with pytest.raises(MMFuseError) as e:
        read_video(bad, decoder="torchcodec")
    assert str(e.value) == (f"{bad} (video): torchcodec cannot decode it (this). Fix: re-encode or replace "
                            "the file, or decoder=pyav")
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.delitem(sys.modules, "torchcodec.decoders")
    assert frame_numbers(read_video(path, frames=4)) == [1, 4, 7, 10]  # auto: torchcodec absent
    with pytest.raises(MMFuseError) as e:
        read_video(path, decoder="torchcodec")
    assert str(e.value) == ("decoder=torchcodec, but torchcodec cannot run here (No module named "
                            "'torchcodec.decoders'; 'torchcodec' is not a package). Fix: install torchcodec and the FFmpeg libraries it needs, "
                            "or decoder=pyav / auto")

    class NoFFmpeg(types.ModuleType):  # torchcodec installed without FFmpeg's libraries fails on import
        def __getattr__(self, name):
            raise RuntimeError("Could not load libtorchcodec.\nFFmpeg libraries not found")

    monkeypatch.setitem(sys.modules, "torchcodec", types.ModuleType("torchcodec"))
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", NoFFmpeg("torchcodec.decoders"))
    assert frame_numbers(read_video(path, frames=4)) == [1, 4, 7, 10]
    with pytest.raises(MMFuseError) as e:
        read_video(path, decoder="torchcodec")
    assert str(e.value).startswith("decoder=torchcodec, but torchcodec cannot run here (FFmpeg libraries not "
                                   "found). Fix:")
    with pytest.raises(MMFuseError) as e:
        read_video(path, decoder="opencv")
    assert str(e.value) == "decoder='opencv': expected one of auto, torchcodec, pyav"


# ---- audio -----------------------------------------------------------------------------------------

def test_read_audio_mixes_to_mono_and_resamples(tmp_path, stereo):
    path = write_wav(tmp_path / "tone.wav", stereo)
    native = read_audio(path, 8000)
    assert native.dtype == torch.float32 and native.shape == (4000,)
    mono = torch.from_numpy(stereo.astype(np.float64).mean(axis=0) / 32768).float()
    assert torch.equal(native, mono)  # s / 32768 per channel, then the channel mean
    wave16k = read_audio(path, 16000)
    assert wave16k.shape == (8000,)
    spectrum = torch.fft.rfft(wave16k).abs()  # 8000 samples at 16 kHz: bins of 2 Hz, 440 Hz is bin 220
    assert abs(int(spectrum.argmax()) - 220) <= 1
    assert read_audio(path, 16000, max_seconds=0.25).shape == (4000,)
    assert torch.allclose(read_audio(path, 16000, max_seconds=0.25), wave16k[:4000], atol=0.02)
    assert read_audio(path, 8000, max_seconds=0.1).shape == (800,)


def test_resample():
    wave = torch.randn(4000)
    assert resample(wave, 8000, 8000) is wave
    assert resample(wave, 8000, 16000).shape == (8000,)
    assert resample(wave, 16000, 8000).shape == (2000,)
    with pytest.raises(MMFuseError) as e:
        resample(wave, 0, 8000)
    assert str(e.value) == "rate=0: expected a positive integer sample rate in Hz"


def test_audio_of_flac_and_of_a_video_file(tmp_path, stereo):
    flac = tmp_path / "tone.flac"
    with av.open(str(flac), "w") as container:
        stream = container.add_stream("flac", rate=8000)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(stereo.T.reshape(1, -1).copy(), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert torch.equal(read_audio(flac, 8000), read_audio(write_wav(tmp_path / "tone.wav", stereo), 8000))
    clip = write_video(tmp_path / "clip.mkv", n=6, audio=stereo[0])
    sound = read_audio(clip, 16000)
    assert sound.shape == (8000,) and abs(int(torch.fft.rfft(sound).abs().argmax()) - 220) <= 1
    assert frame_numbers(read_video(clip, frames=3)) == [1, 3, 5]
    silent = write_video(tmp_path / "silent.mp4", n=2)
    with pytest.raises(MMFuseError) as e:
        read_audio(silent, 16000, field="soundtrack")
    assert str(e.value) == (f"{silent} (soundtrack): no audio stream (streams: video). Fix: give a file with "
                            "sound, or drop the record")


def test_a_truncated_wav_gives_what_is_there(tmp_path, stereo, caplog):
    data = write_wav(tmp_path / "tone.wav", stereo).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:44 + 1000 * 4])  # the 44-byte header and 1000 of the 4000 stereo int16 frames
    with caplog.at_level(logging.WARNING, logger="mmfuse.data.audio_files"):
        wave16k = read_audio(cut, 16000)
    assert wave16k.shape == (2000,)
    assert torch.equal(read_audio(cut, 8000), read_audio(tmp_path / "tone.wav", 8000)[:1000])
    assert caplog.messages[0] == (f"{cut} (audio): decoded 1000 samples of the 4000 its header claims (a "
                                  "corrupt or truncated packet after 512 samples); using those")


def test_bad_audio_files_are_one_line_errors(tmp_path, stereo):
    data = write_wav(tmp_path / "tone.wav", stereo).read_bytes()
    header, tiny = tmp_path / "header.wav", tmp_path / "tiny.wav"
    header.write_bytes(data[:44])
    tiny.write_bytes(data[:10])
    cases = {
        header: f"{header} (audio): no audio samples decode (the stream ended: empty or truncated). {FIX}",
        tiny: f"{tiny} (audio): not an audio or video file FFmpeg can open, or truncated ([Errno 1094995529] "
              f"Invalid data found when processing input: '{tiny}'). {FIX}",
        tmp_path / "gone.wav": f"{tmp_path / 'gone.wav'} (audio): no such file. Fix: correct the record's "
                               "'audio' path (relative paths are under data.root) or drop the record",
    }
    for path, message in cases.items():
        with pytest.raises(MMFuseError) as e:
            read_audio(path, 16000)
        assert str(e.value) == message
    with pytest.raises(MMFuseError) as e:
        read_audio(tmp_path / "tone.wav", 16000, max_seconds=0)
    assert str(e.value) == "max_seconds=0: expected a positive duration (or None: the whole file)"
