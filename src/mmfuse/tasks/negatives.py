"""In-batch negatives for image-text matching on data of positive pairs only (COCO, Flickr30k).

Batch pair ``p`` = (image ``p``, text ``p``), ``image_ids[p]`` its image. Each positive gets one
negative made from the other pairs of the batch whose image differs (so another caption of the same
image is never a negative): even positions keep the image and take another pair's text, odd
positions keep the text and take another pair's image, so the scorer learns both directions.

- ``random``: the other pair is drawn uniformly;
- ``hard``: drawn with probability ``softmax(score)`` over the candidates, where ``score[p, q]`` is the
  current model's score of image ``p`` with text ``q`` (ALBEF's in-batch hard negative mining:
  sampling instead of the arg-max keeps an occasional false negative from dominating).

A positive whose batch holds no other image gets no negative (``valid`` is False there).
"""

from __future__ import annotations

import torch

KINDS = ("random", "hard")


def in_batch_negatives(image_ids: torch.Tensor, scores: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(neg_image [B], neg_text [B], valid [B])``: indices into the batch's images and texts."""
    b = len(image_ids)
    candidates = image_ids[:, None] != image_ids[None, :]  # [p, q]: q may serve as p's negative
    valid = candidates.any(dim=1)
    if scores is None:
        weights = candidates.float()
    else:
        # row p: texts q for image p (even p); for odd p the images q for text p, i.e. column p
        oriented = torch.where(torch.arange(b, device=scores.device)[:, None] % 2 == 0, scores, scores.T)
        weights = torch.softmax(oriented.float().masked_fill(~candidates, float("-inf")), dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)
    weights = torch.where(valid[:, None], weights, torch.ones_like(weights))  # any row; masked by valid
    # drawn where the generator lives (the default one: the batch's device, so no wait for the GPU)
    other = torch.multinomial(weights.to(generator.device) if generator is not None else weights, 1,
                              generator=generator).squeeze(1).to(image_ids.device)
    own = torch.arange(b, device=image_ids.device)
    even = own % 2 == 0
    neg_image = torch.where(even, own, other)
    neg_text = torch.where(even, other, own)
    return neg_image, neg_text, valid
