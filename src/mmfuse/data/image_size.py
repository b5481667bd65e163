"""An image's size from its header, and the pixel limit checked before decoding.

``sniff(head) -> "jpeg" | "png" | "gif" | "webp" | None``: the format from the file's first 12 bytes.

``header_size(f) -> ImageSize(width, height, frames) | None`` reads the header of a JPEG, PNG, GIF or
WebP file (a binary file object, read from its start: an open file or ``io.BytesIO``), never the pixels,
and only of a file whose signature ``sniff`` knows (a JPEG starts ``FF D8 FF``):
- JPEG: the first start-of-frame segment (SOF0-SOF15 but DHT, JPG and DAC), reached by skipping
  segments by their length (a seek, not a read); bytes between segments are skipped as libjpeg skips
  them, so both find the same frame. The scan is bounded: it reads at most ``SCAN_READ_LIMIT`` bytes
  (1 MiB, in ``SCAN_CHUNK`` reads of 4 KiB) and looks at ``SCAN_MARKERS`` markers (4,096) at most, so a
  crafted file (64 MB of stray bytes or of empty segments) costs 1 MiB of reading, not a scan of the
  file; a segment longer than what is buffered costs one 4 KiB read after the seek, so up to 255 full
  64 KB segments of EXIF / ICC / XMP data (16 MB) before the frame header are fine. None when the
  scan reaches start-of-scan, the end of the file or a bound first;
- PNG: the ``IHDR`` chunk (torchvision decodes an APNG's first frame only);
- GIF: the logical screen and ``frames``, the count of image descriptors: torchvision decodes every
  frame onto the screen (``[frames, 3, H, W]``), so the decoder holds ``frames x width x height``
  pixels. Counted by walking the blocks, each data sub-block skipped by its length byte; the walk
  takes ``GIF_STEPS`` sub-blocks at most (2**20: 255 MB of a GIF written with the usual 255-byte
  sub-blocks) and is None past it. A truncated GIF counts the frames before its end;
- WebP: the ``VP8X`` canvas, or the ``VP8`` / ``VP8L`` frame size of a simple file (torchvision
  refuses an animated WebP).
``frames`` is 1 for all but GIF.

``too_many_pixels(size, max_pixels)``: the reason an image of ``frames x width x height`` pixels is
refused (more than ``max_pixels``), or None. A 10,000 x 10,000 JPEG decodes to 300 MB of RGB and peaks
near 900 MB in the transform; the limit (``data.max_pixels``, ``None``: none) stops it before decoding.
PIL is not involved: its DecompressionBomb limits neither pre-empt nor bypass this one.
"""

from __future__ import annotations

import re
import struct
import sys
from typing import BinaryIO, NamedTuple

from mmfuse.errors import MMFuseError

DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP (e.g. 7,300 x 5,500), 100x COCO's largest images (640 x 640)
NO_SIZE = ("no image size in its header (not a JPEG, PNG, GIF or WebP file, a corrupt one, or one whose "
           "header runs past the scan's bound: mmfuse.data.image_size)")

SCAN_CHUNK = 4096
SCAN_READ_LIMIT = 1 << 20
SCAN_MARKERS = 4096
GIF_CHUNK = 64 << 10
GIF_STEPS = 1 << 20

_SIGNATURES = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
}
_JPEG_NOT_SOF = {0xC4, 0xC8, 0xCC}  # DHT, JPG (reserved), DAC share the SOF range
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length
_FF = re.compile(rb"\xff")
_NOT_FF = re.compile(rb"[^\xff]")


class ImageSize(NamedTuple):
    width: int
    height: int
    frames: int = 1


def sniff(head: bytes) -> str | None:
    """The format whose signature starts ``head`` (at least 12 bytes of the file), or None."""
    for signature, kind in _SIGNATURES.items():
        if head.startswith(signature):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def header_size(f: BinaryIO) -> ImageSize | None:
    """The size in the header of the image file ``f`` (see the module docstring), or None."""
    f.seek(0)
    head = f.read(32)
    kind = sniff(head)
    if kind == "png" and head[12:16] == b"IHDR" and len(head) >= 24:
        return ImageSize(*struct.unpack(">II", head[16:24]))
    if kind == "gif":
        return _gif_size(f)
    if kind == "webp":
        return _webp_size(head)
    if kind == "jpeg":
        return _jpeg_size(f)
    return None


class _Reader:
    """Reads ``f`` forward from offset ``pos`` in ``chunk``-byte reads, ``limit`` bytes in all at most;
    ``skip`` moves on without reading (the next read seeks)."""

    def __init__(self, f: BinaryIO, pos: int, chunk: int, limit: int) -> None:
        self.f, self.pos, self.chunk, self.left = f, pos, chunk, limit
        self.buf, self.start = b"", pos  # buf holds the file's bytes from offset start

    def _more(self) -> bool:
        """Read the chunk at ``pos`` (the buffer is used up); False at the end of the file or the limit."""
        if self.left <= 0:
            return False
        self.f.seek(self.pos)
        self.buf, self.start = self.f.read(min(self.chunk, self.left)), self.pos
        self.left -= len(self.buf)
        return bool(self.buf)

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end of the file or the limit)."""
        out = b""
        while len(out) < n:
            if self.pos - self.start >= len(self.buf) and not self._more():
                break
            i = self.pos - self.start
            part = self.buf[i:i + n - len(out)]
            out += part
            self.pos += len(part)
        return out

    def skip(self, n: int) -> None:
        self.pos += n

    def find(self, pattern: re.Pattern[bytes]) -> int | None:
        """Move to the next byte that ``pattern`` matches and return it (not consumed), or None."""
        while True:
            i = self.pos - self.start
            if i < len(self.buf):
                found = pattern.search(self.buf, i)
                if found:
                    self.pos = self.start + found.start()
                    return self.buf[found.start()]
                self.pos = self.start + len(self.buf)
            if not self._more():
                return None

    def skip_sub_blocks(self, steps: int) -> int | None:
        """Skip a chain of sub-blocks (a length byte, that many bytes; a 0 ends it) in ``steps``
        length bytes at most: the steps left after it, -1 when they run out first, None at the end
        of the file."""
        while True:
            i, buf = self.pos - self.start, self.buf
            while i < len(buf):
                if steps <= 0:
                    return -1
                steps -= 1
                if buf[i] == 0:
                    self.pos = self.start + i + 1
                    return steps
                i += buf[i] + 1
            self.pos = self.start + i
            if not self._more():
                return None


def _jpeg_size(f: BinaryIO) -> ImageSize | None:
    r = _Reader(f, 2, SCAN_CHUNK, SCAN_READ_LIMIT)
    for _ in range(SCAN_MARKERS):
        if r.find(_FF) is None:  # stray bytes before a marker
            return None
        marker = r.find(_NOT_FF)  # after the fill bytes
        if marker is None:
            return None
        r.skip(1)
        if marker == 0x00 or marker in _JPEG_STANDALONE:  # a stuffed 0xFF data byte, or no length
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = r.take(2)
        if len(length) < 2 or (size := struct.unpack(">H", length)[0]) < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in _JPEG_NOT_SOF:
            frame = r.take(5)  # precision, height, width
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return ImageSize(width, height)
        r.skip(size - 2)
    return None


def _gif_size(f: BinaryIO) -> ImageSize | None:
    r = _Reader(f, 0, GIF_CHUNK, sys.maxsize)  # bounded by GIF_STEPS (and the file)
    head = r.take(13)  # signature, logical screen descriptor
    if len(head) < 13:
        return None
    width, height, flags = struct.unpack("<HHB", head[6:11])
    if flags & 0x80:  # global colour table of 2 ** (n + 1) RGB entries
        r.skip(3 << ((flags & 7) + 1))
    frames, steps = 0, GIF_STEPS
    while (block := r.take(1)) not in (b";", b""):  # up to the trailer, or the end of a truncated file
        if block == b",":  # image descriptor: position, size, flags; local colour table; LZW code size
            descriptor = r.take(9)
            if len(descriptor) < 9:
                break
            frames += 1
            if descriptor[8] & 0x80:
                r.skip(3 << ((descriptor[8] & 7) + 1))
            r.skip(1)
        elif block == b"!":  # extension: its label
            r.skip(1)
        else:
            return None  # not a GIF block: corrupt
        steps = r.skip_sub_blocks(steps)
        if steps is None:  # a truncated file
            break
        if steps < 0:
            return None
    return ImageSize(width, height, max(frames, 1))


def _webp_size(head: bytes) -> ImageSize | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:  # canvas width - 1, height - 1: 24 bits each
        return ImageSize(1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little"))
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a" and len(head) >= 30:  # key frame start code
        w, h = struct.unpack("<HH", head[26:30])
        return ImageSize(w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L" and head[20:21] == b"\x2f" and len(head) >= 25:  # 14 bits each, minus one
        bits = int.from_bytes(head[21:25], "little")
        return ImageSize(1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
    return None


def too_many_pixels(size: tuple[int, ...], max_pixels: int | None) -> str | None:
    """Why an image of ``size`` (``(width, height)`` or an ``ImageSize``) is refused under
    ``max_pixels``, or None."""
    width, height = size[:2]
    frames = size[2] if len(size) > 2 else 1
    pixels = frames * width * height
    if max_pixels is None or pixels <= max_pixels:
        return None
    what = f"{width} x {height}" if frames == 1 else f"{frames} frames of {width} x {height}"
    return (f"too many pixels ({what} = {pixels:,} > data.max_pixels={max_pixels:,}; "
            f"Fix: data.max_pixels={pixels} or null for no limit, or shrink the image)")


def check_max_pixels(value: object) -> int | None:
    """``data.max_pixels`` as an int (or None for no limit); anything else is an ``MMFuseError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MMFuseError(f"data.max_pixels={value!r}: expected a positive number of pixels (e.g. "
                          f"data.max_pixels={DEFAULT_MAX_PIXELS}) or null for no limit")
    return value
