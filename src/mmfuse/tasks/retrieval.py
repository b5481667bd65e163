"""``task=retrieval``: image -> text and text -> image retrieval, Recall@1/5/10 and rsum (COCO protocol).

Two ways to score, picked by the fusion's stage:
- ``fusion=late`` -> ``DualEncoderTask``: the late fusion's two embeddings ``u``, ``v`` are trained
  with symmetric InfoNCE over the batch (``mmfuse.tasks.contrastive``); at evaluation every image and
  text is embedded once and ``S = cos(u, v)`` ranks them, in chunks (``mmfuse.tasks.recall``), in the
  embeddings' own dtype (at least float32).
- any other fusion -> ``ITMRetrievalTask``: the fusion model is an ITM scorer (BCE on positives and
  in-batch hard negatives) trained beside a dual encoder on the pooled encoder outputs (ALBEF); at
  evaluation it scores every pair when there are at most ``max_pairs``, else re-ranks the dual
  encoder's top ``rerank_k`` (so 5k x 25k stays tractable). The dual encoder's own recalls are
  logged as ``itc_*``.

Metrics: ``val/i2t_r1``, ``val/i2t_r5``, ``val/i2t_r10``, ``val/t2i_r1``, ``val/t2i_r5``,
``val/t2i_r10``, ``val/rsum`` (percent; rsum of the six), ``val/loss``. Monitor: ``val/rsum``.
Pairs with ``label`` 0 (labelled data) are left out: retrieval learns from positive pairs.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from mmfuse.errors import MMFuseError
from mmfuse.tasks.base import STAGES, Task
from mmfuse.tasks.contrastive import LogitScale, info_nce
from mmfuse.tasks.gallery import Gallery
from mmfuse.tasks.itm import ITMTask
from mmfuse.tasks.metrics import as_float
from mmfuse.tasks.recall import embedding_rows, recall_at_k
from mmfuse.types import LateOutput

log = logging.getLogger(__name__)


class DualEncoderTask(Task):
    monitor = "val/rsum"
    monitor_mode = "max"

    def __init__(self, in_dim: int, fusion_stage: str = "late", temperature: float = 0.07,
                 learn_temperature: bool = True, chunk_size: int = 1024, **_: Any) -> None:
        super().__init__()
        self.scale = LogitScale(temperature, learn=learn_temperature)
        self.chunk_size = int(chunk_size)
        self.loss = nn.ModuleDict({s: MeanMetric() for s in STAGES})
        self.images = nn.ModuleDict({s: Gallery(("emb",)) for s in STAGES})
        self.texts = nn.ModuleDict({s: Gallery(("emb", "image")) for s in STAGES})
        self.recalls: dict[str, dict[str, float]] = {}

    def step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        out = model(batch)
        if not isinstance(out, LateOutput):
            raise MMFuseError("task=retrieval scores a late fusion as a dual encoder, but this fusion returns "
                              f"a fused vector ({type(model.fusion).__name__}); use fusion=late, or a mid / "
                              "early fusion through task=retrieval's ITM scorer (it is chosen by the stage)")
        keep = batch["label"] > 0.5 if "label" in batch else torch.ones_like(batch["image_id"], dtype=torch.bool)
        item = model.item_modality  # the image, clip or sound the text is matched with
        u, v, ids = out[item][keep], out["text"][keep], batch["image_id"][keep]
        per_pair = info_nce(u, v, ids, self.scale(), reduction="none")
        loss = per_pair.mean() if len(per_pair) else out[item].sum() * 0.0
        return loss, {"loss": per_pair.detach(), "keep": keep,
                      "image": F.normalize(as_float(u.detach()), dim=-1),
                      "text": F.normalize(as_float(v.detach()), dim=-1)}

    def update(self, stage: str, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        keep = outputs["keep"]
        if len(outputs["loss"]):
            self.loss[stage].update(outputs["loss"])
        self.images[stage].update(batch["image_id"][keep], emb=outputs["image"])
        self.texts[stage].update(batch["text_id"][keep], emb=outputs["text"], image=batch["image_id"][keep])

    def epoch_end(self, stage: str, model: nn.Module) -> None:
        self.recalls.pop(stage, None)
        images, texts = self.images[stage].items(), self.texts[stage].items()
        if images is None or texts is None:
            return
        text_image = torch.searchsorted(images["ids"], texts["image"])
        rows = embedding_rows(images["emb"], texts["emb"])
        self.recalls[stage] = recall_at_k(rows, text_image, len(images["ids"]), chunk=self.chunk_size)

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        out = {f"{stage}/loss": self.loss[stage].compute()} if self.loss[stage].update_count else {}
        out.update({f"{stage}/{k}": torch.tensor(v) for k, v in self.recalls.get(stage, {}).items()})
        return out

    def reset(self, stage: str) -> None:
        for part in (self.loss, self.images, self.texts):
            part[stage].reset()
        self.recalls.pop(stage, None)


class ITMRetrievalTask(ITMTask):
    """``ITMTask`` monitored by ``val/rsum`` (see the module docstring)."""

    monitor = "val/rsum"
    monitor_mode = "max"


def RetrievalTask(in_dim: int, fusion_stage: str, temperature: float = 0.07, learn_temperature: bool = True,
                  contrastive_weight: float = 1.0, negatives: str = "hard", head: str = "mlp",
                  hidden_dim: int = 256, dropout: float = 0.0, embed_dim: int = 256, rerank_k: int = 16,
                  max_pairs: int = 2_000_000, chunk_size: int = 8192, max_text_tokens: int = 128,
                  image_dim: int | None = None, text_dim: int | None = None) -> Task:
    """The retrieval task for this fusion stage (see the module docstring). Without the encoders' widths
    (a task built by hand, not by ``mmfuse.builder``) the ITM scorer has no dual encoder beside it and
    scores every pair."""
    if fusion_stage == "late":
        return DualEncoderTask(in_dim, fusion_stage, temperature=temperature, learn_temperature=learn_temperature)
    if image_dim is None or text_dim is None:
        contrastive_weight = 0.0
    return ITMRetrievalTask(in_dim, fusion_stage, head=head, hidden_dim=hidden_dim, dropout=dropout,
                            negatives=negatives, contrastive_weight=contrastive_weight, embed_dim=embed_dim,
                            temperature=temperature, max_pairs=max_pairs, rerank_k=rerank_k,
                            chunk_size=chunk_size, max_text_tokens=max_text_tokens, image_dim=image_dim,
                            text_dim=text_dim)


RetrievalTask.monitor = "val/rsum"  # both of its tasks' (what optimized_metric: null reads)
