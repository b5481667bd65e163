"""Exact Shapley values of the modalities for a metric (2^N evaluations)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence


def subset_key(kept: Sequence[str], order: Sequence[str]) -> str:
    """``"image+text"``: the kept modalities in ``order``, joined with ``+`` (``""``: none kept)."""
    return "+".join(m for m in order if m in kept)


def all_subsets(players: Sequence[str]) -> list[tuple[str, ...]]:
    """Every subset of ``players``, the full set first, the empty one last."""
    n = len(players)
    return [c for k in range(n, -1, -1) for c in itertools.combinations(players, k)]


def shapley(players: Sequence[str], value: Callable[[frozenset[str]], float]) -> dict[str, float]:
    """``φ_i = Σ_{S ⊆ N∖{i}} |S|! (n − |S| − 1)! / n! · (v(S ∪ {i}) − v(S))``; ``Σ_i φ_i = v(N) − v(∅)``."""
    n = len(players)
    out = {}
    for i in players:
        others = [p for p in players if p != i]
        total = 0.0
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for s in itertools.combinations(others, k):
                total += weight * (value(frozenset(s) | {i}) - value(frozenset(s)))
        out[i] = total
    return out
