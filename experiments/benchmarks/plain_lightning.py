"""The hand loop's cached-features regime as a minimal LightningModule: Lightning's own per-step cost.

The same model, features, data order, optimizer and schedule as ``handloop.hand_train(cached=True)``,
with no mmfuse code in the step: a DataLoader over the epoch's permutation cut into index batches, a
``training_step`` that computes the BCE of the fusion + head on the gathered features, Lightning's
automatic optimisation; no logging, validation, checkpoints or progress bar. In ``overhead.py`` the gap
between this and the hand loop is what Lightning costs per step; the gap between mmfuse and this is
what mmfuse adds on top.

``plain_lightning_train(cfg, steps)`` returns the loss of each step and ``common.StepTimer``'s record.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from common import StepTimer, timer_stats
from handloop import encode_all, optimizer_and_scheduler, prepare
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler

from mmfuse.types import EncoderOutput


class EpochPermutation(Sampler):
    """Each epoch ``randperm(n)`` drawn from ``seed + epoch``, cut into index batches (the hand loop's order)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Any:
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
                    .split(self.batch_size))


class PooledPairs(Dataset):
    """Item = a batch: ``(image features, text features, labels)`` of the pairs in an index tensor."""

    def __init__(self, image: torch.Tensor, text: torch.Tensor, data: dict[str, Any]) -> None:
        self.image, self.text, self.data = image, text, data

    def __len__(self) -> int:
        return len(self.data["label"])

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.image[self.data["image_index"][idx]], self.text[self.data["text_index"][idx]],
                self.data["label"][idx])


class PlainModule(L.LightningModule):
    def __init__(self, model: Any, task: Any, cfg: DictConfig, n: int) -> None:
        super().__init__()
        self.model, self.task, self.cfg, self.n = model, task, cfg, n
        self.losses: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        image, text, label = batch
        empty = image.new_zeros((len(label), 0, image.shape[1]))
        no_mask = torch.zeros((len(label), 0), dtype=torch.bool)
        fused = self.model.fusion({"image": EncoderOutput(image, empty, no_mask), "text": EncoderOutput(text, empty, no_mask)})
        loss = F.binary_cross_entropy_with_logits(self.task.head(fused).squeeze(-1).float(), label.float())
        self.losses.append(loss.detach())
        return loss

    def configure_optimizers(self) -> Any:
        optimizer, scheduler = optimizer_and_scheduler(self.cfg, self.model, self.task, self.n)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def plain_lightning_train(cfg: DictConfig, steps: int) -> tuple[list[float], dict[str, float]]:
    model, task, data = prepare(cfg)
    image, text = encode_all(model, data)
    n = len(data["label"])
    module = PlainModule(model, task, cfg, n)
    loader = DataLoader(PooledPairs(image, text, data), batch_size=None,
                        sampler=EpochPermutation(n, int(cfg.data.batch_size), int(cfg.seed)))
    with tempfile.TemporaryDirectory() as tmp:
        timer = StepTimer(str(Path(tmp) / "timer.json"))
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, default_root_dir=tmp, callbacks=[timer])
        trainer.fit(module, train_dataloaders=loader)
        stats = timer_stats(Path(tmp) / "timer.json")
    return [float(v) for v in module.losses], stats
