"""Audio stored as files (WAV, FLAC, MP3, ..., or the soundtrack of a video), decoded to a mono waveform.

``read_audio(path, sample_rate)`` decodes the first audio stream with PyAV (FFmpeg: any container and
codec it knows), converts it to float samples in [-1, 1] (FFmpeg's ``fltp``: an int16 sample ``s`` is
``s / 32768``), mixes the channels to mono by their mean and resamples to ``sample_rate`` with
``torchaudio.functional.resample`` (``resample``). ``max_seconds`` keeps the first seconds only and
stops decoding there.

A bad file is an ``MMFuseError`` of one line naming the file, the record field (``field``) and the fix:
missing, not a file FFmpeg can open (or truncated inside its header), no audio stream, no samples
(empty, or truncated before the first). A file that decodes fewer samples than its header claims (a
truncated WAV; a corrupt packet: it is decoded, and decoding stops after it) gives what decodes, with a
warning.
"""

from __future__ import annotations

import logging
import math
import struct
from pathlib import Path

import torch

from mmfuse.errors import MMFuseError

log = logging.getLogger(__name__)


def read_audio(path: str | Path, sample_rate: int, field: str = "audio",
               max_seconds: float | None = None) -> torch.Tensor:
    """``float32 [S]``: the file's first audio stream, mono, at ``sample_rate`` Hz.

    ``S = ceil(n * sample_rate / rate)`` for ``n`` decoded samples at the file's ``rate``; with
    ``max_seconds``, ``n`` is at most ``ceil(max_seconds * rate)`` and ``S`` at most
    ``floor(max_seconds * sample_rate)``.
    """
    import av

    _check_rate(sample_rate, "sample_rate")
    if max_seconds is not None and not max_seconds > 0:
        raise MMFuseError(f"max_seconds={max_seconds!r}: expected a positive duration (or None: the whole file)")
    path = Path(path)
    if not path.is_file():
        raise MMFuseError(f"{path} ({field}): no such file. Fix: correct the record's {field!r} path "
                          "(relative paths are under data.root) or drop the record")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise MMFuseError(f"{path} ({field}): not an audio or video file FFmpeg can open, or truncated "
                          f"({_last_line(e)}). Fix: re-encode or replace the file, or drop the record") from e
    with container:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise MMFuseError(f"{path} ({field}): no audio stream (streams: {', '.join(kinds)}). Fix: give a "
                              "file with sound, or drop the record")
        stream = container.streams.audio[0]
        rate = stream.rate
        limit = None if max_seconds is None else math.ceil(max_seconds * rate)
        chunks, stopped = _decode_mono(av, container, stream, limit)
    wave = torch.cat(chunks) if chunks else torch.zeros(0)
    if limit is not None:
        wave = wave[:limit]
    if wave.numel() == 0:
        raise MMFuseError(f"{path} ({field}): no audio samples decode ({stopped or 'the stream ended'}: empty or truncated). "
                          "Fix: re-encode or replace the file, or drop the record")
    claimed = _wav_claimed_samples(path)
    if stopped or (limit is None and claimed is not None and wave.numel() < claimed):
        log.warning("%s (%s): decoded %d samples%s (%s); using those", path, field, wave.numel(),
                    f" of the {claimed} its header claims" if claimed else "", stopped or "the file ends early")
    wave = resample(wave, rate, sample_rate)
    if max_seconds is not None:
        wave = wave[:math.floor(max_seconds * sample_rate + 1e-9)]
    return wave


def resample(wave: torch.Tensor, rate: int, sample_rate: int) -> torch.Tensor:
    """``wave [..., S]`` at ``rate`` Hz resampled to ``sample_rate`` Hz: ``torchaudio.functional.resample``
    (a windowed-sinc filter; ``ceil(S * sample_rate / rate)`` samples out), ``wave`` itself when equal."""
    _check_rate(rate, "rate")
    _check_rate(sample_rate, "sample_rate")
    if rate == sample_rate:
        return wave
    import torchaudio.functional

    return torchaudio.functional.resample(wave, rate, sample_rate)


def _decode_mono(av, container, stream, limit: int | None) -> tuple[list[torch.Tensor], str | None]:
    """The stream as mono float32 chunks (channel mean), up to ``limit`` samples; and why decoding stopped
    early (None: the stream ended, or ``limit`` was reached)."""
    to_float = av.AudioResampler(format="fltp")  # planar float: [channels, samples], layout and rate kept
    chunks: list[torch.Tensor] = []
    total, stopped = 0, None
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:  # decoded (the whole samples of a cut PCM packet are good), then the end
                stopped = f"a corrupt or truncated packet after {total} samples"
            for frame in stream.decode(packet):
                for planar in to_float.resample(frame):
                    chunk = torch.from_numpy(planar.to_ndarray()).mean(dim=0)
                    chunks.append(chunk)
                    total += chunk.numel()
                if limit is not None and total >= limit:
                    return chunks, None
            if stopped:
                break
    except av.error.FFmpegError as e:
        stopped = f"FFmpeg: {_last_line(e)}"
    for planar in to_float.resample(None):
        chunks.append(torch.from_numpy(planar.to_ndarray()).mean(dim=0))
    return chunks, stopped


def _wav_claimed_samples(path: Path) -> int | None:
    """The samples per channel a RIFF/WAVE header's ``data`` chunk claims (its size / block align), else None.

    FFmpeg shortens a truncated WAV's duration to the bytes present, so the claim is read here."""
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind == b"fmt ":
                fmt = f.read(size)
                if len(fmt) < 14:
                    return None
                block_align = struct.unpack("<H", fmt[12:14])[0]
                f.seek(size % 2, 1)
            elif kind == b"data":  # 0 / 0xFFFFFFFF: a stream written without knowing its length
                return size // block_align if block_align and 0 < size < 0xFFFFFFFF else None
            else:
                f.seek(size + size % 2, 1)  # chunks are padded to an even size


def _check_rate(value: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MMFuseError(f"{name}={value!r}: expected a positive integer sample rate in Hz")


def _last_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
