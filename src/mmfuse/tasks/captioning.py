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

from mmfuse.datamodule import CaptioningTargets
from mmfuse.decoders.base import Decoder
from mmfuse.errors import MMFuseError
from mmfuse.tasks.caption_metrics import caption_scores, generation_sanity, ptb_tokenize
from mmfuse.tasks.generative import GenerativeTask

log = logging.getLogger(__name__)


class CaptioningTask(GenerativeTask):
    monitor = "val/cider"
    monitor_mode = "max"
    name = "task=captioning"

    def __init__(self, in_dim: int, fusion_stage: str, decoder: Decoder | None = None,
                 generate: Mapping[str, Any] | None = None, prompt: str = "a picture of", memory: str = "auto",
                 label_smoothing: float = 0.0, samples: int = 16, **_: Any) -> None:
        super().__init__(decoder, generate, memory, label_smoothing)
        self.prompt = str(prompt)
        self.samples = int(samples)
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

    def score(self, stage: str, generated: dict[int, str]) -> dict[str, float]:
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
        return scores

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
