"""The base of tasks whose output is text a decoder generates (captioning, generative VQA).

A ``GenerativeTask`` holds a ``decoder`` (``conf/decoder``), the generation options (``task.generate``,
``GenerationOptions``) and the memory mode (``task.memory``, ``mmfuse.decoders.memory``). ``step``: the
fusion's memory, the teacher-forced token loss on the batch's ``caption_ids`` / ``caption_mask`` (the
target text, whatever it is: a caption, an answer), and in evaluation one generated text per sample.
``update`` keeps ``{item: decoded text}`` per stage, the item being the batch's ``item_key`` (the image
for captioning, the question for VQA); ``epoch_end`` gathers every process's texts and hands them to
``score(stage, generated) -> {metric: value}``, which a subclass implements; ``compute`` returns the
token-weighted mean loss and those scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from mmfuse.decoders.base import Decoder, GenerationOptions
from mmfuse.decoders.memory import check_mode, memory_of
from mmfuse.errors import MMFuseError
from mmfuse.tasks.base import STAGES, Task


def token_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed cross-entropy over the real targets, their number)``: targets ``ids[:, 1:]`` where
    ``mask[:, 1:]``, predicted by ``logits[:, :-1]``."""
    target, keep = ids[:, 1:], mask[:, 1:].bool()
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, reduction="none",
                         label_smoothing=label_smoothing)
    return (ce * keep).sum(), keep.sum()


def trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns of a target batch that hold a real token in some row."""
    length = max(int(mask.sum(1).max()), 1)
    return ids[:, :length], mask[:, :length].bool()


def gather_objects(items: list[Any]) -> list[Any]:
    """``items`` of every process, concatenated (this process's alone without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    world = torch.distributed.get_world_size()
    gathered: list[list[Any]] = [[] for _ in range(world)]
    torch.distributed.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


class GenerativeTask(Task):
    generative = True
    item_key = "image_id"  # the batch field that names what each generated text is scored against
    name = "this task"     # for messages

    def __init__(self, decoder: Decoder | None, generate: Mapping[str, Any] | None = None, memory: str = "auto",
                 label_smoothing: float = 0.0, needs: str = "set decoder=transformer | hf_cross | prefix_lm") -> None:
        super().__init__()
        if decoder is None:
            raise MMFuseError(f"{self.name} needs a decoder: {needs}")
        self.decoder = decoder
        self.options = GenerationOptions(**dict(generate or {}))
        self.memory = check_mode(memory)
        self.label_smoothing = float(label_smoothing)
        self.losses = nn.ModuleDict({s: MeanMetric() for s in STAGES})
        self._generated: dict[str, dict[int, str]] = {s: {} for s in STAGES}
        self._scores: dict[str, dict[str, float]] = {s: {} for s in STAGES}
        self.last_generated: dict[str, dict[int, str]] = {}

    def score(self, stage: str, generated: dict[int, str]) -> dict[str, float]:
        raise NotImplementedError

    def step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        if "caption_ids" not in batch or self.item_key not in batch:
            raise MMFuseError(f"{self.name}: the batch has no 'caption_ids' / '{self.item_key}'; the data module was "
                              "not set up for it (build it with mmfuse.builder.build_datamodule)")
        memory, memory_mask = memory_of(model.fusion, model.encode_all(batch), self.memory)
        ids, mask = trim(batch["caption_ids"], batch["caption_mask"])
        logits = self.decoder(memory, memory_mask, ids, mask)
        total, count = token_loss(logits, ids, mask, self.label_smoothing)
        loss = total / count.clamp_min(1)
        outputs: dict[str, Any] = {"loss": loss.detach(), "tokens": count}
        if not self.training:
            outputs["generated"] = self.decoder.generate(memory, memory_mask, self.options)
        return loss, outputs

    def update(self, stage: str, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        self.losses[stage].update(outputs["loss"], outputs["tokens"].float())
        tokenizer = self.decoder.tokenizer
        for item, ids in zip(batch[self.item_key].tolist(), outputs["generated"], strict=True):
            self._generated[stage][int(item)] = tokenizer.decode(list(ids))

    def epoch_end(self, stage: str, model: nn.Module) -> None:
        generated = dict(gather_objects(sorted(self._generated[stage].items())))
        self._generated[stage] = {}
        self._scores[stage] = self.score(stage, generated) if generated else {}
        if generated:
            self.last_generated[stage] = generated

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        out = {f"{stage}/loss": self.losses[stage].compute()}
        out.update({f"{stage}/{k}": torch.tensor(float(v)) for k, v in self._scores[stage].items()})
        return out

    def reset(self, stage: str) -> None:
        self.losses[stage].reset()
        self._scores[stage] = {}
