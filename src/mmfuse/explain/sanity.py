"""The model-randomisation check (Adebayo et al. 2018): an explanation that does not change when the
model's weights are re-drawn does not explain the model.

``randomized_copy``: a deep copy with every parameter re-drawn ("full randomisation"): under
``torch.manual_seed(seed)`` (the caller's RNG state is restored afterwards), each module's ``reset_parameters()``
(or ``_reset_parameters()``, which ``nn.MultiheadAttention`` has instead), then every parameter still equal to
its trained value (position embeddings, tokens of one's own, a LayerNorm that never left ones) drawn from
``N(0, 0.02²)``. Buffers are what the resets leave: BatchNorm's reset clears its running statistics (mean 0,
variance 1), so the random network normalises with statistics of no data; other buffers (position ids, masks)
are kept. The original is not changed. ``rank_correlation``: Spearman's ρ between two maps of equally many
values (ties get their average rank); a constant map has no ranking, and scores 0. A method passes when the
mean ρ between the trained model's maps and the random one's is below ``RANDOMISATION_PASS``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from mmfuse.errors import MMFuseError

RANDOMISATION_PASS = 0.5


def randomized_copy(module: Any, seed: int = 0) -> Any:
    clone = copy.deepcopy(module)
    before = {name: p.detach().clone() for name, p in clone.named_parameters()}
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for m in clone.modules():
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if callable(reset):
                reset()
        for name, p in clone.named_parameters():
            if torch.equal(p, before[name]):
                p.normal_(0.0, 0.02)
    return clone


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a), np.ravel(b)
    if a.size != b.size:
        raise MMFuseError(f"rank_correlation: maps of {a.size} and {b.size} values; compare maps of one shape")
    x, y = rankdata(a), rankdata(b)
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0
