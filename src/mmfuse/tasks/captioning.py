"""``task=captioning``: a decoder (``conf/decoder``) generates the caption from what the fusion hands over.

Training: teacher forcing on every reference caption of every image (``mmfuse.data.captioning``); loss
``-(1/N) Σ_{b,t: mask[b,t+1]} log p(ids[b,t+1] | ids[b,:t+1], memory_b)`` over the real target tokens
(``N`` of them: padding is never a target; a prefix LM's visual prefix and the text encoder's prompt
are not targets either). The memory is the fusion's (``task.memory``, ``mmfuse.decoders.memory``)
over the image (and the prompt ``task.prompt`` through the text encoder, when the run has one).

Evaluation: the decoder generates one caption per image (``task.generate``: ``num_beams`` 1 = greedy,
``max_length``, ``min_length``, ``length_penalty``, ``no_repeat_ngram_size``); at the end of the split
``mmfuse.tasks.caption_metrics`` scores them against all the image's references, the COCO way:
``bleu1`` .. ``bleu4``, ``rougeL``, ``cider`` (CIDEr-D, document frequencies of the split's references;
the best checkpoint is picked by ``val/cider``), and ``exact`` (the share of images whose caption equals
one of its references once tokenised). Sanity of generation: ``distinct`` (distinct captions / images),
``repeated_ngrams``, ``mean_length``; the data's own check where it has one (shapes: ``ground_*``,
grounding per attribute). ``loss`` is the teacher-forced loss on each image's first reference.
With more than one process the generated captions of every rank are gathered before scoring.

At the end of training a grid of ``samples`` validation images with their generated and reference
captions is written to ``<run dir>/captions_val.png`` (and logged as a W&B table with ``logger=wandb``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from mmfuse.datamodule import CaptioningTargets
from mmfuse.decoders.base import Decoder, GenerationOptions
from mmfuse.decoders.memory import check_mode, memory_of
from mmfuse.errors import MMFuseError
from mmfuse.tasks.base import STAGES, Task
from mmfuse.tasks.caption_metrics import caption_scores, generation_sanity, ptb_tokenize

log = logging.getLogger(__name__)


def token_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed cross-entropy over the real targets, their number)``: targets ``ids[:, 1:]`` where
    ``mask[:, 1:]``, predicted by ``logits[:, :-1]``."""
    target, keep = ids[:, 1:], mask[:, 1:].bool()
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, reduction="none",
                         label_smoothing=label_smoothing)
    return (ce * keep).sum(), keep.sum()


def trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns of a caption batch that hold a real token in some row."""
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


class CaptioningTask(Task):
    monitor = "val/cider"
    monitor_mode = "max"
    generative = True

    def __init__(self, in_dim: int, fusion_stage: str, decoder: Decoder, generate: Mapping[str, Any] | None = None,
                 prompt: str = "a picture of", memory: str = "auto", label_smoothing: float = 0.0,
                 samples: int = 16, **_: Any) -> None:
        super().__init__()
        if decoder is None:
            raise MMFuseError("task=captioning needs a decoder: set decoder=transformer | hf_cross | prefix_lm")
        self.decoder = decoder
        self.options = GenerationOptions(**dict(generate or {}))
        self.prompt = str(prompt)
        self.memory = check_mode(memory)
        self.label_smoothing = float(label_smoothing)
        self.samples = int(samples)
        self.losses = nn.ModuleDict({s: MeanMetric() for s in STAGES})
        self._generated: dict[str, dict[int, str]] = {s: {} for s in STAGES}
        self._scores: dict[str, dict[str, float]] = {s: {} for s in STAGES}
        self.last_generated: dict[str, dict[int, str]] = {}
        self.references: dict[str, list[list[str]]] = {}
        self.diagnostics: dict[str, Any] = {}
        self.images: dict[str, Any] = {}

    @property
    def max_caption_tokens(self) -> int:
        """The longest training caption in tokens, bos and eos included: the decoder's ``max_length``."""
        return int(self.decoder.max_length)

    def configure_data(self, datamodule: Any) -> None:
        """Before ``setup``: the data turns its splits into captioning pairs for this decoder and prompt."""
        datamodule.captioning = CaptioningTargets(self.decoder.tokenizer, self.max_caption_tokens, self.prompt)

    def attach_data(self, datamodule: Any) -> None:
        """The data's references, checks and raw images per split (``MMFuseDataModule.captioning_splits``)."""
        self.references = datamodule.caption_references_of
        self.images = datamodule.caption_images
        self.diagnostics = {name: datamodule.caption_diagnostics(name) for name in self.references}

    def memory_for(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return memory_of(model.fusion, model.encode_all(batch), self.memory)

    def step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        if "caption_ids" not in batch:
            raise MMFuseError("task=captioning: the batch has no 'caption_ids'; the data module was not set up for "
                              "captioning (build it with mmfuse.builder.build_datamodule)")
        memory, memory_mask = self.memory_for(model, batch)
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
        for image_id, ids in zip(batch["image_id"].tolist(), outputs["generated"], strict=True):
            self._generated[stage][int(image_id)] = tokenizer.decode(list(ids))

    def epoch_end(self, stage: str, model: nn.Module) -> None:
        generated = dict(gather_objects(sorted(self._generated[stage].items())))
        self._generated[stage] = {}
        if not generated:
            self._scores[stage] = {}
            return
        refs = self.references.get(stage)
        if refs is None:
            raise MMFuseError(f"task=captioning: no references for the {stage} split (attach_data was not called)")
        ids = sorted(generated)
        texts = [generated[i] for i in ids]
        scores = caption_scores({i: generated[i] for i in ids}, {i: refs[i] for i in ids})
        scores.update(generation_sanity(texts))
        scores["exact"] = sum(ptb_tokenize(generated[i]) in {ptb_tokenize(r) for r in refs[i]} for i in ids) / len(ids)
        check = self.diagnostics.get(stage)
        if check is not None:
            scores.update(check(ids, texts))
        self._scores[stage] = scores
        self.last_generated[stage] = generated

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        out = {f"{stage}/loss": self.losses[stage].compute()}
        out.update({f"{stage}/{k}": torch.tensor(float(v)) for k, v in self._scores[stage].items()})
        return out

    def reset(self, stage: str) -> None:
        self.losses[stage].reset()
        self._scores[stage] = {}

    def fit_end(self, run_dir: Path, loggers: list[Any]) -> Path | None:
        """The grid of the first ``samples`` validation images of the last validation (rank 0)."""
        generated = self.last_generated.get("val")
        if not generated or self.samples <= 0 or "val" not in self.images:
            return None
        from mmfuse.tasks.caption_samples import caption_grid, wandb_caption_table

        ids = sorted(generated)[: self.samples]
        images = [self.images["val"].load(i) for i in ids]
        texts = [generated[i] for i in ids]
        refs = [self.references["val"][i] for i in ids]
        path = caption_grid(images, texts, refs, Path(run_dir) / "captions_val.png")
        wandb_caption_table(loggers, images, texts, refs)
        log.info("captions of %d validation images: %s", len(ids), path)
        return path
