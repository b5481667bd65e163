"""``mmfuse.data.image_size``: sizes read from the headers of files PIL writes (compared with PIL's),
truncated and malformed input, the bounds of the JPEG and GIF scans (bytes read, counted), the
frames of an animated GIF against ``data.max_pixels``, whole reasons for files with long paths."""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmfuse.data import image_size
from mmfuse.data.image_size import NO_SIZE, SCAN_CHUNK, SCAN_MARKERS, SCAN_READ_LIMIT, ImageSize, header_size
from mmfuse.data.images import FilePairDataset, ImageFiles
from mmfuse.data.validation import check_image_file, decode_error
from mmfuse.errors import MMFuseError


class Counting:
    """A binary file object that counts the bytes read through it."""

    def __init__(self, f) -> None:
        self.f, self.bytes_read = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.bytes_read += len(data)
        return data

    def seek(self, *args) -> int:
        return self.f.seek(*args)

    def tell(self) -> int:
        return self.f.tell()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def size_of(data: bytes) -> ImageSize | None:
    return header_size(io.BytesIO(data))


def picture(mode: str = "RGB", size: tuple[int, int] = (37, 23)) -> Image.Image:
    image = Image.linear_gradient("L").resize(size)
    if mode == "RGBA":  # an alpha channel that is not all opaque (WebP keeps it: a VP8X file)
        return Image.merge("RGBA", (image, image, image, image.transpose(Image.Transpose.ROTATE_90).resize(size)))
    return image.convert(mode)


def frames(n: int, size: tuple[int, int]) -> list[Image.Image]:
    return [Image.new("RGB", size, (20 * i % 256, 255 - 5 * i, 40)) for i in range(n)]


# -- sizes of real files, against PIL ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt, mode, kw, chunk", [
    ("PNG", "RGB", {}, None), ("PNG", "L", {}, None), ("PNG", "RGBA", {}, None), ("PNG", "P", {}, None),
    ("GIF", "P", {}, None), ("GIF", "RGB", {"interlace": True}, None),
    ("WEBP", "RGB", {"quality": 80}, b"VP8 "), ("WEBP", "RGB", {"lossless": True}, b"VP8L"),
    ("WEBP", "RGBA", {"quality": 80}, b"VP8X"), ("WEBP", "RGB", {"quality": 80, "exif": b"Exif\0\0II*\0"}, b"VP8X"),
    ("JPEG", "RGB", {}, None), ("JPEG", "L", {}, None), ("JPEG", "RGB", {"progressive": True}, None),
    ("JPEG", "CMYK", {}, None),
])
@pytest.mark.parametrize("size", [(37, 23), (1, 1), (640, 427)])
def test_the_header_gives_the_size_pil_reports(fmt, mode, kw, chunk, size):
    data = encoded(picture(mode, size), fmt, **kw)
    if chunk is not None:
        assert data[12:16] == chunk  # the WebP flavour meant
    assert size_of(data) == ImageSize(*Image.open(io.BytesIO(data)).size, 1) == ImageSize(*size, 1)


def test_a_jpeg_with_exif_and_an_icc_profile_before_its_frame_header():
    exif = Image.Exif()
    exif[0x010F] = "maker " * 2000  # 12 KB of EXIF (APP1)
    data = encoded(picture("RGB", (301, 97)), "JPEG", exif=exif.tobytes(), icc_profile=b"\0" * 150_000)
    sof = data.index(b"\xff\xc0")
    assert data.index(b"Exif") < sof and data.count(b"ICC_PROFILE") == 3 and sof > 150_000  # 3 APP2 segments
    with Counting(io.BytesIO(data)) as f:
        assert header_size(f) == ImageSize(301, 97) and Image.open(io.BytesIO(data)).size == (301, 97)
    # the head, then a read at APP0 and after each skipped segment (EXIF, 3 x ICC): 18 KB, not 150 KB
    assert f.bytes_read == 32 + 4 * SCAN_CHUNK + min(SCAN_CHUNK, len(data) - data.index(b"\xff\xdb"))


def test_an_animated_gif_counts_its_frames():
    data = encoded(frames(1, (40, 30))[0], "GIF", save_all=True, append_images=frames(12, (40, 30))[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 12
    assert size_of(data) == ImageSize(40, 30, 12)
    with_comment = encoded(frames(1, (40, 30))[0], "GIF", save_all=True, append_images=frames(3, (40, 30))[1:],
                           comment=b"c" * 1000, loop=0)  # comment and application extensions
    assert size_of(with_comment) == ImageSize(40, 30, 3)


# -- truncated and malformed input --------------------------------------------------------------------------


def test_truncated_files_give_no_size_or_the_true_one():
    sources = {"PNG": encoded(picture(), "PNG"), "GIF": encoded(picture(), "GIF"),
               "WEBP": encoded(picture(), "WEBP"), "JPEG": encoded(picture(), "JPEG")}
    for fmt, data in sources.items():
        sizes = {n: size_of(data[:n]) for n in range(len(data) + 1)}
        first = min(n for n, s in sizes.items() if s is not None)
        assert all(sizes[n] is None for n in range(first)), fmt
        assert all(sizes[n] == ImageSize(37, 23) for n in range(first, len(data) + 1)), fmt
        assert first == (data.index(b"\xff\xc0") + 9 if fmt == "JPEG" else {"PNG": 24, "GIF": 13, "WEBP": 30}[fmt])


def test_a_gif_cut_between_frames_counts_the_frames_before_the_cut():
    data = encoded(frames(1, (40, 30))[0], "GIF", save_all=True, append_images=frames(5, (40, 30))[1:])
    descriptors = [i for i in range(len(data)) if data[i:i + 1] == b"," and data[i + 5:i + 9] == b"(\0\x1e\0"]
    assert len(descriptors) == 5
    assert [size_of(data[:i]).frames for i in descriptors] == [1, 1, 2, 3, 4]  # at least the screen's pixels
    assert size_of(data[:descriptors[3] + 10]).frames == 4


def jpeg(*segments: bytes) -> bytes:
    return b"\xff\xd8" + b"".join(segments) + b"\xff\xd9"


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


SOF0 = segment(0xC0, struct.pack(">BHHB", 8, 24, 32, 1) + b"\x01\x11\x00")  # 32 x 24
APP0 = segment(0xE0, b"JFIF\0\1\1\0\0\1\0\1\0\0")


def test_malformed_jpegs():
    assert size_of(jpeg(SOF0)) == ImageSize(32, 24)
    assert size_of(jpeg(segment(0xC4, b"\0" * 20), SOF0)) == ImageSize(32, 24)  # DHT is not a frame header
    assert size_of(jpeg(APP0, b"\0\0junk\xff\xff\xff", SOF0)) == ImageSize(32, 24)  # stray and fill bytes, as libjpeg
    assert size_of(jpeg(APP0, b"\xff\x00\xff\xd0", SOF0)) == ImageSize(32, 24)  # stuffed byte, RST0: no length
    assert size_of(jpeg(segment(0xDA, b"\0" * 10), SOF0)) is None  # start of scan before the frame header
    assert size_of(b"\xff\xd8\xff\xd9" + SOF0) is None  # end of image first
    assert size_of(b"\xff\xd8\xff\xe0\x00\x01" + SOF0) is None  # a segment length below 2
    assert size_of(b"\xff\xd8\xff\xc0\x00\x11\x08\x00") is None  # frame header cut short
    assert size_of(b"\xff\xd8\xff\xe0\xff\xff") is None  # a segment past the end of the file
    assert size_of(b"\xff\xd8\x00" + SOF0) is None  # not a JPEG signature (FF D8 FF): not scanned
    assert size_of(b"") is None and size_of(b"BM" + b"\0" * 60) is None


def test_malformed_gifs_and_webps():
    screen = b"GIF89a" + struct.pack("<HHBBB", 40, 30, 0, 0, 0)
    assert size_of(screen + b";") == ImageSize(40, 30, 1)  # no image: the screen still counts once
    assert size_of(screen + b"\x99") is None  # not a GIF block
    assert size_of(screen + b",\0\0\0\0\x28\0\x1e\0\0\x02\x05") == ImageSize(40, 30, 1)  # cut inside a sub-block
    webp = encoded(picture(), "WEBP", quality=80)
    assert size_of(webp[:23] + b"\0\0\0" + webp[26:]) is None  # VP8 without its key frame start code
    lossless = encoded(picture(), "WEBP", lossless=True)
    assert size_of(lossless[:20] + b"\0" + lossless[21:]) is None  # VP8L without its signature byte


# -- the bounds of the scans: bytes read, counted ------------------------------------------------------------


def sparse_file(path: Path, prefix: bytes, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(prefix)
        f.truncate(size)
    return path


def test_a_64_mb_jpeg_of_stray_bytes_is_read_up_to_the_bound(tmp_path):
    path = sparse_file(tmp_path / "stray.jpg", b"\xff\xd8\xff\xe0\x00\x02", 64 << 20)  # then 64 MB of zeros
    with Counting(open(path, "rb")) as f:
        assert header_size(f) is None
    assert f.bytes_read == 32 + SCAN_READ_LIMIT  # the head, then 1 MiB of the scan: not 64 MB


def test_16_mb_of_empty_segments_stop_at_the_marker_bound(tmp_path):
    data = b"\xff\xd8" + b"\xff\xe0\x00\x02" * (4 << 20) + SOF0  # 4M empty APP0 segments, then a frame
    with Counting(io.BytesIO(data)) as f:
        assert header_size(f) is None
    assert f.bytes_read == 32 + SCAN_MARKERS * 4  # 4,096 markers of 4 bytes, in 4 KiB reads


def test_large_segments_are_skipped_by_seeking_up_to_the_read_bound():
    big = segment(0xE1, b"\0" * 65_533)  # a full-size APP1 segment, 64 KB
    below = jpeg(*[big] * 200, SOF0)  # 13 MB of metadata before the frame header
    with Counting(io.BytesIO(below)) as f:
        assert header_size(f) == ImageSize(32, 24)
    assert f.bytes_read == 32 + 200 * SCAN_CHUNK + len(SOF0) + 2  # a read after each skip: 800 KB, not 13 MB
    assert size_of(jpeg(*[big] * 255, SOF0)) == ImageSize(32, 24)  # 256 reads of 4 KiB make 1 MiB: the bound
    assert size_of(jpeg(*[big] * 256, SOF0)) is None


def test_the_gif_walk_stops_at_its_bound(monkeypatch):
    data = encoded(frames(1, (40, 30))[0], "GIF", save_all=True, append_images=frames(20, (40, 30))[1:])
    assert size_of(data) == ImageSize(40, 30, 20)
    monkeypatch.setattr(image_size, "GIF_STEPS", 30)  # fewer sub-blocks than the file has
    assert size_of(data) is None


def test_a_file_sniff_refuses_is_not_scanned(tmp_path, monkeypatch):
    path = sparse_file(tmp_path / "fake.jpg", b"\xff\xd8\x00", 64 << 20)  # FF D8 without FF: not a JPEG
    opened = []
    monkeypatch.setattr("mmfuse.data.validation.open", lambda *a: opened.append(Counting(open(*a))) or opened[-1],
                        raising=False)
    assert check_image_file(path) == "not an image (unknown file signature; expected JPEG, PNG, GIF or WebP)"
    assert [f.bytes_read for f in opened] == [16]


# -- the frames of an animated GIF count against data.max_pixels ----------------------------------------------


def test_an_animated_gif_is_refused_by_its_frames_and_loads_as_its_first_frame(tmp_path, monkeypatch):
    gif = tmp_path / "anim.gif"
    gif.write_bytes(encoded(frames(1, (400, 300))[0], "GIF", save_all=True, append_images=frames(50, (400, 300))[1:]))
    reason = ("too many pixels (50 frames of 400 x 300 = 6,000,000 > data.max_pixels=5,000,000; Fix: "
              "data.max_pixels=6000000 or null for no limit, or shrink the image)")
    assert check_image_file(gif, max_pixels=5_000_000) == reason
    with pytest.raises(MMFuseError) as err:
        ImageFiles([gif], max_pixels=5_000_000).load(0)
    assert str(err.value) == f"{gif}: {reason}"
    assert check_image_file(gif, "decode", max_pixels=6_000_000) is None
    first = ImageFiles([gif], max_pixels=6_000_000).load(0)
    assert first.shape == (3, 300, 400) and first.dtype == torch.uint8
    assert first[:, 0, 0].tolist() == [0, 255, 40] and bool((first == first[:, :1, :1]).all())  # frame 0's colour


# -- whole reasons for files with long paths ------------------------------------------------------------------


def test_a_long_path_does_not_cut_the_reason(tmp_path, caplog):
    folder = tmp_path / ("d" * 100) / ("e" * 100)
    folder.mkdir(parents=True)
    path = folder / ("f" * 100 + ".jpg")
    assert len(str(path)) > 300
    path.write_bytes(b"\xff\xd8" + segment(0xE0, b"JFIF\0" + b"\0" * 9) + b"\0" * 100)  # no frame header, no end
    assert check_image_file(path) == f"truncated JPEG file (cannot be decoded ({NO_SIZE}; it is not decoded))"
    assert decode_error(path) == f"cannot be decoded ({NO_SIZE}; it is not decoded)"
    store = ImageFiles([path])
    ds = FilePairDataset(store, {"input_ids": torch.ones(1, 3, dtype=torch.long),
                                 "attention_mask": torch.ones(1, 3, dtype=torch.long)},
                         torch.tensor([0]), torch.tensor([0]), transform=lambda x: x.float())
    with caplog.at_level(logging.WARNING, logger="mmfuse.data.images"):
        assert ds._load(0) is None
    assert caplog.messages == [f"skipping the pairs of {path} in this batch: MMFuseError: {NO_SIZE}; it is not decoded"]
