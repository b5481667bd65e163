"""The loop a researcher would write by hand, for the parity check and the overhead benchmark.

Plain PyTorch, no Lightning: the same model (``mmfuse.builder.build_model`` builds pure ``nn.Module``s
with the same seed, so the same initial weights), the same training pairs as plain tensors, the same
data order (each epoch a permutation drawn from ``seed + epoch``, cut into consecutive batches: what
``mmfuse.data.samplers.TrainOrder`` does on one process), AdamW with the same per-part learning rates
(``lr_mult``) and the warm-up + cosine schedule stepped every batch, BCE on labelled pairs (shapes).

``cached=True`` (both encoders frozen): the loop first runs the frozen encoders once over the unique
images and texts (``torch.no_grad``, batches of 256) and then trains the fusion and head on the
pooled features, as one would by hand.

``hand_train(cfg, steps)`` returns the loss of each step and the start time of each step
(``time.perf_counter``; a step = gather the batch, forward, backward, optimizer and scheduler step).
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmfuse.builder import build_model
from mmfuse.optim import warmup_cosine
from mmfuse.types import EncoderOutput


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_pairs(cfg: DictConfig, model: Any) -> dict[str, Any]:
    """The training split as tensors: unique images (uint8), tokenized unique texts, pair indices, labels."""
    datamodule = instantiate(cfg.data)
    datamodule.attach(model.image_encoder.transform, model.text_encoder.tokenizer)
    datamodule.setup("fit")  # no feature cache here: the hand loop does its own
    split = datamodule.splits["train"]
    return {"images": split.images.images, "transform": split.transform, "text": split.text,
            "image_index": split.image_index, "text_index": split.text_index, "label": split.fields["label"]}


@torch.no_grad()
def encode_all(model: Any, data: dict[str, Any], batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    images, ids, mask = data["images"], data["text"]["input_ids"], data["text"]["attention_mask"]
    image = torch.cat([model.image_encoder(data["transform"](images[s:s + batch])).pooled
                       for s in range(0, len(images), batch)])
    text = []
    for s in range(0, len(ids), batch):
        n = max(int(mask[s:s + batch].sum(1).max()), 1)
        text.append(model.text_encoder(ids[s:s + batch, :n], mask[s:s + batch, :n]).pooled)
    return image, torch.cat(text)


def param_groups(model: Any, task: Any, lr: float, lr_mult: dict[str, float]) -> list[dict[str, Any]]:
    parts = {"image_encoder": model.image_encoder, "text_encoder": model.text_encoder, "fusion": model.fusion,
             "head": task}
    groups = []
    for name, part in parts.items():
        params = [p for p in part.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr * lr_mult.get(name, 1.0)})
    return groups


def prepare(cfg: DictConfig) -> tuple[Any, Any, dict[str, Any]]:
    """Seeded like mmfuse's run: the model and task (train mode) and the training pairs."""
    seed_all(int(cfg.seed))
    model, task = build_model(cfg)
    data = training_pairs(cfg, model)
    model.train()
    task.train()
    return model, task, data


def optimizer_and_scheduler(cfg: DictConfig, model: Any, task: Any, n: int) -> tuple[Any, Any]:
    """AdamW over the per-part groups and the warm-up + cosine schedule over the run's optimizer steps."""
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    lr_mult = OmegaConf.to_container(cfg.lr_mult) if cfg.get("lr_mult") else {}
    optimizer = torch.optim.AdamW(param_groups(model, task, opt_cfg["lr"], lr_mult), lr=opt_cfg["lr"],
                                  weight_decay=opt_cfg["weight_decay"])
    total = int(cfg.trainer.max_epochs) * math.ceil(n / int(cfg.data.batch_size))
    if cfg.trainer.get("max_steps", -1) not in (None, -1):
        total = min(total, int(cfg.trainer.max_steps))
    scheduler = warmup_cosine(optimizer, total_steps=total,
                              warmup_fraction=float(cfg.scheduler.get("warmup_fraction", 0.05)))
    return optimizer, scheduler


def hand_train(cfg: DictConfig, steps: int, cached: bool = False) -> tuple[list[float], list[float]]:
    seed = int(cfg.seed)
    model, task, data = prepare(cfg)
    if cached:
        image_feats, text_feats = encode_all(model, data)
    n, bs = len(data["label"]), int(cfg.data.batch_size)
    optimizer, scheduler = optimizer_and_scheduler(cfg, model, task, n)
    ids, mask = data["text"]["input_ids"], data["text"]["attention_mask"]
    empty = torch.zeros(bs, 0, 1)
    losses, starts = [], []
    epoch = 0
    while len(losses) < steps:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for idx in order.split(bs):
            if len(losses) == steps:
                break
            starts.append(time.perf_counter())
            img_i, txt_i = data["image_index"][idx], data["text_index"][idx]
            if cached:
                b = len(idx)
                image = EncoderOutput(image_feats[img_i], empty[:b], empty[:b, :, 0].bool())
                text = EncoderOutput(text_feats[txt_i], empty[:b], empty[:b, :, 0].bool())
            else:
                m = mask[txt_i]
                length = max(int(m.sum(1).max()), 1)
                image = model.image_encoder(data["transform"](data["images"][img_i]))
                text = model.text_encoder(ids[txt_i, :length], m[:, :length])
            logits = task.head(model.fusion({"image": image, "text": text})).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(logits.float(), data["label"][idx].float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.detach())
        epoch += 1
    starts.append(time.perf_counter())
    return [float(v) for v in losses], starts
