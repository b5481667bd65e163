"""VisDial v1.0 evaluation metrics: R@1/5/10, mean rank, MRR (sparse ground truth) and NDCG (dense relevance).

Same formulas as the VisDial challenge starter code (``visdialch/metrics.py``: ``scores_to_ranks``,
``SparseGTMetrics``, ``NDCG``) and EvalAI's VisDial evaluation. Setting: ``N`` rounds (rows), each with
``K`` candidate answers (VisDial: 100), ``scores [N, K]`` (higher = better).

- ``rank[n, j]`` = 1 + position of option ``j`` when row ``n`` is sorted by score, descending (1 = best).
  Ties (unspecified in the reference, which uses an unstable ``torch.sort``): the option with the LOWER
  index ranks first (stable sort). NaN scores are refused (``MMFuseError``).
- Sparse ground truth, ``g_n`` = the rank of row ``n``'s ground-truth option, over the ``M`` rows that have one
  (``gt_index >= 0``; ``-1`` = no ground truth, e.g. the test split):
  ``R@k = #{n : g_n <= k} / M`` (a share in [0, 1], as the reference reports it), ``mean_rank = sum_n g_n / M``,
  ``MRR = sum_n (1 / g_n) / M``.
- Dense relevance ``rel[n, j]`` (VisDial: 0, 0.2, ..., 1.0): with ``k_n = #{j : rel[n, j] != 0}``,
  ``order_n`` = options by predicted rank (best first), ``ideal_n`` = options by relevance, descending:
  ``DCG_n = sum_{i < k_n} rel[n, order_n[i]] / log2(i + 2)``, ``IDCG_n`` = the same over ``ideal_n``,
  ``NDCG_n = DCG_n / IDCG_n`` (float64). A row with ``k_n = 0`` (nothing relevant) or any NaN relevance
  (no dense annotation) gets NaN: the caller leaves it out (``dialog_metrics`` does), where the reference
  would divide 0 by 0. ``ndcg = mean over the kept rows``.

``dialog_metrics`` also returns the numbers of rows actually scored: ``rounds`` (sparse) and ``dense_rounds``.
"""

from __future__ import annotations

import torch

from mmfuse.errors import MMFuseError

KS = (1, 5, 10)
_WHERE = "mmfuse.tasks.dialog_metrics"


def _check_scores(scores: torch.Tensor) -> torch.Tensor:
    if scores.dim() != 2:
        raise MMFuseError(f"{_WHERE}: scores must be [N rounds, K options], got shape {tuple(scores.shape)}")
    if torch.isnan(scores).any():
        raise MMFuseError(f"{_WHERE}: scores contain NaN ({int(torch.isnan(scores).sum())} entries); "
                          "fix the model's candidate scores (a NaN has no rank)")
    return scores


def _order(scores: torch.Tensor) -> torch.Tensor:
    """Options of each row, best first; equal scores keep index order (stable descending sort)."""
    return torch.sort(_check_scores(scores), dim=1, descending=True, stable=True).indices


def scores_to_ranks(scores: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` scores -> ``[N, K]`` 1-based ranks (1 = highest score; ties: lower index first)."""
    order = _order(scores)
    n, k = order.shape
    ranks = torch.empty_like(order)
    positions = torch.arange(1, k + 1, device=order.device).expand(n, k)
    return ranks.scatter_(1, order, positions)


def gt_ranks(scores: torch.Tensor, gt_index: torch.Tensor) -> torch.Tensor:
    """``[N]`` rank of each row's ground-truth option ``gt_index[n]`` in ``[0, K)``."""
    ranks = scores_to_ranks(scores)
    gt_index = torch.as_tensor(gt_index, device=ranks.device).long().reshape(-1)
    if gt_index.numel() != ranks.shape[0]:
        raise MMFuseError(f"{_WHERE}: gt_index has {gt_index.numel()} entries for {ranks.shape[0]} rows of scores")
    if gt_index.numel() and (gt_index.min() < 0 or gt_index.max() >= ranks.shape[1]):
        raise MMFuseError(f"{_WHERE}: gt_index must lie in [0, {ranks.shape[1]}) (options per round); "
                          f"got {int(gt_index.min())}..{int(gt_index.max())} (drop rows without a ground truth first)")
    return ranks.gather(1, gt_index[:, None]).squeeze(1)


def rank_metrics(ranks: torch.Tensor) -> dict[str, float]:
    """``r1, r5, r10`` (share of ranks ``<= k``), ``mean_rank``, ``mrr`` (mean of ``1 / rank``) of ``[M]`` ranks."""
    ranks = torch.as_tensor(ranks).reshape(-1).double()
    if ranks.numel() == 0:
        raise MMFuseError(f"{_WHERE}: rank_metrics got no ranks (no round with a ground-truth answer, gt_index >= 0)")
    out = {f"r{k}": float((ranks <= k).double().mean()) for k in KS}
    out["mean_rank"] = float(ranks.mean())
    out["mrr"] = float(ranks.reciprocal().mean())
    return out


def ndcg(scores: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """``[N]`` float64 NDCG of each row (formula in the module docstring); NaN where k = 0 or relevance has NaN."""
    order = _order(scores)
    relevance = torch.as_tensor(relevance, device=order.device).double()
    if relevance.shape != order.shape:
        raise MMFuseError(f"{_WHERE}: relevance shape {tuple(relevance.shape)} != scores shape {tuple(order.shape)}")
    n_rows, n_opts = order.shape
    missing = torch.isnan(relevance).any(dim=1)
    k = (relevance != 0).sum(dim=1)
    ideal = torch.sort(relevance.nan_to_num(0.0), dim=1, descending=True).values
    gains = relevance.gather(1, order)
    discounts = torch.log2(torch.arange(n_opts, device=order.device, dtype=torch.float64) + 2)
    out = torch.full((n_rows,), float("nan"), dtype=torch.float64, device=order.device)
    # per row, as the reference: a sum over the first k_n positions only (k, missing read once: one device sync)
    for n, (kn, skip) in enumerate(zip(k.tolist(), missing.tolist(), strict=True)):
        if kn == 0 or skip:
            continue
        dcg = torch.sum(gains[n, :kn] / discounts[:kn])
        best = torch.sum(ideal[n, :kn] / discounts[:kn])
        out[n] = dcg / best
    return out


def dialog_metrics(scores: torch.Tensor, gt_index: torch.Tensor,
                   relevance: torch.Tensor | None = None) -> dict[str, float]:
    """All VisDial metrics of ``scores [N, K]``.

    Rank metrics over rows with ``gt_index >= 0`` (absent when there is none), ``ndcg`` over rows whose
    ``relevance`` has no NaN and at least one non-zero value (absent when there is none);
    ``rounds`` / ``dense_rounds``: how many rows each used.
    """
    _check_scores(scores)
    gt_index = torch.as_tensor(gt_index, device=scores.device).long().reshape(-1)
    if gt_index.numel() != scores.shape[0]:
        raise MMFuseError(f"{_WHERE}: gt_index has {gt_index.numel()} entries for {scores.shape[0]} rows of scores")
    keep = gt_index >= 0
    out: dict[str, float] = {}
    if keep.any():
        out.update(rank_metrics(gt_ranks(scores[keep], gt_index[keep])))
    out["rounds"] = int(keep.sum())
    dense = 0
    if relevance is not None:
        per_row = ndcg(scores, relevance)
        valid = ~torch.isnan(per_row)
        dense = int(valid.sum())
        if dense:
            out["ndcg"] = sum(per_row[valid].tolist()) / dense  # sequential sum, as the reference accumulates
    out["dense_rounds"] = dense
    return out
