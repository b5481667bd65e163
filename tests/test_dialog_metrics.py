"""VisDial metrics (mmfuse.tasks.dialog_metrics) against a literal reference written from the challenge starter
code's formulas (visdialch/metrics.py: scores_to_ranks, SparseGTMetrics, NDCG), loops as they have them, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse.errors import MMFuseError
from mmfuse.tasks.dialog_metrics import dialog_metrics, gt_ranks, ndcg, rank_metrics, scores_to_ranks

LEVELS = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=torch.float64)


# --- the reference, as the starter code computes it (only float32 -> float64) ---------------------------------
def ref_scores_to_ranks(scores):
    _, ranked_idx = scores.sort(1, descending=True)
    ranks = ranked_idx.clone().fill_(0)
    for i in range(ranked_idx.size(0)):
        for j in range(scores.size(1)):
            ranks[i][ranked_idx[i][j]] = j
    return ranks + 1


def ref_sparse(scores, gt):
    ranks = ref_scores_to_ranks(scores)
    rank_list = list(ranks[torch.arange(scores.size(0)), gt].numpy())
    r = torch.tensor(rank_list).double()
    return {"r1": torch.mean((r <= 1).double()).item(), "r5": torch.mean((r <= 5).double()).item(),
            "r10": torch.mean((r <= 10).double()).item(), "mean_rank": torch.mean(r).item(),
            "mrr": torch.mean(r.reciprocal()).item()}


def ref_dcg(rankings, relevance):
    sorted_relevance = relevance[rankings].double()
    discounts = torch.log2(torch.arange(len(rankings)).double() + 2)
    return torch.sum(sorted_relevance / discounts, dim=-1)


def ref_ndcg_rows(scores, relevance):
    predicted_ranks = ref_scores_to_ranks(scores)
    k = torch.sum(relevance != 0, dim=-1)
    _, rankings = torch.sort(predicted_ranks, dim=-1)
    _, best_rankings = torch.sort(relevance, dim=-1, descending=True)
    out = []
    for b in range(scores.size(0)):
        num_relevant = k[b]
        dcg = ref_dcg(rankings[b][:num_relevant], relevance[b])
        best_dcg = ref_dcg(best_rankings[b][:num_relevant], relevance[b])
        out.append(dcg / best_dcg)
    return out


def seeded(n=7, k=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, k, generator=g, dtype=torch.float64)
    assert all(len(set(row.tolist())) == k for row in scores)  # distinct: the reference's sort order is then defined
    gt = torch.randint(0, k, (n,), generator=g)
    rel = LEVELS[torch.randint(0, len(LEVELS), (n, k), generator=g)]
    rel[torch.rand(n, k, generator=g) < 0.8] = 0.0  # VisDial: most options irrelevant
    # make the ground truth's score high in some rows, so R@1 / R@5 are not all 0
    scores[torch.arange(3), gt[:3]] = scores.max() + torch.arange(1.0, 4.0, dtype=torch.float64)
    return scores, gt, rel


# --- against the reference --------------------------------------------------------------------------------------
def test_ranks_equal_reference():
    scores, gt, _ = seeded()
    assert torch.equal(scores_to_ranks(scores), ref_scores_to_ranks(scores))
    assert torch.equal(gt_ranks(scores, gt), ref_scores_to_ranks(scores)[torch.arange(7), gt])


def test_sparse_metrics_equal_reference():
    scores, gt, _ = seeded()
    ours = rank_metrics(gt_ranks(scores, gt))
    assert ours == ref_sparse(scores, gt)
    assert ours["r1"] >= 3 / 7  # rows 0-2 give the ground truth the top score
    assert gt_ranks(scores, gt)[:3].tolist() == [1, 1, 1]


def test_ndcg_equal_reference():
    scores, gt, rel = seeded()
    ref = ref_ndcg_rows(scores, rel)
    ours = ndcg(scores, rel)
    assert ours.dtype == torch.float64
    assert ours.tolist() == [float(x) for x in ref]  # bit-exact per row
    m = dialog_metrics(scores, gt, rel)
    assert m["ndcg"] == sum(ref).item() / 7  # the reference's numerator / denominator
    assert m["dense_rounds"] == 7 and m["rounds"] == 7
    assert {k: m[k] for k in ("r1", "r5", "r10", "mean_rank", "mrr")} == ref_sparse(scores, gt)


# --- hand-computed: 1 round x 5 options -------------------------------------------------------------------------
SCORES = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7]])
REL = torch.tensor([[1.0, 0.0, 0.6, 0.0, 0.2]], dtype=torch.float64)  # float64: 0.6 in float32 is 0.6000000238
# order by score: options 1 (0.9), 4 (0.7), 2 (0.5), 3 (0.3), 0 (0.1) -> ranks [5, 1, 3, 4, 2].
# gt = option 2 -> rank 3: r1 = 0, r5 = r10 = 1, mean_rank = 3, mrr = 1/3.
# k = #relevance != 0 = 3 (options 0, 2, 4).
# DCG@3  = rel[1]/log2(2) + rel[4]/log2(3) + rel[2]/log2(4) = 0 + 0.2/1.5849625 + 0.6/2 = 0.1261860 + 0.3 = 0.4261860
# IDCG@3 = 1.0/log2(2)    + 0.6/log2(3)    + 0.2/log2(4)    = 1 + 0.3785579 + 0.1          = 1.4785579
# NDCG   = 0.4261860 / 1.4785579 = 0.2882444
HAND_NDCG = (0.2 / math.log2(3) + 0.6 / 2) / (1.0 + 0.6 / math.log2(3) + 0.2 / 2)


def test_hand_case():
    assert scores_to_ranks(SCORES).tolist() == [[5, 1, 3, 4, 2]]
    assert gt_ranks(SCORES, torch.tensor([2])).tolist() == [3]
    m = dialog_metrics(SCORES, torch.tensor([2]), REL)
    assert m["r1"] == 0.0 and m["r5"] == 1.0 and m["r10"] == 1.0
    assert m["mean_rank"] == 3.0 and m["mrr"] == pytest.approx(1 / 3, abs=1e-15)
    assert m["ndcg"] == pytest.approx(HAND_NDCG, rel=1e-12)
    assert m["ndcg"] == pytest.approx(0.2882444, abs=1e-7)
    assert m["rounds"] == 1 and m["dense_rounds"] == 1


def test_perfect_and_worst_rank_metrics():
    assert rank_metrics(torch.tensor([1, 1])) == {"r1": 1.0, "r5": 1.0, "r10": 1.0, "mean_rank": 1.0, "mrr": 1.0}
    assert rank_metrics(torch.tensor([1, 5, 10, 100])) == {
        "r1": 0.25, "r5": 0.5, "r10": 0.75, "mean_rank": 29.0, "mrr": (1 + 0.2 + 0.1 + 0.01) / 4}
    # ideal ordering -> NDCG exactly 1
    assert ndcg(REL.clone(), REL).tolist() == [1.0]


# --- ties, NaN, k = 0, gt -1 ------------------------------------------------------------------------------------
def test_ties_lower_index_first():
    assert scores_to_ranks(torch.tensor([[1.0, 1.0, 0.0, 1.0]])).tolist() == [[1, 2, 4, 3]]
    assert scores_to_ranks(torch.zeros(1, 6)).tolist() == [[1, 2, 3, 4, 5, 6]]
    # constant scorer: order = index order; k = 2, gains rel[0] = 0, rel[1] = 0 -> NDCG 0 (relevant ones at 2, 3)
    assert ndcg(torch.zeros(1, 4), torch.tensor([[0.0, 0.0, 1.0, 0.4]])).tolist() == [0.0]
    # order 0, 1: gains 1.0/1 + 0/log2(3) vs ideal 1.0 + 0.4/log2(3)
    got = ndcg(torch.zeros(1, 4), torch.tensor([[1.0, 0.0, 0.0, 0.4]], dtype=torch.float64)).item()
    assert got == pytest.approx(1.0 / (1.0 + 0.4 / math.log2(3)), rel=1e-12)


def test_nan_scores_refused():
    bad = torch.tensor([[0.1, float("nan"), 0.3]])
    for call in (lambda: scores_to_ranks(bad), lambda: gt_ranks(bad, torch.tensor([0])),
                 lambda: ndcg(bad, torch.ones(1, 3)), lambda: dialog_metrics(bad, torch.tensor([0]))):
        with pytest.raises(MMFuseError, match="NaN"):
            call()


def test_no_relevant_option_is_nan_and_left_out():
    rel = torch.cat([REL, torch.zeros(1, 5), torch.full((1, 5), float("nan"))])
    scores = SCORES.repeat(3, 1)
    per_row = ndcg(scores, rel)
    assert per_row[0].item() == pytest.approx(HAND_NDCG, rel=1e-12)
    assert math.isnan(per_row[1].item()) and math.isnan(per_row[2].item())
    m = dialog_metrics(scores, torch.tensor([2, 2, 2]), rel)
    assert m["dense_rounds"] == 1 and m["ndcg"] == per_row[0].item()
    m = dialog_metrics(scores[1:], torch.tensor([2, 2]), rel[1:])
    assert m["dense_rounds"] == 0 and "ndcg" not in m
    assert "ndcg" not in dialog_metrics(SCORES, torch.tensor([2]))
    # one NaN, on the option ranked last (outside the first k = 4 positions): still no dense annotation -> NaN
    partial = torch.tensor([[float("nan"), 0.0, 0.6, 0.0, 0.2]], dtype=torch.float64)
    assert math.isnan(ndcg(SCORES, partial).item())


def test_rows_without_gt_left_out():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7], [0.9, 0.1, 0.2, 0.3, 0.4], [0.5, 0.4, 0.3, 0.2, 0.1]])
    m = dialog_metrics(scores, torch.tensor([2, -1, 0]))
    # kept ranks: 3 and 1
    assert m == {"r1": 0.5, "r5": 1.0, "r10": 1.0, "mean_rank": 2.0, "mrr": (1 / 3 + 1) / 2,
                 "rounds": 2, "dense_rounds": 0}
    m = dialog_metrics(scores, torch.tensor([-1, -1, -1]), torch.cat([REL] * 3))
    assert m["rounds"] == 0 and "r1" not in m and m["dense_rounds"] == 3


def test_errors():
    with pytest.raises(MMFuseError, match="no ranks"):
        rank_metrics(torch.zeros(0))
    with pytest.raises(MMFuseError, match="gt_index"):
        gt_ranks(SCORES, torch.tensor([5]))
    with pytest.raises(MMFuseError, match="gt_index"):
        gt_ranks(SCORES, torch.tensor([-1]))
    with pytest.raises(MMFuseError, match="shape"):
        ndcg(SCORES, torch.zeros(1, 4))
    with pytest.raises(MMFuseError, match=r"\[N rounds, K options\]"):
        scores_to_ranks(torch.zeros(5))
