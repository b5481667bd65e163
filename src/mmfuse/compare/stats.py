"""The statistics of ``python -m mmfuse.compare --ci / --test``: intervals over seeds, tests against a
baseline, and Holm's correction.

- ``t_interval(x, c)``: ``x̄ ± t_{(1+c)/2, n−1} · s / √n`` (``s`` the sample standard deviation), the
  Student-t interval for the mean over ``n`` seeds; ``None`` for ``n < 2``.
- ``welch(a, b)``: Welch's two-sample t-test of ``mean(a) = mean(b)`` (seeds of two settings, unequal
  variances): ``t = (ā − b̄) / √(s_a²/n_a + s_b²/n_b)``, Welch–Satterthwaite degrees of freedom
  ``ν = (s_a²/n_a + s_b²/n_b)² / ((s_a²/n_a)²/(n_a−1) + (s_b²/n_b)²/(n_b−1))``, two-sided
  ``p = 2 · P(T_ν > |t|)``.
- ``paired_bootstrap(x, y)``: ``x[i]``, ``y[i]`` the scores of two models on the same evaluation sample
  ``i`` (1/0 for a right / wrong ITM pair, the VQA accuracy of an answer). ``δ = mean(x − y)``; ``B``
  resamples of the ``n`` samples with replacement, the same indices for both models (paired), give
  ``δ*_b``; the interval is their ``(1−c)/2`` and ``(1+c)/2`` quantiles (percentile method) and the
  two-sided p-value that of the shifted null (Efron & Tibshirani 1993, §16.4; Koehn 2004):
  ``p = (1 + #{b : |δ*_b − δ| ≥ |δ|}) / (B + 1)``. It measures how much the difference depends on
  which evaluation samples were drawn, not on the training seed (``welch`` does that).
- ``holm(p)``: Holm's step-down adjusted p-values for ``m`` tests: with ``p_(1) ≤ … ≤ p_(m)``,
  ``p̃_(k) = max_{j ≤ k} min(1, (m − j + 1) · p_(j))``; a difference holds at level ``α`` when
  ``p̃ < α``, which keeps the family-wise error rate at ``α``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmfuse.errors import MMFuseError

__all__ = ["Bootstrap", "Welch", "holm", "paired_bootstrap", "t_interval", "welch"]


def _t_ppf(q: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def _t_sf(x: float, df: float) -> float:
    from scipy.stats import t

    return float(t.sf(x, df))


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise MMFuseError(f"--ci {confidence}: a confidence level is in (0, 1), e.g. 0.95")


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """The Student-t interval for the mean of ``values`` (see the module docstring); None for one value."""
    _check_confidence(confidence)
    n = len(values)
    if n < 2:
        return None
    mean, s = statistics.fmean(values), statistics.stdev(values)
    half = _t_ppf((1.0 + confidence) / 2.0, n - 1) * s / math.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class Welch:
    diff: float  # mean(a) − mean(b)
    t: float
    df: float
    p: float


def welch(a: Sequence[float], b: Sequence[float]) -> Welch | None:
    """Welch's t-test (see the module docstring); None when either side has fewer than 2 values, or when
    neither side varies over its seeds (no spread to test against: accuracies on a small split tie)."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0.0:
        return None
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return Welch(diff, t, df, min(1.0, 2.0 * _t_sf(abs(t), df)))


@dataclass(frozen=True)
class Bootstrap:
    diff: float  # mean(x − y)
    low: float
    high: float
    p: float
    n: int  # evaluation samples
    resamples: int


def paired_bootstrap(x: np.ndarray, y: np.ndarray, confidence: float = 0.95, resamples: int = 10_000,
                     seed: int = 0, chunk: int | None = None) -> Bootstrap:
    """The paired bootstrap of ``mean(x − y)`` (see the module docstring), seeded: the same inputs give the
    same interval and p-value."""
    _check_confidence(confidence)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise MMFuseError(f"paired bootstrap: needs two equally long, non-empty 1-d score arrays, got {np.shape(x)} "
                          f"and {np.shape(y)}")
    if resamples < 1:
        raise MMFuseError(f"paired bootstrap: resamples={resamples} must be >= 1")
    d = x - y
    n, observed = len(d), float(d.mean())
    rng = np.random.default_rng(seed)
    chunk = chunk or max(1, 2**22 // n)  # resamples at a time: about 32 MB of indices
    means = np.concatenate([d[rng.integers(0, n, size=(min(chunk, resamples - s), n))].mean(axis=1)
                            for s in range(0, resamples, chunk)])
    low, high = np.quantile(means, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    # a tolerance for the rounding of means of equal values (|δ*_b − δ| of 1e-17 where both are exact)
    extreme = int(np.sum(np.abs(means - observed) >= abs(observed) - 1e-12))
    return Bootstrap(observed, float(low), float(high), (1 + extreme) / (resamples + 1), n, resamples)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values, in the order given (see the module docstring)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
