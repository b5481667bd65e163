"""Videos stored as files, decoded into ``uint8 [T, 3, H, W]`` RGB frames.

``sample_frame_indices`` chooses which T frames of an N-frame clip a model sees (``uniform`` or
``stride``); ``read_video`` decodes those frames only. The decoder (``decoder=``) is torchcodec
(``torchcodec.decoders.VideoDecoder``, seeks to the frames it is asked for) where it runs, PyAV
otherwise: ``auto`` tries torchcodec and falls back to PyAV when torchcodec is not installed, cannot
load FFmpeg's libraries, or fails on the file (PyAV then names the problem or decodes what it can);
``torchcodec`` / ``pyav`` force one. PyAV decodes sequentially from the start, keeps the wanted
frames and stops after the last one, so a long clip is never held in memory.

A bad file is an ``MMFuseError`` of one line that names the file, the record field it came from
(``field``) and the fix: missing, not a video or truncated before its first frame (FFmpeg cannot open
it, or it has no video stream), zero frames. A file that decodes fewer frames than its container
claims (truncated, or a corrupt packet: decoding stops at the first one) is sampled from the frames
that decode, with a warning; only a file of which no frame decodes fails.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from mmfuse.errors import MMFuseError

log = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "stride")
DECODERS = ("auto", "torchcodec", "pyav")


def sample_frame_indices(num_frames: int, frames: int, sampling: str, video_fps: float | None,
                         fps: float | None, stride: int | None = None) -> list[int]:
    """The indices (0-based, ascending) of the ``frames`` frames to take from a clip of ``num_frames``.

    - ``uniform`` (TSN / CLIP4Clip): the clip is cut into ``frames`` equal segments and the centre frame
      of each is taken: ``i_k = floor((k + 1/2) * N / T)`` for ``k = 0 .. T-1`` (N = ``num_frames``,
      T = ``frames``). It spans the whole clip whatever its length; a clip shorter than T frames gives
      each of its frames about T / N times, in order. ``fps`` and ``stride`` must be unset.
    - ``stride``: frames from the start, ``i_k = k * stride``; with ``fps`` instead of ``stride`` the
      stride that resamples ``video_fps`` to ``fps``, ``i_k = floor(k * video_fps / fps)`` (the frame
      on screen at time ``k / fps``, for a constant frame rate; a fractional stride such as 25 -> 10
      fps is kept exact, an ``fps`` above ``video_fps`` repeats frames). Neither: stride 1 (T
      consecutive frames). The first T such indices; a clip shorter than needed repeats its last
      index: ``i_k = min(i_k, N - 1)``.
    """
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise MMFuseError(f"frames={frames!r}: the number of frames to sample must be a positive integer")
    if not isinstance(num_frames, int) or num_frames < 1:
        raise MMFuseError(f"a clip of {num_frames!r} frames has no frame to sample")
    if sampling == "uniform":
        if fps is not None or stride is not None:
            raise MMFuseError(f"sampling=uniform spreads frames={frames} over the whole clip; fps={fps} / "
                              f"stride={stride} apply to sampling=stride. Fix: unset them or use sampling=stride")
        return [(2 * k + 1) * num_frames // (2 * frames) for k in range(frames)]
    if sampling != "stride":
        raise MMFuseError(f"sampling={sampling!r}: expected one of {', '.join(SAMPLINGS)}")
    if stride is not None and fps is not None:
        raise MMFuseError(f"stride={stride} and fps={fps} both set: give one (fps picks the stride from the "
                          "video's own frame rate)")
    if fps is not None:
        if not fps > 0:
            raise MMFuseError(f"fps={fps!r}: expected a positive frame rate")
        if video_fps is None or not video_fps > 0:
            raise MMFuseError(f"fps={fps} needs the video's frame rate, which this file does not give. "
                              "Fix: sample with stride= instead of fps=")
        step = video_fps / fps
        # 1e-9: k * 30 / 10 computed in floats must not floor to just below an exact integer
        indices = [math.floor(k * step + 1e-9) for k in range(frames)]
    else:
        if stride is None:
            stride = 1
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise MMFuseError(f"stride={stride!r}: expected a positive integer (1 = consecutive frames)")
        indices = [k * stride for k in range(frames)]
    return [min(i, num_frames - 1) for i in indices]


def read_video(path: str | Path, frames: int = 8, sampling: str = "uniform", fps: float | None = None,
               stride: int | None = None, decoder: str = "auto", field: str = "video") -> torch.Tensor:
    """``uint8 [frames, 3, H, W]`` RGB: the frames ``sample_frame_indices`` picks, in order.

    ``field`` names where ``path`` came from (a record's field) in the errors; see the module docstring
    for the decoders and the bad files.
    """
    if decoder not in DECODERS:
        raise MMFuseError(f"decoder={decoder!r}: expected one of {', '.join(DECODERS)}")
    sample_frame_indices(1, frames, sampling, 30.0, fps, stride)  # a bad setting fails before any file
    path = _existing(path, field)
    if decoder != "pyav":
        video_decoder = _torchcodec_decoder(required=decoder == "torchcodec")
        if video_decoder is not None:
            try:
                return _read_torchcodec(video_decoder, path, frames, sampling, fps, stride, field)
            except MMFuseError:
                raise
            except Exception as e:
                if decoder == "torchcodec":
                    raise MMFuseError(f"{path} ({field}): torchcodec cannot decode it ({_last_line(e)}). "
                                      "Fix: re-encode or replace the file, or decoder=pyav") from e
                log.debug("torchcodec failed on %s (%s); decoding with PyAV", path, _last_line(e))
    return _read_pyav(path, frames, sampling, fps, stride, field)


def probe_video(path: str | Path, field: str = "video") -> tuple[int, float | None, int, int]:
    """``(num_frames, fps, height, width)`` from the container (PyAV, nothing decoded).

    ``num_frames`` is the container's frame count, or the count of its video packets when it does not
    store one (Matroska, WebM); ``fps`` the stream's average rate, None when unknown.
    """
    import av

    path = _existing(path, field)
    with _open(av, path, field) as container:
        stream = _video_stream(container, path, field)
        return (_claimed_frames(av, path, stream), _rate(stream), stream.codec_context.height,
                stream.codec_context.width)


def _existing(path: str | Path, field: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MMFuseError(f"{path} ({field}): no such file. Fix: correct the record's {field!r} path "
                          "(relative paths are under data.root) or drop the record")
    return path


def _torchcodec_decoder(required: bool):
    """``torchcodec.decoders.VideoDecoder``, or None when it cannot run here (not installed, or its
    FFmpeg libraries cannot be loaded: an ImportError / RuntimeError / OSError at import)."""
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as e:
        if required:
            raise MMFuseError(f"decoder=torchcodec, but torchcodec cannot run here ({_last_line(e)}). Fix: "
                              "install torchcodec and the FFmpeg libraries it needs, or decoder=pyav / auto") from e
        return None
    return VideoDecoder


def _read_torchcodec(video_decoder, path: Path, frames: int, sampling: str, fps: float | None,
                     stride: int | None, field: str) -> torch.Tensor:
    dec = video_decoder(str(path), dimension_order="NCHW")
    num_frames = len(dec)
    if num_frames == 0:
        raise _no_frames(path, field)
    indices = sample_frame_indices(num_frames, frames, sampling, dec.metadata.average_fps, fps, stride)
    return dec.get_frames_at(indices=indices).data


def _read_pyav(path: Path, frames: int, sampling: str, fps: float | None, stride: int | None,
               field: str) -> torch.Tensor:
    import av

    with _open(av, path, field) as container:
        stream = _video_stream(container, path, field)
        claimed, rate = _claimed_frames(av, path, stream), _rate(stream)
        if claimed == 0:
            raise _no_frames(path, field)
        indices = sample_frame_indices(claimed, frames, sampling, rate, fps, stride)
        kept, decoded, stopped = _decode(av, container, stream, set(indices))
    if decoded <= indices[-1]:  # decoding ended before the last wanted frame: sample what decodes
        if decoded == 0:
            raise MMFuseError(f"{path} ({field}): no frame decodes ({stopped}; the container claims "
                              f"{claimed}). Fix: re-encode or replace the file, or drop the record")
        log.warning("%s (%s): %d of the %d frames its container claims decode (%s); sampling from those",
                    path, field, decoded, claimed, stopped)
        indices = sample_frame_indices(decoded, frames, sampling, rate, fps, stride)
        with _open(av, path, field) as container:
            kept, _, _ = _decode(av, container, _video_stream(container, path, field), set(indices))
    return torch.stack([kept[i] for i in indices])


def _decode(av, container, stream, wanted: set[int]) -> tuple[dict[int, torch.Tensor], int, str]:
    """Decode from the start until the last of ``wanted``: ``({index: uint8 [3, H, W]}, frames decoded,
    why decoding stopped)``. A corrupt (truncated) packet or an FFmpeg error ends it."""
    stream.thread_type = "AUTO"
    last, kept, count, stopped = max(wanted), {}, 0, "the stream ended"

    def keep(frame) -> bool:
        nonlocal count
        if count in wanted:
            kept[count] = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
        count += 1
        return count > last

    try:
        for number, packet in enumerate(container.demux(stream)):
            if packet.is_corrupt:
                stopped = f"video packet {number} is corrupt or truncated"
                packet = None  # flush the frames the decoder holds, then stop
            for frame in stream.decode(packet):
                if keep(frame):
                    return kept, count, stopped
            if packet is None:
                break
    except av.error.FFmpegError as e:
        stopped = f"FFmpeg: {_last_line(e)}"
    return kept, count, stopped


def _open(av, path: Path, field: str):
    try:
        return av.open(str(path))
    except av.error.FFmpegError as e:
        raise MMFuseError(f"{path} ({field}): not a video FFmpeg can open, or truncated ({_last_line(e)}). "
                          "Fix: re-encode or replace the file, or drop the record") from e


def _video_stream(container, path: Path, field: str):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise MMFuseError(f"{path} ({field}): no video stream (streams: {', '.join(kinds)}). Fix: re-encode "
                          "or replace the file, or drop the record")
    return container.streams.video[0]


def _claimed_frames(av, path: Path, stream) -> int:
    """The container's frame count; counted from the video packets (no decoding) when it has none."""
    if stream.frames:
        return stream.frames
    count = 0
    with av.open(str(path)) as container:
        try:
            for packet in container.demux(container.streams.video[0]):
                if packet.is_corrupt:
                    break
                count += packet.size > 0
        except av.error.FFmpegError:
            pass  # the packets before the error are what a decoder can reach
    return count


def _rate(stream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _no_frames(path: Path, field: str) -> MMFuseError:
    return MMFuseError(f"{path} ({field}): the video stream has zero frames. Fix: re-encode or replace the "
                       "file, or drop the record")


def _last_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
