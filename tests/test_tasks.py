"""Tasks: retrieval metrics against brute force, InfoNCE, in-batch negatives, ITM / dual encoder as
retrievers, VQA and classification heads, losses and metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmfuse.errors import MMFuseError
from mmfuse.fusion.pooled import MulFusion
from mmfuse.tasks.classification import ClassificationTask
from mmfuse.tasks.contrastive import info_nce
from mmfuse.tasks.gallery import Gallery
from mmfuse.tasks.itm import ITMTask
from mmfuse.tasks.negatives import in_batch_negatives
from mmfuse.tasks.recall import embedding_rows, matrix_rows, recall_at_k, rerank_rows
from mmfuse.tasks.retrieval import DualEncoderTask, ITMRetrievalTask, RetrievalTask
from mmfuse.tasks.vqa import VQATask, dense_targets, vqa_accuracy
from mmfuse.types import PAIR_TYPES, EncoderOutput, LateOutput

# -- retrieval metrics ---------------------------------------------------------------------------------


def brute_force_recall(scores: torch.Tensor, text_image: list[int], ks=(1, 5, 10)) -> dict[str, float]:
    """Independent reference: sort every query's candidates (ties: non-positives first, i.e. against the
    query) and find the position of the first positive."""
    n_i, n_t = scores.shape
    s = scores.tolist()
    out = {}
    first_pos = {"i2t": [], "t2i": []}
    for i in range(n_i):
        order = sorted(range(n_t), key=lambda t: (-s[i][t], text_image[t] == i))
        first_pos["i2t"].append(next((r for r, t in enumerate(order) if text_image[t] == i), n_t))
    for t in range(n_t):
        order = sorted(range(n_i), key=lambda i: (-s[i][t], i == text_image[t]))
        first_pos["t2i"].append(next(r for r, i in enumerate(order) if i == text_image[t]))
    for d in ("i2t", "t2i"):
        for k in ks:
            out[f"{d}_r{k}"] = 100.0 * sum(r < k for r in first_pos[d]) / len(first_pos[d])
    out["rsum"] = sum(v for key, v in out.items() if key != "rsum")
    return out


def coco_like(n_images: int, per_image: int = 5) -> torch.Tensor:
    return torch.arange(n_images).repeat_interleave(per_image)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1024])
def test_recall_matches_brute_force_with_ties(chunk):
    g = torch.Generator().manual_seed(0)
    text_image = coco_like(12)
    scores = torch.randint(0, 4, (12, 60), generator=g).float()  # few values: many ties
    scores[torch.arange(12), torch.arange(12) * 5] += 2.0  # some signal so recalls are not all zero
    got = recall_at_k(matrix_rows(scores), text_image, 12, chunk=chunk)
    assert got == pytest.approx(brute_force_recall(scores, text_image.tolist()))


def test_recall_on_a_scaled_down_5k_by_25k_case_chunked_equals_reference():
    """COCO 5k test shape scaled by 1/10: 500 images, 2,500 captions, 5 per image, shuffled order."""
    g = torch.Generator().manual_seed(1)
    text_image = coco_like(500)[torch.randperm(2500, generator=g)]
    u = F.normalize(torch.randn(500, 16, generator=g), dim=-1)
    v = F.normalize(u[text_image] + 0.4 * torch.randn(2500, 16, generator=g), dim=-1)
    full = u @ v.T
    chunked = recall_at_k(embedding_rows(u, v), text_image, 500, chunk=64)
    assert chunked == pytest.approx(recall_at_k(matrix_rows(full), text_image, 500, chunk=10_000))
    assert chunked == pytest.approx(brute_force_recall(full, text_image.tolist()))
    assert 5 < chunked["t2i_r1"] < 95 and chunked["i2t_r1"] > chunked["t2i_r1"]  # 5 chances vs 1


def test_recall_extremes_and_the_any_caption_rule():
    text_image = coco_like(4, 2)  # texts 0,1 -> image 0; 2,3 -> image 1 ...
    perfect = (torch.arange(4)[:, None] == text_image[None, :]).float()
    assert recall_at_k(matrix_rows(perfect), text_image, 4)["rsum"] == 600.0
    many = coco_like(20, 2)
    constant = torch.zeros(20, 40)
    assert recall_at_k(matrix_rows(constant), many, 20)["rsum"] == 0.0  # ties count against the query
    nan = perfect.clone()
    nan[0, 0] = nan[0, 1] = float("nan")
    assert recall_at_k(matrix_rows(nan), text_image, 4)["i2t_r1"] == 75.0  # NaN is a miss, not a hit
    # image 0: its second caption is 1st, its first caption last: a hit at K=1 (any caption counts)
    s = torch.tensor([[0.0, 9, 5, 4, 3, 2, 1, 0.5]] + [[0.0] * 8] * 3)
    r = recall_at_k(matrix_rows(s), text_image, 4, ks=(1,))
    assert r["i2t_r1"] == 25.0


def test_rerank_scores_only_the_candidates_and_is_exact():
    g = torch.Generator().manual_seed(2)
    text_image = coco_like(30)
    truth = (torch.arange(30)[:, None] == text_image[None, :]).float()
    noisy = truth + 2.0 * torch.rand(30, 150, generator=g)
    calls = []

    def perfect_scorer(i, t):
        calls.append(len(i))
        return truth[i, t]

    reranked = recall_at_k(rerank_rows(matrix_rows(noisy), perfect_scorer, k=20), text_image, 30)
    # a query hits at K <= 20 exactly when a positive is among its 20 candidates
    candidates = recall_at_k(matrix_rows(noisy), text_image, 30, ks=(20,))
    assert reranked["i2t_r1"] == reranked["i2t_r10"] == candidates["i2t_r20"]
    assert reranked["t2i_r1"] == reranked["t2i_r10"] == candidates["t2i_r20"]
    assert sum(calls) == 20 * (30 + 150)  # k pairs per query, both directions
    # re-ranking by the candidates' own scores changes nothing
    same = recall_at_k(rerank_rows(matrix_rows(noisy), lambda i, t: noisy[i, t], k=12), text_image, 30)
    assert same == pytest.approx(recall_at_k(matrix_rows(noisy), text_image, 30))


def test_gallery_drops_duplicates_and_sorts_by_id():
    gal = Gallery(("emb", "tokens", "mask"), pad_to=6)
    gal.update(torch.tensor([3, 1]), emb=torch.tensor([[3.0], [1.0]]), tokens=torch.ones(2, 4, 2),
               mask=torch.ones(2, 4, dtype=torch.bool))
    gal.update(torch.tensor([1, 0]), emb=torch.tensor([[9.0], [0.0]]), tokens=torch.ones(2, 5, 2),
               mask=torch.ones(2, 5, dtype=torch.bool))
    items = gal.items()
    assert items["ids"].tolist() == [0, 1, 3]
    assert items["emb"].flatten().tolist() == [0.0, 1.0, 3.0]  # the first occurrence of id 1 wins
    assert items["tokens"].shape == (3, 6, 2) and items["mask"].sum(1).tolist() == [5, 4, 4]
    with pytest.raises(MMFuseError, match="max_text_tokens"):
        gal.update(torch.tensor([7]), emb=torch.zeros(1, 1), tokens=torch.zeros(1, 7, 2), mask=torch.ones(1, 7))
    gal.reset()
    assert gal.items() is None


# -- contrastive loss and negatives ---------------------------------------------------------------------


def test_info_nce_is_clip_loss_for_distinct_images_and_soft_for_repeats():
    g = torch.Generator().manual_seed(3)
    u, v = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    scale = torch.tensor(10.0)
    logits = 10.0 * F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T
    clip = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6)))
    assert info_nce(u, v, torch.arange(6), scale) == pytest.approx(float(clip), rel=1e-5)
    ids = torch.tensor([0, 0, 1, 2, 3, 4])  # pairs 0 and 1 are two captions of one image
    target = torch.eye(6)
    target[:2, :2] = 0.5
    soft = 0.5 * (-(target * logits.log_softmax(1)).sum(1) - (target * logits.T.log_softmax(1)).sum(1)).mean()
    assert info_nce(u, v, ids, scale) == pytest.approx(float(soft), rel=1e-5)
    u.requires_grad_(True)
    info_nce(u, v, ids, scale).backward()
    w = u.detach().clone().requires_grad_(True)  # the gradient of the reference formula above
    logits = 10.0 * F.normalize(w, dim=-1) @ F.normalize(v, dim=-1).T
    (0.5 * (-(target * logits.log_softmax(1)).sum(1) - (target * logits.T.log_softmax(1)).sum(1)).mean()).backward()
    torch.testing.assert_close(u.grad, w.grad, rtol=1e-5, atol=1e-7)
    assert w.grad.abs().min() > 0


def test_in_batch_negatives_never_pair_an_image_with_its_own_captions():
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    for seed in range(20):
        ni, nt, valid = in_batch_negatives(ids, generator=torch.Generator().manual_seed(seed))
        assert valid.all()
        assert (ids[ni] != ids[nt]).all()
        own = torch.arange(8)
        assert torch.equal(ni[::2], own[::2]) and torch.equal(nt[1::2], own[1::2])  # even: new text, odd: new image
    _, _, valid = in_batch_negatives(torch.tensor([5, 5, 5]))
    assert not valid.any()


def test_hard_negatives_follow_the_scores():
    ids = torch.arange(6)
    scores = torch.zeros(6, 6)
    scores[0, 4] = 50.0  # image 0 is most confusable with text 4
    scores[3, 1] = 50.0  # text 1 is most confusable with image 3
    for seed in range(5):
        ni, nt, _ = in_batch_negatives(ids, scores, torch.Generator().manual_seed(seed))
        assert (ni[0], nt[0]) == (0, 4)
        assert (ni[1], nt[1]) == (3, 1)


# -- ITM and dual encoder as retrievers ---------------------------------------------------------------------


class DotModel(torch.nn.Module):
    """Encoders pass features through; ``MulFusion`` with identity projections: ``z = x ⊙ y``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fusion = MulFusion({"image": dim, "text": dim}, dim=dim, activation="identity")
        with torch.no_grad():
            for proj in (self.fusion.proj_image, self.fusion.proj_text):
                proj.weight.copy_(torch.eye(dim))
                proj.bias.zero_()

    def encode_image(self, batch):
        x = batch["image"]
        return EncoderOutput(x, x[:, None], torch.ones(len(x), 1, dtype=torch.bool))

    def encode_text(self, batch):
        y = batch["text"]
        return EncoderOutput(y, y[:, None], torch.ones(len(y), 1, dtype=torch.bool))

    item_modality = "image"

    def encode(self, modality, batch):
        return self.encode_image(batch) if modality == "image" else self.encode_text(batch)

    def forward(self, batch):
        return self.fusion({"image": self.encode_image(batch), "text": self.encode_text(batch)})


def val_batches(x: torch.Tensor, y: torch.Tensor, text_image: torch.Tensor, size: int):
    for s in range(0, len(y), size):
        t = torch.arange(s, min(s + size, len(y)))
        yield {"image": x[text_image[t]], "text": y[t], "image_id": text_image[t], "text_id": t}


def test_itm_task_scores_every_val_pair_as_a_retriever():
    g = torch.Generator().manual_seed(4)
    text_image = coco_like(10)
    x = torch.randn(10, 6, generator=g)
    y = x[text_image] + 0.8 * torch.randn(50, 6, generator=g)
    model = DotModel(6)
    task = ITMTask(6, "mid", head="linear")
    with torch.no_grad():
        task.head.weight.fill_(1.0)
        task.head.bias.zero_()
    task.eval()
    pos_logits, neg_logits = [], []
    for batch in val_batches(x, y, text_image, 16):
        _, out = task.step(model, batch)
        b = len(batch["text_id"])
        negatives = b if len(batch["image_id"].unique()) > 1 else 0  # the last batch holds one image only
        assert out["labels"].tolist() == [1.0] * b + [0.0] * negatives
        assert out["pair_type"].tolist() == [0] * b + [PAIR_TYPES.index("other")] * negatives
        # head of ones on x ⊙ y: a positive's logit is x·y of its own image and caption
        torch.testing.assert_close(out["logits"][:b], (x[batch["image_id"]] * y[batch["text_id"]]).sum(1))
        pos_logits.append(out["logits"][:b])
        neg_logits.append(out["logits"][b:])
        task.update("val", out, batch)
    task.epoch_end("val", model)
    metrics = {k: float(v) for k, v in task.compute("val").items()}
    expected = recall_at_k(matrix_rows(x @ y.T), text_image, 10)
    assert {k: metrics[f"val/{k}"] for k in expected} == pytest.approx(expected)
    # accuracy counted by hand: a pair matches when its logit > 0 (none is exactly 0: p > 0.5 or >= 0.5 agree)
    pos, neg = torch.cat(pos_logits), torch.cat(neg_logits)
    assert len(pos) == 50 and len(neg) == 48 and not (torch.cat([pos, neg]) == 0).any()
    hits_pos, hits_neg = int((pos > 0).sum()), int((neg < 0).sum())
    assert 0 < hits_pos < 50 and 0 < hits_neg < 48  # neither rule "all match" nor "none" would pass
    assert metrics["val/acc"] == pytest.approx((hits_pos + hits_neg) / 98, rel=1e-6)
    assert metrics["val/acc_positive"] == pytest.approx(hits_pos / 50, rel=1e-6)
    assert metrics["val/acc_other"] == pytest.approx(hits_neg / 48, rel=1e-6)
    task.reset("val")
    assert task.images["val"].items() is None


def test_itm_eval_negatives_are_fixed_and_training_negatives_vary():
    g = torch.Generator().manual_seed(5)
    text_image = coco_like(8)
    x, y = torch.randn(8, 4, generator=g), torch.randn(40, 4, generator=g)
    model, task = DotModel(4), ITMTask(4, "mid")
    batch = next(val_batches(x, y, text_image, 40))
    task.eval()
    a, b = task.step(model, batch)[1]["logits"], task.step(model, batch)[1]["logits"]
    assert torch.equal(a, b)
    task.train()
    draws = {tuple(task.step(model, batch)[1]["logits"][40:].round(decimals=4).tolist()) for _ in range(4)}
    assert len(draws) > 1


def test_itm_training_loss_is_the_mean_over_valid_pairs_with_shapes_fixed_by_the_batch():
    """Training scores every positive's negative (2B pairs, whatever the batch holds: no host sync to count
    them) and weights invalid ones 0; the loss is the mean BCE over the valid pairs, bit for bit what
    scoring only the valid pairs gives. Evaluation keeps only the valid pairs."""
    g = torch.Generator().manual_seed(9)
    model, task = DotModel(4), ITMTask(4, "mid", head="linear")
    task.train()
    for image_id in (coco_like(4, 2), torch.zeros(6, dtype=torch.long)):  # all valid; none valid (one image)
        b = len(image_id)
        batch = {"image": torch.randn(b, 4, generator=g), "text": torch.randn(b, 4, generator=g),
                 "image_id": image_id, "text_id": torch.arange(b)}
        torch.manual_seed(3)
        loss, out = task.step(model, batch)
        assert out["logits"].shape == (2 * b,) and out["labels"].tolist() == [1.0] * b + [0.0] * b
        torch.manual_seed(3)  # the same negatives, scored the old way: only the valid pairs
        neg_image, neg_text, valid = in_batch_negatives(image_id)
        own = torch.arange(b)
        image, text = model.encode_image(batch), model.encode_text(batch)
        logits = task.pair_logits(model, image, text, torch.cat([own, neg_image[valid]]),
                                  torch.cat([own, neg_text[valid]]))
        labels = torch.cat([torch.ones(b), torch.zeros(int(valid.sum()))])
        expected = F.binary_cross_entropy_with_logits(logits, labels)
        assert torch.equal(loss, expected) if bool(valid.all()) else float(loss) == pytest.approx(float(expected), rel=1e-6)
    task.eval()
    _, out = task.step(model, batch)
    assert out["logits"].shape == (b,) and out["labels"].tolist() == [1.0] * b  # no negative in evaluation


def test_itm_with_a_dual_encoder_reranks_when_pairs_exceed_the_budget():
    g = torch.Generator().manual_seed(6)
    text_image = coco_like(12)
    x = torch.randn(12, 6, generator=g)
    y = x[text_image] + 0.5 * torch.randn(60, 6, generator=g)
    model = DotModel(6)
    task = ITMTask(6, "mid", head="linear", contrastive_weight=1.0, image_dim=6, text_dim=6, max_pairs=100,
                   rerank_k=10, embed_dim=6)
    with torch.no_grad():
        task.head.weight.fill_(1.0)
        task.head.bias.zero_()
    task.train()
    loss, out = task.step(model, next(val_batches(x, y, text_image, 60)))
    loss.backward()
    assert task.itc.image.weight.grad is not None and task.itc.image.weight.grad.abs().sum() > 0
    task.eval()
    for batch in val_batches(x, y, text_image, 25):
        task.update("val", task.step(model, batch)[1], batch)
    task.epoch_end("val", model)
    m = {k: float(v) for k, v in task.compute("val").items()}
    u, v = task.itc.embed(x, y)
    dual = recall_at_k(embedding_rows(u, v), text_image, 12, prefix="itc_")
    assert {k: m[f"val/{k}"] for k in dual} == pytest.approx(dual, abs=1e-4)
    rerank = recall_at_k(rerank_rows(embedding_rows(u, v), lambda i, t: (x[i] * y[t]).sum(1), 10), text_image, 12)
    assert {k: m[f"val/{k}"] for k in rerank} == pytest.approx(rerank, abs=1e-4)


def test_labelled_itm_pairs_are_used_as_given():
    model, task = DotModel(3), ITMTask(3, "mid")
    batch = {"image": torch.randn(4, 3), "text": torch.randn(4, 3), "label": torch.tensor([1.0, 0, 1, 0]),
             "image_id": torch.arange(4), "text_id": torch.arange(4)}
    with torch.no_grad():
        loss, out = task.step(model, batch)
    assert out["logits"].shape == (4,) and "labels" not in out
    with torch.no_grad():
        expected = F.binary_cross_entropy_with_logits(task.head(model(batch)).squeeze(-1), batch["label"])
    assert float(loss) == pytest.approx(float(expected))


class LateModel(torch.nn.Module):
    item_modality = "image"

    def __init__(self):
        super().__init__()
        self.fusion = torch.nn.Identity()

    def forward(self, batch):
        return LateOutput(image=batch["image"], text=batch["text"])


def test_dual_encoder_task_loss_and_recalls():
    g = torch.Generator().manual_seed(7)
    text_image = coco_like(9)
    x = torch.randn(9, 5, generator=g)
    y = x[text_image] + 0.7 * torch.randn(45, 5, generator=g)
    task = RetrievalTask(5, "late", temperature=0.1)
    assert isinstance(task, DualEncoderTask) and task.monitor == "val/rsum"
    batch = next(val_batches(x, y, text_image, 45))
    loss, _ = task.step(LateModel(), batch)
    assert float(loss) == pytest.approx(float(info_nce(x[text_image], y, text_image, torch.tensor(10.0))), rel=1e-5)
    task.eval()
    for batch in val_batches(x, y, text_image, 20):
        task.update("val", task.step(LateModel(), batch)[1], batch)
    task.epoch_end("val", LateModel())
    m = {k: float(v) for k, v in task.compute("val").items()}
    cos = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T
    assert {k: m[f"val/{k}"] for k in ("i2t_r1", "t2i_r5", "rsum")} == pytest.approx(
        {k: v for k, v in brute_force_recall(cos, text_image.tolist()).items() if k in ("i2t_r1", "t2i_r5", "rsum")})
    with pytest.raises(MMFuseError, match="fusion=late"):
        task.step(DotModel(5), {"image": x[:2], "text": y[:2], "image_id": torch.arange(2), "text_id": torch.arange(2)})


def test_retrieval_task_with_a_mid_fusion_is_an_itm_scorer_with_a_dual_encoder():
    task = RetrievalTask(32, "mid", image_dim=16, text_dim=8)
    assert isinstance(task, ITMRetrievalTask) and task.monitor == "val/rsum" and task.itc is not None
    assert task.negatives == "hard"
    assert RetrievalTask(32, "mid").itc is None  # built without the encoders' widths: scores all pairs


# -- VQA -------------------------------------------------------------------------------------------


def test_vqa_targets_loss_and_accuracy():
    ids = torch.tensor([[2, 0, -1], [1, -1, -1]])
    scores = torch.tensor([[1.0, 1 / 3, 0.0], [2 / 3, 0.0, 0.0]])
    target = dense_targets(ids, scores, 4)
    assert torch.allclose(target, torch.tensor([[1 / 3, 0, 1, 0], [0, 2 / 3, 0, 0]]))
    logits = torch.tensor([[0.0, 0, 5, 0], [0.0, 0, 0, 9]])
    assert vqa_accuracy(logits, target).tolist() == pytest.approx([1.0, 0.0])
    with pytest.raises(MMFuseError, match="num_answers"):
        dense_targets(torch.tensor([[7]]), torch.tensor([[1.0]]), 4)


class PooledConcat(torch.nn.Module):
    item_modality = "image"

    def __init__(self, late=False):
        super().__init__()
        self.late = late

    def forward(self, batch):
        return LateOutput(image=batch["image"], text=batch["text"]) if self.late else torch.cat([batch["image"], batch["text"]], 1)


@pytest.mark.parametrize("stage", ["mid", "late"])
def test_vqa_task_learns_soft_targets(stage):
    torch.manual_seed(0)
    task = VQATask(4 if stage == "mid" else 2, stage, num_answers=3, head="linear")
    batch = {"image": torch.randn(8, 2), "text": torch.randn(8, 2),
             "answer_ids": torch.tensor([[0, 1]] * 8), "answer_scores": torch.tensor([[1.0, 1 / 3]] * 8),
             "answer_accuracy_ids": torch.tensor([[0, 1]] * 8), "answer_accuracy": torch.tensor([[1.0, 0.3]] * 8)}
    model = PooledConcat(late=stage == "late")
    opt = torch.optim.SGD(task.parameters(), lr=0.5)
    first = None
    for _ in range(50):
        loss, out = task.step(model, batch)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    task.update("val", out, batch)
    m = task.compute("val")
    assert float(loss) < first and float(m["val/vqa_acc"]) == 1.0
    expected = F.binary_cross_entropy_with_logits(task.head(model(batch)), dense_targets(
        batch["answer_ids"], batch["answer_scores"], 3), reduction="none").sum(1).mean()
    assert float(task.step(model, batch)[0]) == pytest.approx(float(expected), rel=1e-5)


# -- classification ----------------------------------------------------------------------------------


def test_multiclass_metrics_match_a_hand_count():
    task = ClassificationTask(3, "mid", num_classes=3)
    logits = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0], [0, 0, 5]])
    target = torch.tensor([0, 1, 0, 2, 2, 2])
    task.update("val", {"logits": logits, "loss": torch.zeros(6)}, {"target": target})
    m = {k: float(v) for k, v in task.compute("val").items()}
    assert m["val/acc"] == pytest.approx(4 / 6)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * 0.5 * 1 / 1.5, 2 * 1 * (2 / 3) / (5 / 3)]  # per class: P, R from the counts
    assert m["val/f1"] == pytest.approx(sum(f1) / 3, rel=1e-4)
    # one-vs-rest AUROC per class (P(positive scored above negative), ties 1/2), then the macro mean:
    # class 0: (3.5 + 1.5) / 8, class 1: 4.5 / 5, class 2: (3 + 3 + 1.5) / 9
    assert m["val/auroc"] == pytest.approx((5 / 8 + 9 / 10 + 7.5 / 9) / 3, rel=1e-6)


def test_multilabel_task_loss_and_metrics():
    task = ClassificationTask(4, "mid", num_classes=2, label_type="multilabel", head="linear")
    batch = {"image": torch.randn(4, 2), "text": torch.randn(4, 2),
             "target": torch.tensor([[1.0, 0], [1, 1], [0, 1], [0, 0]])}
    loss, out = task.step(PooledConcat(), batch)
    expected = F.binary_cross_entropy_with_logits(out["logits"], batch["target"], reduction="none").sum(1).mean()
    assert float(loss) == pytest.approx(float(expected))
    task.update("val", {"logits": torch.tensor([[3.0, -3], [3, 3], [-3, 3], [3, -3]]), "loss": torch.zeros(4)}, batch)
    m = {k: float(v) for k, v in task.compute("val").items()}
    assert m["val/acc"] == pytest.approx(7 / 8)


def test_classification_needs_classes_and_a_known_label_type():
    with pytest.raises(MMFuseError, match="num_classes"):
        ClassificationTask(4, "mid", num_classes=None)
    with pytest.raises(MMFuseError, match="label_type"):
        ClassificationTask(4, "mid", num_classes=3, label_type="none")
    assert math.isclose(len(list(ClassificationTask(4, "late", num_classes=3).head.children())), 2)


class TokenModel(torch.nn.Module):
    """Encoders pass token features through (texts of different lengths); a token-level fusion."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        from mmfuse.fusion.cross import CrossAttentionFusion

        self.fusion = CrossAttentionFusion({"image": dim, "text": dim}, dim=16, heads=2, layers=1, direction="both")

    item_modality = "image"

    def encode(self, modality, batch):
        return self.encode_image(batch) if modality == "image" else self.encode_text(batch)

    def encode_image(self, batch):
        x = batch["image"]
        return EncoderOutput(x.mean(1), x, torch.ones(x.shape[:2], dtype=torch.bool))

    def encode_text(self, batch):
        y, mask = batch["text"], batch["mask"]
        length = int(mask.sum(1).max())  # padded to the batch's longest text, as a tokenizer does
        return EncoderOutput(y[:, 0], y[:, :length], mask[:, :length])


def test_itm_retrieval_with_a_token_fusion_equals_scoring_each_pair_alone():
    torch.manual_seed(8)
    text_image = coco_like(5, 3)
    images = torch.randn(5, 4, 8)
    lengths = torch.randint(2, 9, (15,))
    texts = torch.randn(15, 8, 8)
    mask = torch.arange(8)[None, :] < lengths[:, None]
    model = TokenModel(8).eval()
    task = ITMTask(model.fusion.out_dim, "mid").eval()
    for s in range(0, 15, 4):  # batches whose texts have different padded lengths
        t = torch.arange(s, min(s + 4, 15))
        batch = {"image": images[text_image[t]], "text": texts[t], "mask": mask[t], "image_id": text_image[t],
                 "text_id": t}
        task.update("val", task.step(model, batch)[1], batch)
    task.epoch_end("val", model)
    m = {k: float(v) for k, v in task.compute("val").items()}
    with torch.no_grad():  # every pair alone, unpadded
        scores = torch.tensor([[float(task.head(model.fusion({
            "image": EncoderOutput(images[i].mean(0)[None], images[i][None], torch.ones(1, 4, dtype=torch.bool)),
            "text": EncoderOutput(texts[t, 0][None], texts[t, : lengths[t]][None],
                                  torch.ones(1, int(lengths[t]), dtype=torch.bool))})))
            for t in range(15)] for i in range(5)])
    assert len(scores.unique()) == 75  # no ties: the ranks are all determined by the scores
    expected = recall_at_k(matrix_rows(scores), text_image, 5)
    assert {k: m[f"val/{k}"] for k in expected} == pytest.approx(expected)
