"""Image-text retrieval Recall@K under the COCO protocol, computed in chunks.

Setting: ``N_i`` images, ``N_t`` texts, ``text_image[t]`` the image that text ``t`` describes (COCO: 5
texts per image), ``S[i, t]`` a score (higher = better match).

- text -> image (``t2i``): query ``t`` hits at ``K`` if its image is among the ``K`` best images;
- image -> text (``i2t``): query ``i`` hits at ``K`` if ANY of its texts is among the ``K`` best texts.

Ties count against the query: with ``s*`` the best score of a positive, the query's rank is the
number of non-positive candidates scoring ``>= s*`` (a constant scorer gets R@K = 0, not 100). A
NaN score counts as ``-inf``. Scores are compared in their own dtype (``as_float``: float32 / float64
as they are, never rounded to float32, which would tie float64 scores that differ by 1e-9).
``R@K = 100 * hits / queries`` (percent, as retrieval papers report); ``rsum`` is the sum of the six
recalls at K = 1, 5, 10.

Memory: only ``[chunk, N]`` rows of ``S`` exist at a time, so 5k images x 25k texts fits anywhere.
``rows(direction, queries) -> [len(queries), N]`` computes the score rows of a chunk of queries
(images for ``i2t`` against all texts, texts for ``t2i`` against all images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mmfuse.tasks.metrics import as_float

Rows = Callable[[str, torch.Tensor], torch.Tensor]
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (image_idx [P], text_idx [P]) -> [P]
KS = (1, 5, 10)
DIRECTIONS = ("i2t", "t2i")


def _ranks(rows: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """For each row: the number of non-positive entries scoring ``>=`` the best positive."""
    rows = torch.nan_to_num(as_float(rows), nan=float("-inf"))
    best = rows.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
    return ((rows >= best) & ~positive).sum(dim=1)


def query_ranks(rows: Rows, text_image: torch.Tensor, n_images: int, direction: str,
                chunk: int = 1024) -> torch.Tensor:
    """Rank (see ``_ranks``) of every query: images for ``i2t``, texts for ``t2i``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: expected one of {DIRECTIONS}")
    device = text_image.device
    images = torch.arange(n_images, device=device)
    queries = images if direction == "i2t" else torch.arange(len(text_image), device=device)
    out = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        if direction == "i2t":
            positive = text_image[None, :] == q[:, None]
        else:
            positive = images[None, :] == text_image[q][:, None]
        out.append(_ranks(rows(direction, q), positive))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=device)


def recall_at_k(rows: Rows, text_image: torch.Tensor, n_images: int, ks: Sequence[int] = KS,
                chunk: int = 1024, prefix: str = "") -> dict[str, float]:
    """``{prefix}i2t_r{K}``, ``{prefix}t2i_r{K}`` (percent) and ``{prefix}rsum``."""
    out: dict[str, float] = {}
    for direction in DIRECTIONS:
        ranks = query_ranks(rows, text_image, n_images, direction, chunk)
        for k in ks:
            out[f"{prefix}{direction}_r{k}"] = 100.0 * float((ranks < k).float().mean()) if len(ranks) else 0.0
    out[f"{prefix}rsum"] = sum(out[f"{prefix}{d}_r{k}"] for d in DIRECTIONS for k in ks)
    return out


def matrix_rows(scores: torch.Tensor) -> Rows:
    """``rows`` of a full score matrix ``S [N_i, N_t]``."""
    return lambda direction, q: scores[q] if direction == "i2t" else scores[:, q].T


def embedding_rows(image_emb: torch.Tensor, text_emb: torch.Tensor) -> Rows:
    """``rows`` of a dual encoder, ``S = U V^T`` (pass L2-normalised rows for cosine similarity)."""
    return lambda direction, q: image_emb[q] @ text_emb.T if direction == "i2t" else text_emb[q] @ image_emb.T


def dense_ranks(rows: torch.Tensor) -> torch.Tensor:
    """Per row, each entry's dense rank from the top: 0 for the highest value, +1 for each smaller
    distinct value; equal values share a rank (so ties stay ties)."""
    values, order = rows.sort(dim=1, descending=True)
    step = torch.zeros_like(values, dtype=torch.long)
    step[:, 1:] = values[:, 1:] != values[:, :-1]
    return torch.empty_like(step).scatter_(1, order, step.cumsum(dim=1))


def rerank_rows(candidates: Rows, scorer: PairScorer, k: int) -> Rows:
    """Each query's top-``k`` items under ``candidates`` (a dual encoder), ordered by ``scorer`` (e.g.
    an ITM model), ranked above all other items, which keep their candidate order. So R@K is the
    re-ranker's for ``K <= k`` and exact for every K; only ``k`` pairs per query are scored.

    Rows: the pair scores for the top ``k``; for every other item ``floor(min pair score) - 1 - d``,
    ``d`` its dense rank under ``candidates`` (``dense_ranks``), in the wider of the two scores' dtypes.
    Integer keys, so candidate scores that differ by one ulp stay apart and equal ones stay tied (exact
    while ``|min pair score| + items < 2^24`` in float32, ``2^53`` in float64). A NaN candidate score
    counts as ``-inf``, as in ``_ranks``.
    """

    def rows(direction: str, q: torch.Tensor) -> torch.Tensor:
        base = torch.nan_to_num(as_float(candidates(direction, q)), nan=float("-inf"))
        kk = min(k, base.shape[1])
        top = base.topk(kk, dim=1).indices
        qq = q[:, None].expand(-1, kk).reshape(-1)
        if direction == "i2t":
            pair = scorer(qq, top.reshape(-1))
        else:
            pair = scorer(top.reshape(-1), qq)
        dtype = torch.promote_types(base.dtype, as_float(pair).dtype)
        pair = pair.view(len(q), kk).to(dtype)
        below = pair.amin(dim=1, keepdim=True).floor() - 1 - dense_ranks(base).to(dtype)
        return below.scatter(1, top, pair)

    return rows
