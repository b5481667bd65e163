"""Task heads on top of the fused representation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmfuse.errors import MMFuseError
from mmfuse.types import LateOutput

HEADS = ("linear", "mlp")


class MLPHead(nn.Module):
    """``Linear(in, hidden) . ReLU . Dropout . Linear(hidden, out)``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class SimilarityHead(nn.Module):
    """For late fusion: ``logit = s · cos(u, v) + b`` (``u`` the image, or video / audio, embedding and
    ``v`` the text's) with learned temperature ``s = exp(t)`` and bias. With several non-text modalities
    ``cos(u, v)`` is the mean of ``cos(u_m, v)`` over them."""

    def __init__(self, init_scale: float = 10.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(init_scale)).log())
        self.bias = nn.Parameter(torch.tensor(-init_scale / 2))

    def forward(self, out: LateOutput) -> torch.Tensor:
        v = nn.functional.normalize(out["text"], dim=-1)
        cosines = [(nn.functional.normalize(u, dim=-1) * v).sum(-1) for m, u in out.items() if m != "text"]
        cos = cosines[0] if len(cosines) == 1 else torch.stack(cosines).mean(0)
        return (self.log_scale.exp() * cos + self.bias).unsqueeze(-1)


class LateHeads(nn.Module):
    """For late fusion on classification-like tasks: one head per modality (the submodule named after
    it), logits added, ``logits = Σ_m h_m(u_m)`` (``h_img(u) + h_txt(v)`` for image + text: a product
    of per-modality experts in probability space)."""

    def __init__(self, kind: str, in_dim: int, out_dim: int, hidden_dim: int = 256, dropout: float = 0.0,
                 modalities: Sequence[str] = ("image", "text")) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        for m in self.modalities:
            self.add_module(m, build_head(kind, in_dim, out_dim, hidden_dim, dropout))

    def forward(self, out: LateOutput) -> torch.Tensor:
        logits = getattr(self, self.modalities[0])(out[self.modalities[0]])
        for m in self.modalities[1:]:
            logits = logits + getattr(self, m)(out[m])
        return logits


def build_task_head(kind: str, in_dim: int, out_dim: int, fusion_stage: str, hidden_dim: int = 256,
                    dropout: float = 0.0, modalities: Sequence[str] = ("image", "text")) -> nn.Module:
    """``build_head`` on a fused vector, or ``LateHeads`` (one per modality) when the fusion is late."""
    if fusion_stage == "late":
        return LateHeads(kind, in_dim, out_dim, hidden_dim, dropout, modalities)
    return build_head(kind, in_dim, out_dim, hidden_dim, dropout)


def build_head(kind: str, in_dim: int, out_dim: int, hidden_dim: int = 256, dropout: float = 0.0) -> nn.Module:
    """``linear``: ``W z + b`` (the seed's classifier); ``mlp``: one hidden layer."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return MLPHead(in_dim, out_dim, hidden_dim, dropout)
    raise MMFuseError(f"task.head={kind!r} is not a head: expected one of {HEADS}")
