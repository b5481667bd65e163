"""The scalar each explanation method explains, per task: ``target(module, batch) -> Tensor [B]``.

- ``itm`` (and any task with ``logits(model, batch)``): the match logit of each (image, text) pair;
- ``classification`` / ``vqa``: the logit of the class / answer the model predicts, ``max_c head(fused)_c``;
- ``retrieval`` with a late fusion (dual encoder): the cosine similarity ``cos(u, v)`` of the pair's item
  (image, clip or sound) and text embeddings (with another fusion, retrieval's ITM scorer: its match logit).
Generative tasks (captioning, dialog) are not supported yet: one line says so.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mmfuse.errors import MMFuseError


def target(module: Any, batch: dict[str, Any]) -> torch.Tensor:
    task, model = module.task, module.model
    if hasattr(task, "logits"):
        return task.logits(model, batch).float()
    if type(task).__name__ == "DualEncoderTask":
        out = model(batch)
        return F.cosine_similarity(out[model.item_modality].float(), out["text"].float(), dim=-1)
    head = getattr(task, "head", None)
    if head is not None and type(task).__name__ in ("ClassificationTask", "VQATask"):
        return head(model(batch)).float().max(-1).values
    raise MMFuseError(f"mmfuse.explain explains itm, retrieval, classification and vqa runs; this run's task is "
                      f"{type(task).__name__} (captioning / dialog attributions are not supported yet)")
