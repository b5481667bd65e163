"""Learning-rate schedules (used as ``scheduler: {_target_: ..., _partial_: true}``)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05,
                  min_factor: float = 0.0) -> LambdaLR:
    """``lr(t) = lr · t / w`` for ``t < w``, then cosine decay to ``lr · min_factor`` at ``total_steps``.

    ``w = max(1, warmup_fraction · total_steps)``.
    """
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
