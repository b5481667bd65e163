"""An image's width and height from its header, and the pixel limit checked before decoding.

``header_size(f) -> (width, height) | None`` reads only the header of a JPEG, PNG, GIF or WebP file
(a binary file object: an open file or ``io.BytesIO``), never the pixels:
- JPEG: the first start-of-frame segment (SOF0-SOF15 but DHT, JPG and DAC), reached by skipping
  segments by their length; bytes between segments are skipped as libjpeg skips them, so both find
  the same frame. None when the scan reaches start-of-scan or the end of the file first;
- PNG: the ``IHDR`` chunk; GIF: the logical screen (every frame is drawn onto it); WebP: the
  ``VP8X`` canvas, or the ``VP8`` / ``VP8L`` frame size of a simple file.

``too_many_pixels((w, h), max_pixels)``: the reason an image of ``w x h`` is refused
(``w * h > max_pixels``), or None. A 10,000 x 10,000 JPEG decodes to 300 MB of RGB and peaks near
900 MB in the transform; the limit (``data.max_pixels``, ``None``: none) stops it before decoding.
PIL is not involved: its DecompressionBomb limits neither pre-empt nor bypass this one.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from mmfuse.errors import MMFuseError

DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP (e.g. 7,300 x 5,500), 100x COCO's largest images (640 x 640)

_JPEG_NOT_SOF = {0xC4, 0xC8, 0xCC}  # DHT, JPG (reserved), DAC share the SOF range
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length


def header_size(f: BinaryIO) -> tuple[int, int] | None:
    """``(width, height)`` from the header of the image file ``f`` (see the module docstring)."""
    head = f.read(32)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        f.seek(2)
        return _jpeg_size(f)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:  # canvas width - 1, height - 1: 24 bits each
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a" and len(head) >= 30:  # key frame start code
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and head[20:21] == b"\x2f" and len(head) >= 25:  # 14 bits each, minus one
        bits = int.from_bytes(head[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def _jpeg_size(f: BinaryIO) -> tuple[int, int] | None:
    while True:
        byte = f.read(1)
        while byte and byte != b"\xff":  # stray bytes before a marker
            byte = f.read(1)
        while byte == b"\xff":  # fill bytes
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker == 0x00 or marker in _JPEG_STANDALONE:  # a stuffed 0xFF data byte, or no length
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = f.read(2)
        if len(length) < 2:
            return None
        size = struct.unpack(">H", length)[0]
        if size < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in _JPEG_NOT_SOF:
            frame = f.read(5)  # precision, height, width
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        f.seek(size - 2, 1)


def too_many_pixels(size: tuple[int, int], max_pixels: int | None) -> str | None:
    """Why an image of ``size = (width, height)`` is refused under ``max_pixels``, or None."""
    width, height = size
    if max_pixels is None or width * height <= max_pixels:
        return None
    return (f"too many pixels ({width} x {height} = {width * height:,} > data.max_pixels={max_pixels:,}; "
            f"Fix: data.max_pixels={width * height} or null for no limit, or shrink the image)")


def check_max_pixels(value: object) -> int | None:
    """``data.max_pixels`` as an int (or None for no limit); anything else is an ``MMFuseError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MMFuseError(f"data.max_pixels={value!r}: expected a positive number of pixels (e.g. "
                          f"data.max_pixels={DEFAULT_MAX_PIXELS}) or null for no limit")
    return value
