"""Symmetric InfoNCE (CLIP) over the pairs of a batch, aware that a batch can hold one image twice.

With ``U``, ``V`` the L2-normalised image and text embeddings ``[B, D]`` of the batch's pairs and
``s = exp(t)`` a learned scale (``t`` initialised to ``log(1 / temperature)``, clamped to
``log(max_scale)``): logits ``L = s U V^T``, and

    loss = 1/2 [ CE(L, P) + CE(L^T, P) ],   P[i, j] = 1[img(i) = img(j)] / #{k : img(k) = img(i)}

(soft cross-entropy). ``P`` is the identity when every image of the batch is distinct; when two
captions of one image share a batch both count as positives instead of as each other's negative.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def positive_targets(image_ids: torch.Tensor) -> torch.Tensor:
    same = (image_ids[:, None] == image_ids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, image_ids: torch.Tensor,
             scale: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The loss above; ``reduction="none"`` gives the per-pair ``[B]`` average of both directions."""
    u = F.normalize(image_emb.float(), dim=-1)
    v = F.normalize(text_emb.float(), dim=-1)
    logits = scale * u @ v.T
    targets = positive_targets(image_ids)
    per_pair = 0.5 * (F.cross_entropy(logits, targets, reduction="none")
                      + F.cross_entropy(logits.T, targets, reduction="none"))
    return per_pair.mean() if reduction == "mean" else per_pair


class LogitScale(nn.Module):
    """``s = exp(t)``, ``t`` learned (or fixed) from ``log(1 / temperature)``, at most ``max_scale``."""

    def __init__(self, temperature: float = 0.07, learn: bool = True, max_scale: float = 100.0) -> None:
        super().__init__()
        self.max_log = math.log(max_scale)
        t = torch.tensor(math.log(1.0 / temperature))
        if learn:
            self.log_scale = nn.Parameter(t)
        else:
            self.register_buffer("log_scale", t)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log).exp()


class ContrastiveHeads(nn.Module):
    """Linear projections of the two pooled encoder outputs to a shared ``dim``-wide space, plus the
    scale: a dual encoder beside a fusion model (ALBEF's image-text contrastive head), whose
    similarities propose the candidates that the fusion model re-ranks."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, temperature: float = 0.07) -> None:
        super().__init__()
        self.image = nn.Linear(image_dim, dim)
        self.text = nn.Linear(text_dim, dim)
        self.scale = LogitScale(temperature)

    def embed(self, image_pooled: torch.Tensor, text_pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised projections, computed in the projections' dtype (float64 for a ``.double()`` model)."""
        dtype = self.image.weight.dtype
        return (F.normalize(self.image(image_pooled.to(dtype)), dim=-1),
                F.normalize(self.text(text_pooled.to(dtype)), dim=-1))
