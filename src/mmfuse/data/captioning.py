"""Captioning splits made from any dataset of image-text pairs (``task=captioning``).

The references of an image are the texts of its positive pairs (``label == 1`` where the pairs have a
label; every pair otherwise: COCO, Flickr30k), in pair order, each once, unless the datamodule gives
its own (``caption_references``: shapes gives both true descriptions of a scene). From them:
- ``train``: one pair per (image, reference): every reference of an image is trained on;
- ``val`` / ``test``: one pair per image with at least one reference (its first, for ``val/loss``); the
  metrics score the generated caption against all of the image's references.
Each pair carries ``caption_ids`` / ``caption_mask`` (the decoder tokenizer's ``bos ... eos``, padded to
the split's longest; the task trims each batch), ``image_id`` (the image's index in the split, which
the references are looked up by) and, as its text input, the prompt (``task.prompt``, one row for
every pair; none when the run has no text encoder): the caption itself never reaches the encoders.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from mmfuse.data.pairs import PairDataset
from mmfuse.errors import MMFuseError


def references_from_pairs(dataset: PairDataset, where: str) -> list[list[str]]:
    """Per image of ``dataset``, the distinct texts of its positive pairs, in pair order."""
    if not isinstance(dataset, PairDataset) or dataset.texts is None:
        raise MMFuseError(f"task=captioning: {where} gives no caption strings ({type(dataset).__name__}); "
                          "captioning needs a dataset of image-text pairs (data=shapes, coco_captions, flickr30k, "
                          "jsonl)")
    label = dataset.fields.get("label")
    refs: list[list[str]] = [[] for _ in range(len(dataset.images))]
    for p, (i, t) in enumerate(zip(dataset.image_index.tolist(), dataset.text_index.tolist(), strict=True)):
        if label is not None and float(label[p]) != 1.0:
            continue
        text = dataset.texts[t]
        if text not in refs[i]:
            refs[i].append(text)
    return refs


def caption_split(dataset: PairDataset, references: Sequence[Sequence[str]], tokenizer: Any, max_length: int,
                  prompt: dict[str, torch.Tensor] | None, train: bool, where: str) -> PairDataset | None:
    """The captioning pairs of ``dataset`` (see the module docstring); None when no image has a reference."""
    if len(references) != len(dataset.images):
        raise MMFuseError(f"{where}: {len(references)} reference lists for {len(dataset.images)} images")
    images, texts = [], []
    for i, refs in enumerate(references):
        for ref in (refs if train else refs[:1]):
            images.append(i)
            texts.append(ref)
    if not images:
        return None
    ids, mask = tokenizer.encode(texts, max_length)
    out = copy.copy(dataset)
    out.image_index = torch.tensor(images, dtype=torch.long)
    out.text_index = torch.zeros(len(images), dtype=torch.long)
    out.text = prompt
    out.texts = None
    out.fields = {"caption_ids": ids, "caption_mask": mask}
    return out
