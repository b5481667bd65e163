"""Datasets of (image, text) pairs over a store of unique images and a list of unique texts.

A split is described by:
- ``images``: an image store (``len``, ``load(i) -> uint8 [3, H, W]``; optionally
  ``load_many(indices) -> uint8 [B, 3, H, W]`` when all images share one size);
- ``text``: the tokenized unique texts ``{"input_ids": [N, T], "attention_mask": [N, T]}``;
- ``image_index`` / ``text_index``: ``[P]`` which image and which text make pair ``p``;
- ``fields``: other per-pair tensors (``label``, ``pair_type``, ``answer_scores`` ...);
- ``texts`` (optional): the unique texts as strings, in the rows' order (what captioning reads its
  references from); ``text`` may be None for a dataset without a text input (captioning with
  ``encoder.text=none``).

Batches are dicts: ``image`` (transformed, float), ``input_ids``, ``attention_mask`` (trimmed to the
longest text in the batch), ``image_id`` / ``text_id`` (indices into the split's images / texts,
for retrieval and for feature caches) and the fields. ``image_id`` is what ITM and retrieval read as
the index of the item a text belongs to; datasets of clips or sounds give it too (the clip's index).

A store that returns features instead of pixels (a feature cache) has ``features(indices) ->
EncoderOutput``; its batches carry ``image_features`` / ``text_features`` instead of pixels / ids,
and ``FusionModel`` then skips that encoder. (Datasets of other kinds, such as ``data.media`` and
shapes_av's, give the cache their inputs through ``feature_sources()`` instead.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset


class ImageStore(Protocol):
    def __len__(self) -> int: ...

    def load(self, i: int) -> torch.Tensor: ...


class TensorImages:
    """Images held in memory as one ``uint8 [N, 3, H, W]`` tensor."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> torch.Tensor:
        return self.images[i]

    def load_many(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]


def unique_texts(texts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """The distinct texts in first-seen order, and the index of each input text among them."""
    position: dict[str, int] = {}
    index = [position.setdefault(t, len(position)) for t in texts]
    return list(position), torch.tensor(index, dtype=torch.long)


class PairDataset(Dataset):
    def __init__(
        self,
        images: Any,
        text: Any,
        image_index: torch.Tensor,
        text_index: torch.Tensor,
        fields: dict[str, torch.Tensor] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        texts: Sequence[str] | None = None,
    ) -> None:
        fields = fields or {}
        n = len(image_index)
        for name, t in {"text_index": text_index, **fields}.items():
            if len(t) != n:
                raise ValueError(f"{name} has {len(t)} rows, expected {n} (one per pair)")
        self.images = images
        self.text = text
        self.image_index = image_index.long()
        self.text_index = text_index.long()
        self.fields = fields
        self.transform = transform
        self.texts = list(texts) if texts is not None else None

    def __len__(self) -> int:
        return len(self.image_index)

    def _images(self, idx: torch.Tensor) -> dict[str, Any]:
        if hasattr(self.images, "features"):
            return {"image_features": self.images.features(idx)}
        if hasattr(self.images, "load_many"):
            return {"image": self.transform(self.images.load_many(idx))}
        return {"image": torch.stack([self.transform(self.images.load(int(i))) for i in idx])}

    def _texts(self, idx: torch.Tensor) -> dict[str, Any]:
        if self.text is None:
            return {}
        if hasattr(self.text, "features"):
            return {"text_features": self.text.features(idx)}
        mask = self.text["attention_mask"][idx]
        length = max(int(mask.sum(1).max()), 1)  # drop columns that are padding for the whole batch
        return {"input_ids": self.text["input_ids"][idx, :length], "attention_mask": mask[:, :length]}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        pairs = torch.as_tensor(indices, dtype=torch.long)
        image_id, text_id = self.image_index[pairs], self.text_index[pairs]
        batch = {**self._images(image_id), **self._texts(text_id), "image_id": image_id, "text_id": text_id}
        batch.update({name: t[pairs] for name, t in self.fields.items()})
        return batch

    def __getitem__(self, i: int | torch.Tensor) -> dict[str, Any]:
        """Pair ``i``; a 1-D index tensor gives the batch of those pairs (what ``__getitems__`` gives)."""
        if isinstance(i, torch.Tensor) and i.ndim == 1:
            return self.__getitems__(i)
        return {k: _first(v) for k, v in self.__getitems__([i]).items()}


def _first(v: Any) -> Any:
    if isinstance(v, tuple):  # an EncoderOutput
        return type(v)(*(t[0] for t in v))
    return v[0]
