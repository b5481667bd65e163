"""The model-randomisation check (Adebayo et al. 2018): an explanation that does not change when the
model's weights are re-drawn does not explain the model.

``randomized_copy``: a deep copy with every parameter re-drawn ("full randomisation"): each submodule's
``reset_parameters()`` under a seeded generator, then any parameter no reset touched (position embeddings,
tokens of one's own) drawn from ``N(0, 0.02²)``; buffers (BatchNorm statistics) are kept. The original is
not changed. ``rank_correlation``: Spearman's ρ between two maps (ties get their average rank); a constant
map has no ranking, and scores 0. A method passes when the mean ρ between the trained model's maps and
the random one's is below ``RANDOMISATION_PASS``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

RANDOMISATION_PASS = 0.5


def randomized_copy(module: Any, seed: int = 0) -> Any:
    clone = copy.deepcopy(module)
    before = {name: p.detach().clone() for name, p in clone.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in clone.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset) and m is not clone:
                reset()
        with torch.no_grad():
            for name, p in clone.named_parameters():
                if torch.equal(p, before[name]):
                    p.normal_(0.0, 0.02)
    return clone


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    x, y = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0
