"""``data=flickr30k``: Flickr30k with Karpathy's splits (29k train / 1,014 val / 1,000 test images,
5 captions each; the Flickr30k 1k retrieval benchmark).

Layout under ``data.root``: ``dataset_flickr30k.json`` (``split_file``) and the images in
``flickr30k-images/`` (``image_dir``), e.g. ``flickr30k-images/1000092795.jpg``.
"""

from __future__ import annotations

from typing import Any

from mmfuse.data.captions import CaptionDataModule, CaptionSplit
from mmfuse.data.karpathy import read_karpathy


class Flickr30kDataModule(CaptionDataModule):
    dataset_name = "flickr30k"

    def __init__(self, root: str, split_file: str = "dataset_flickr30k.json",
                 image_dir: str = "flickr30k-images", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.split_file = self.root / split_file
        self.image_dir = self.root / image_dir

    def read_split(self, name: str) -> CaptionSplit | None:
        return read_karpathy(self.split_file, name, self.image_dir, self.dataset_name, include_restval=False)
