"""Images stored as files (JPEG, PNG, GIF, WebP), decoded on demand with ``torchvision.io``.

``ImageFiles(paths, max_pixels)`` is an image store for ``PairDataset``: ``load(i) -> uint8 [3, H, W]``
(RGB) and ``read_bytes(i)`` (the file, for decoding on a GPU). Both refuse a file whose header gives
more than ``max_pixels`` pixels (``data.max_pixels``; ``mmfuse.data.image_size``) or no size, before
anything is decoded. An animated GIF gives its first frame: torchvision decodes every frame
(``[frames, 3, H, W]``), which is why all of them count against ``max_pixels``.
``FilePairDataset`` is a ``PairDataset`` that decodes each image of a batch once and drops a pair
whose image cannot be decoded (with a warning naming the file) instead of stopping mid-epoch; the
store records such files (``failures()``, shared with DataLoader workers) for ``results.json``.
Files are checked before training (``mmfuse.data.validation``), so this is the last line of defence.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from mmfuse.data.image_size import DEFAULT_MAX_PIXELS, NO_SIZE, header_size, too_many_pixels
from mmfuse.data.pairs import PairDataset
from mmfuse.errors import MMFuseError

log = logging.getLogger(__name__)


def check_header(path: str | Path, data: bytes | memoryview, max_pixels: int | None) -> None:
    """Raise ``MMFuseError`` unless the header of the file's bytes ``data`` gives a size within
    ``max_pixels`` (frames x width x height)."""
    size = header_size(io.BytesIO(data))
    if size is None:
        raise MMFuseError(f"{path}: {NO_SIZE}; it is not decoded")
    reason = too_many_pixels(size, max_pixels)
    if reason:
        raise MMFuseError(f"{path}: {reason}")


def decode_file(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """``uint8 [3, H, W]`` RGB (grey and palette images are converted, alpha dropped; an animated GIF's
    first frame), after ``check_header`` (``max_pixels=None``: no pixel limit)."""
    data = read_file(str(path))
    check_header(path, memoryview(data.numpy()), max_pixels)
    image = decode_image(data, mode=ImageReadMode.RGB)
    return image[0].clone() if image.ndim == 4 else image  # the first frame, without the others


class ImageFiles:
    """An image store over files; ``failed[i]`` is set (across worker processes) when file ``i``
    could not be decoded during training."""

    def __init__(self, paths: Sequence[str | Path], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.paths = [Path(p) for p in paths]
        self.max_pixels = max_pixels
        self.failed = torch.zeros(len(self.paths), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> torch.Tensor:
        return decode_file(self.paths[i], self.max_pixels)

    def read_bytes(self, i: int) -> bytes:
        """The bytes of file ``i``, for a decoder elsewhere (the feature cache's GPU JPEG decoding)."""
        data = self.paths[i].read_bytes()
        check_header(self.paths[i], data, self.max_pixels)
        return data

    def failures(self) -> list[str]:
        return [str(self.paths[i]) for i in torch.nonzero(self.failed).flatten().tolist()]

    def fingerprint(self) -> str:
        """A hash of the file paths, sizes and modification times (a key for caches of this store)."""
        h = hashlib.sha256()
        for p in self.paths:
            st = p.stat()
            h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


class FilePairDataset(PairDataset):
    """``PairDataset`` over ``ImageFiles``: an undecodable image drops its pairs from the batch."""

    def _load(self, i: int) -> torch.Tensor | None:
        try:
            return self.transform(self.images.load(i))
        except Exception as e:
            if hasattr(self.images, "failed"):
                self.images.failed[i] = True
            path = self.images.paths[i] if hasattr(self.images, "paths") else f"image {i}"
            last = (str(e).strip().splitlines() or [""])[-1].strip()
            log.warning("skipping the pairs of %s in this batch: %s: %s", path, type(e).__name__,
                        last.removeprefix(f"{path}: "))
            return None

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        if hasattr(self.images, "features"):  # a feature cache stands in for the files
            return super().__getitems__(indices)
        pairs = torch.as_tensor(indices, dtype=torch.long)
        loaded = {i: self._load(i) for i in self.image_index[pairs].unique().tolist()}
        keep = torch.tensor([loaded[i] is not None for i in self.image_index[pairs].tolist()], dtype=torch.bool)
        step = 1
        while not keep.any() and step < len(self):  # a whole batch of bad images: take the next good pair
            pairs = torch.as_tensor([(int(indices[0]) + step) % len(self)])
            i = int(self.image_index[pairs[0]])
            loaded.setdefault(i, self._load(i))
            keep = torch.tensor([loaded[i] is not None])
            step += 1
        pairs = pairs[keep]
        image_id, text_id = self.image_index[pairs], self.text_index[pairs]
        batch = {"image": torch.stack([loaded[i] for i in image_id.tolist()]), **self._texts(text_id),
                 "image_id": image_id, "text_id": text_id}
        batch.update({name: t[pairs] for name, t in self.fields.items()})
        return batch
