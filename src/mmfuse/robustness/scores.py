"""Robustness scores of a metric's curve over increasing perturbation levels, as MultiBench defines them
(Liang et al. 2021, ``eval_scripts/robustness.py``).

- Relative robustness: the area under the curve ``f_0 .. f_{K−1}`` with the levels taken as equally spaced
  on ``[0, 1]``: ``RR = Σ_k (f_k + f_{k+1}) / 2 · 1/(K − 1)``. MultiBench's ``relative_robustness_helper``
  uses the step 0.1 for any K (its curves have 11 levels, where the two agree) and then max-min normalizes
  the score across the methods it compares; here the step follows K and the score is not normalized, so
  that curves of other lengths stay on the metric's scale. The levels' values are not used: with unevenly
  spaced levels (``image_noise``: 0, 0.05, 0.1, 0.2, 0.3, 0.5) ``RR`` is the mean of the segment midpoints, not
  the area under the curve over the levels. A curve of one point has ``RR = f_0``.
- Effective robustness against a reference method's curve ``g`` (MultiBench: late fusion) on the same
  levels: ``ER = Σ_k (f_k − (g_k + f_0 − g_0))``, how much better than the reference the method holds up
  once both start from the same clean value; 0 for the reference itself.
"""

from __future__ import annotations

from collections.abc import Sequence


def relative_robustness(curve: Sequence[float]) -> float:
    f = [float(v) for v in curve]
    if len(f) == 1:
        return f[0]
    step = 1.0 / (len(f) - 1)
    return sum((a + b) / 2 * step for a, b in zip(f[:-1], f[1:], strict=True))


def effective_robustness(curve: Sequence[float], reference: Sequence[float]) -> float:
    f, g = [float(v) for v in curve], [float(v) for v in reference]
    if len(f) != len(g):
        raise ValueError(f"the curve has {len(f)} levels and the reference {len(g)}")
    return sum(fk - (gk + f[0] - g[0]) for fk, gk in zip(f, g, strict=True))
