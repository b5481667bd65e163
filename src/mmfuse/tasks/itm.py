"""Image-text matching (the seed's task): does this caption describe this image?

``logit = head(fusion(image, text))``, loss ``BCEWithLogits(logit, label)``, ``p = sigmoid(logit)``.
Decision rule, one for every metric: a pair is predicted to match when ``logit > 0`` (``p > 0.5``;
a logit of exactly 0 is a mismatch). It is applied to the logits, not to ``p``: float32 rounds
``sigmoid(logit)`` to exactly 0.5 for small positive logits and to 1.0 above ~16.6.
Metrics: ``acc`` and ``f1`` (positive class: match) under that rule; ``auroc`` from the ranks of the
logits (``mmfuse.tasks.metrics.auroc``, the Mann-Whitney statistic); ``loss``; and ``acc_<type>``, the
accuracy under the same rule per pair type (``positive`` and each kind of negative, see
``mmfuse.types.PAIR_TYPES``), with ``j_<type> = acc_positive + acc_<type> − 1`` for each negative type
(Youden's J: 0 when the model tells that type no better than a constant answer would).
The text is matched with the model's one other modality (``model.item_modality``: an image, a clip or
a sound).

Two kinds of data:
- labelled pairs (batches carry ``label``, e.g. ``data=shapes``, ``data=jsonl labels=match``): used
  as given;
- positive pairs only (COCO, Flickr30k): every positive gets one in-batch negative
  (``negatives=random|hard``, see ``mmfuse.tasks.negatives``; evaluation always uses ``random``
  negatives drawn with a fixed seed, so validation accuracy is comparable across runs). These splits
  are retrieval galleries too: with ``retrieval=true`` the ITM model is scored as a retriever on
  val / test, logging ``i2t_r1/5/10``, ``t2i_r1/5/10`` and ``rsum`` (COCO protocol, see
  ``mmfuse.tasks.recall``). It scores every image-text pair when there are at most ``max_pairs``,
  otherwise it re-ranks the top ``rerank_k`` of a dual encoder.

``contrastive_weight > 0`` adds that dual encoder (ALBEF): linear projections of the two pooled
encoder outputs trained with symmetric InfoNCE (weight ``contrastive_weight``) beside the ITM loss;
its own recalls are logged as ``itc_i2t_r1`` ... and its similarities mine the hard negatives.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score

from mmfuse.errors import MMFuseError
from mmfuse.tasks.base import STAGES, Task
from mmfuse.tasks.contrastive import ContrastiveHeads, info_nce
from mmfuse.tasks.gallery import Gallery
from mmfuse.tasks.heads import SimilarityHead, build_head
from mmfuse.tasks.metrics import GroupedAccuracy, RankAUROC, as_float
from mmfuse.tasks.negatives import KINDS, in_batch_negatives
from mmfuse.tasks.recall import embedding_rows, matrix_rows, recall_at_k, rerank_rows
from mmfuse.types import PAIR_TYPES, EncoderOutput

log = logging.getLogger(__name__)
ENCODER_FIELDS = ("pooled", "tokens", "mask", "itc")  # itc: the dual encoder's embedding


def predict(logits: torch.Tensor) -> torch.Tensor:
    """The decision rule of every ITM metric: ``1`` (match) where ``logit > 0``, else ``0``."""
    return (logits > 0).long()


def select(out: EncoderOutput, index: torch.Tensor) -> EncoderOutput:
    return EncoderOutput(*(t[index] for t in out))


def trim(out: EncoderOutput) -> EncoderOutput:
    """Drop token columns that are padding for every row."""
    length = max(int(out.mask.sum(1).max()), 1) if out.mask.numel() else 1
    return EncoderOutput(out.pooled, out.tokens[:, :length], out.mask[:, :length])


class ITMTask(Task):
    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(self, in_dim: int, fusion_stage: str, head: str = "mlp", hidden_dim: int = 256,
                 dropout: float = 0.0, negatives: str = "random", contrastive_weight: float = 0.0,
                 embed_dim: int = 256, temperature: float = 0.07, retrieval: bool = True,
                 max_pairs: int = 2_000_000, rerank_k: int = 16, chunk_size: int = 8192,
                 max_text_tokens: int = 128, eval_seed: int = 0, image_dim: int | None = None,
                 text_dim: int | None = None) -> None:
        super().__init__()
        if negatives not in KINDS:
            raise MMFuseError(f"task.negatives={negatives!r}: expected one of {KINDS}")
        if rerank_k < 10:
            raise MMFuseError(f"task.rerank_k={rerank_k} must be >= 10 (the largest K of Recall@K)")
        self.head = SimilarityHead() if fusion_stage == "late" else build_head(head, in_dim, 1, hidden_dim, dropout)
        self.negatives = negatives
        self.contrastive_weight = float(contrastive_weight)
        self.itc = None
        if self.contrastive_weight > 0:
            if image_dim is None or text_dim is None:
                raise MMFuseError("task.contrastive_weight > 0 needs the encoders' widths (image_dim, text_dim); "
                                  "build the task through mmfuse.builder, which passes them")
            self.itc = ContrastiveHeads(image_dim, text_dim, embed_dim, temperature)
        self.retrieval = bool(retrieval)
        self.max_pairs = int(max_pairs)
        self.rerank_k = int(rerank_k)
        self.chunk_size = int(chunk_size)
        self.eval_seed = int(eval_seed)
        self.metrics = nn.ModuleDict({
            stage: MetricCollection({
                "acc": BinaryAccuracy(), "auroc": RankAUROC(), "f1": BinaryF1Score(), "loss": MeanMetric()
            }, compute_groups=False)
            for stage in STAGES
        })
        self.by_type = nn.ModuleDict({stage: GroupedAccuracy(PAIR_TYPES) for stage in STAGES})
        self.images = nn.ModuleDict({s: Gallery(ENCODER_FIELDS) for s in STAGES})
        self.texts = nn.ModuleDict({s: Gallery((*ENCODER_FIELDS, "image"), max_text_tokens) for s in STAGES})
        self.recalls: dict[str, dict[str, float]] = {}

    # -- scoring ------------------------------------------------------------------------------------
    def logits(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return self.head(model(batch)).squeeze(-1)

    def pair_logits(self, model: nn.Module, image: EncoderOutput, text: EncoderOutput,
                    image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        """The ITM logit of each pair ``(image[image_idx[p]], text[text_idx[p]])``; "image" is the item the
        text is matched with (``model.item_modality``: an image, a video clip or a sound)."""
        inputs = {model.item_modality: select(image, image_idx), "text": select(text, text_idx)}
        return self.head(model.fusion(inputs)).squeeze(-1)

    def score_pairs(self, model: nn.Module, image: EncoderOutput, text: EncoderOutput,
                    image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        """``pair_logits`` in chunks of ``chunk_size`` pairs, without gradients, at least float32
        (``as_float``: never rounded, so that retrieval ranks the scores the model gave)."""
        with torch.no_grad():
            parts = [as_float(self.pair_logits(model, image, text, image_idx[s:s + self.chunk_size],
                                               text_idx[s:s + self.chunk_size]))
                     for s in range(0, len(image_idx), self.chunk_size)]
        return torch.cat(parts) if parts else torch.zeros(0, device=image.pooled.device)

    def all_pairs(self, b_image: int, b_text: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        grid = torch.cartesian_prod(torch.arange(b_image, device=device), torch.arange(b_text, device=device))
        return grid[:, 0], grid[:, 1]

    # -- training / evaluation steps ----------------------------------------------------------------
    def step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        if "label" in batch:
            logits = self.logits(model, batch)
            per_sample = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float(), reduction="none")
            return per_sample.mean(), {"logits": as_float(logits.detach()), "loss": per_sample.detach()}
        return self._positives_step(model, batch)

    def _negatives(self, model: nn.Module, image: EncoderOutput, text: EncoderOutput,
                   image_ids: torch.Tensor, itc_sim: torch.Tensor | None, batch: dict[str, Any]) -> tuple:
        if not self.training:
            g = torch.Generator().manual_seed(self.eval_seed * 1_000_003 + int(batch["text_id"][0]))
            return (*in_batch_negatives(image_ids, None, g), PAIR_TYPES.index("other"))
        if self.negatives == "random":
            return (*in_batch_negatives(image_ids), PAIR_TYPES.index("other"))
        if itc_sim is None:
            b = len(image_ids)
            ii, tt = self.all_pairs(b, b, image_ids.device)
            itc_sim = self.score_pairs(model, image, text, ii, tt).view(b, b)
        return (*in_batch_negatives(image_ids, itc_sim.detach()), PAIR_TYPES.index("hard"))

    def _positives_step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        image, text = model.encode(model.item_modality, batch), model.encode("text", batch)
        image_ids = batch["image_id"]
        b = len(image_ids)
        loss = torch.zeros((), device=image.pooled.device)
        itc_sim, u, v = None, None, None
        if self.itc is not None:
            u, v = self.itc.embed(image.pooled, text.pooled)
            itc_loss = info_nce(u, v, image_ids, self.itc.scale())
            loss = loss + self.contrastive_weight * itc_loss
            itc_sim = u @ v.T
        neg_image, neg_text, valid, kind = self._negatives(model, image, text, image_ids, itc_sim, batch)
        device = image.pooled.device
        own = torch.arange(b, device=image_ids.device)
        image_idx, text_idx = torch.cat([own, neg_image]), torch.cat([own, neg_text])
        labels = torch.cat([torch.ones(b, device=device), torch.zeros(b, device=device)])  # made there: no copy
        pair_type = torch.cat([torch.zeros(b, dtype=torch.long, device=device),
                               torch.full((b,), kind, dtype=torch.long, device=device)])
        weight = torch.cat([torch.ones(b, dtype=torch.float32, device=device), valid.float().to(device)])
        if not self.training:  # only the valid negatives, so that the metrics count real pairs only
            keep = weight.bool()
            image_idx, text_idx, labels, pair_type = image_idx[keep], text_idx[keep], labels[keep], pair_type[keep]
        logits = self.pair_logits(model, image, text, image_idx, text_idx)
        per_sample = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
        if self.training:  # the mean over the valid pairs, with shapes that do not depend on how many
            loss = loss + (per_sample * weight).mean() * (weight.numel() / weight.sum())
        else:
            loss = loss + per_sample.mean()
        outputs = {"logits": as_float(logits.detach()), "loss": per_sample.detach(), "labels": labels,
                   "pair_type": pair_type, "image": image, "text": text,
                   "itc": (u.detach(), v.detach()) if u is not None else None,
                   "needs_tokens": bool(getattr(model.fusion, "needs_tokens", True))}
        return loss, outputs

    def per_sample(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per pair: ``acc`` (1 when the decision rule is right), ``logit``, ``label``, ``pair_type``."""
        logits = outputs["logits"]
        labels = (outputs["labels"] if "labels" in outputs else batch["label"]).long()
        columns = {"acc": (predict(logits) == labels).float(), "logit": logits.float(), "label": labels}
        pair_type = outputs.get("pair_type", batch.get("pair_type"))
        if pair_type is not None:
            columns["pair_type"] = pair_type.long()
        return columns

    def update(self, stage: str, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        logits = outputs["logits"]
        labels = (outputs["labels"] if "labels" in outputs else batch["label"]).long()
        predicted = predict(logits)
        m = self.metrics[stage]
        m["acc"].update(predicted, labels)  # integer predictions: torchmetrics applies no threshold
        m["f1"].update(predicted, labels)
        m["auroc"].update(logits, labels)
        m["loss"].update(outputs["loss"])
        pair_type = outputs.get("pair_type", batch.get("pair_type"))
        if pair_type is not None:
            self.by_type[stage].update(predicted == labels, pair_type)
        if "image" in outputs and self.retrieval:
            self._collect(stage, outputs, batch)

    def _collect(self, stage: str, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        image, text = outputs["image"], outputs["text"]
        keep_tokens = outputs["needs_tokens"]
        fields_i = {"pooled": image.pooled, **({"tokens": image.tokens, "mask": image.mask} if keep_tokens else {})}
        fields_t = {"pooled": text.pooled, **({"tokens": text.tokens, "mask": text.mask} if keep_tokens else {})}
        if outputs["itc"] is not None:
            fields_i["itc"], fields_t["itc"] = outputs["itc"]
        self.images[stage].update(batch["image_id"], **fields_i)
        self.texts[stage].update(batch["text_id"], image=batch["image_id"], **fields_t)

    # -- epoch end: retrieval -----------------------------------------------------------------------
    def epoch_end(self, stage: str, model: nn.Module) -> None:
        self.recalls.pop(stage, None)
        images, texts = self.images[stage].items(), self.texts[stage].items()
        if images is None or texts is None:
            return
        text_image = torch.searchsorted(images["ids"], texts["image"])
        n_i, n_t = len(images["ids"]), len(texts["ids"])
        image_out = EncoderOutput(images["pooled"], images.get("tokens", images["pooled"][:, None]),
                                  images.get("mask", torch.ones(n_i, 1, dtype=torch.bool, device=text_image.device)))
        text_out = trim(EncoderOutput(texts["pooled"], texts.get("tokens", texts["pooled"][:, None]),
                                      texts.get("mask", torch.ones(n_t, 1, dtype=torch.bool, device=text_image.device))))

        def scorer(i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.score_pairs(model, image_out, text_out, i, t)

        out: dict[str, float] = {}
        dual = embedding_rows(images["itc"], texts["itc"]) if "itc" in images else None
        if dual is not None:
            out.update(recall_at_k(dual, text_image, n_i, prefix="itc_"))
        if n_i * n_t <= self.max_pairs:
            ii, tt = self.all_pairs(n_i, n_t, text_image.device)
            out.update(recall_at_k(matrix_rows(scorer(ii, tt).view(n_i, n_t)), text_image, n_i))
        elif dual is not None:
            out.update(recall_at_k(rerank_rows(dual, scorer, self.rerank_k), text_image, n_i))
        else:
            log.warning("%s retrieval skipped: %d x %d pairs exceed task.max_pairs=%d; set "
                        "task.contrastive_weight>0 to train a dual encoder whose top-%d the ITM model re-ranks",
                        stage, n_i, n_t, self.max_pairs, self.rerank_k)
        self.recalls[stage] = out

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        out = {f"{stage}/{k}": v for k, v in self.metrics[stage].compute().items()}
        if self.by_type[stage].total.sum() > 0:
            by_type = self.by_type[stage].compute()
            out.update({f"{stage}/acc_{k}": v for k, v in by_type.items()})
            if "positive" in by_type:  # Youden's J of each negative type: J_t = acc_positive + acc_t - 1
                out.update({f"{stage}/j_{k}": by_type["positive"] + v - 1 for k, v in by_type.items() if k != "positive"})
        out.update({f"{stage}/{k}": torch.tensor(v) for k, v in self.recalls.get(stage, {}).items()})
        return out

    def reset(self, stage: str) -> None:
        self.metrics[stage].reset()
        self.by_type[stage].reset()
        self.images[stage].reset()
        self.texts[stage].reset()
        self.recalls.pop(stage, None)
