"""``task=dialog``: visual dialog as the VisDial protocol defines it: rank the ``K`` candidate answers
of each round (VisDial: 100).

Inputs: the image, the question and the dialog's history (the caption and the earlier rounds), the
history encoded as ``task.history`` says (``mmfuse.data.dialog``: ``none``; ``concat``: the last
``task.history_rounds`` rounds joined to the question as one text; ``late``: encoded separately and
fused with the image-question representation). ``task.decoder`` scores the candidates
(``mmfuse.tasks.dialog_scorers``): ``discriminative`` (cross-entropy over the ``K`` scores) or
``generative`` (a decoder of ``conf/decoder`` trained on the true answer; candidates ranked by their
log-likelihood).

Metrics (``mmfuse.tasks.dialog_metrics``, as the VisDial evaluation computes them) over the rounds
with a known answer: ``r1``, ``r5``, ``r10``, ``mean_rank``, ``mrr`` (the monitor, max), and ``ndcg`` over the
rounds with dense relevance; ``loss``. Data with round types (``kind_names``: shapes_dialog's ``image`` /
``history``) also gives ``r1_<kind>``, ``mrr_<kind>`` and ``ndcg_<kind>``. Each round is scored once
(by its ``round_index``), also when evaluation is sharded over several processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from mmfuse.decoders.base import Decoder
from mmfuse.errors import MMFuseError
from mmfuse.tasks.base import STAGES, Task
from mmfuse.tasks.dialog_metrics import dialog_metrics
from mmfuse.tasks.dialog_scorers import DiscriminativeScorer, GenerativeScorer
from mmfuse.tasks.generative import gather_objects

DECODERS = ("discriminative", "generative")
PER_KIND = ("r1", "mrr", "ndcg")


def decoder_mode(decoder: Any) -> str:
    if decoder not in DECODERS:
        raise MMFuseError(f"task.decoder={decoder!r}: expected discriminative (score each candidate answer) or "
                          "generative (a decoder's likelihood of each candidate: also set decoder=transformer | "
                          "hf_cross | prefix_lm)")
    return str(decoder)


class DialogTask(Task):
    monitor = "val/mrr"
    monitor_mode = "max"
    decoder_keyword = "answer_decoder"  # the builder passes the built conf/decoder under this name

    @staticmethod
    def uses_decoder(task_cfg: Any) -> bool:
        return decoder_mode(task_cfg.get("decoder", "discriminative")) == "generative"

    def __init__(self, in_dim: int, fusion_stage: str, decoder: str = "discriminative", history: str = "late",
                 history_rounds: int | None = None, embed_dim: int = 256, head: str = "mlp", hidden_dim: int = 256,
                 dropout: float = 0.0, memory: str = "auto", label_smoothing: float = 0.0,
                 text_dim: int | None = None, modalities: Sequence[str] = ("image", "text"),
                 answer_decoder: Decoder | None = None, memory_width: int | None = None, **_: Any) -> None:
        super().__init__()
        self.mode = decoder_mode(decoder)
        from mmfuse.data.dialog import DialogInputs

        self.inputs = DialogInputs(history=history, rounds=history_rounds)  # checks both
        late = history == "late"
        if self.mode == "generative":
            if answer_decoder is None:
                raise MMFuseError("task.decoder=generative needs a decoder: set decoder=transformer | hf_cross | "
                                  "prefix_lm (or task.decoder=discriminative)")
            width = memory_width if memory_width is not None else int(answer_decoder.memory_dim)
            self.scorer: nn.Module = GenerativeScorer(answer_decoder, memory=memory, label_smoothing=label_smoothing,
                                                      text_dim=text_dim, memory_width=width, late_history=late)
        else:
            self.scorer = DiscriminativeScorer(in_dim, fusion_stage, text_dim, embed_dim, head, hidden_dim, dropout,
                                               modalities, late_history=late)
        self.losses = nn.ModuleDict({s: MeanMetric() for s in STAGES})
        self.kind_names: tuple[str, ...] = ()
        self._rounds: dict[str, dict[int, tuple[torch.Tensor, int, torch.Tensor, int]]] = {s: {} for s in STAGES}
        self._scores: dict[str, dict[str, float]] = {s: {} for s in STAGES}

    @property
    def decoder(self) -> Decoder | None:
        return self.scorer.decoder if isinstance(self.scorer, GenerativeScorer) else None

    def configure_data(self, datamodule: Any) -> None:
        """Before ``setup``: how the data builds each round's text, and the decoder's answer tokens."""
        if not hasattr(datamodule, "dialog"):
            raise MMFuseError(f"task=dialog needs dialog data (data=shapes_dialog | visdial), not "
                              f"data={type(datamodule).__name__}")
        from dataclasses import replace

        decoder = self.decoder
        datamodule.dialog = replace(self.inputs, decoder=decoder.tokenizer if decoder is not None else None,
                                    max_length=int(decoder.max_length) if decoder is not None else 0)

    def attach_data(self, datamodule: Any) -> None:
        names = getattr(datamodule, "kind_names", None)
        self.kind_names = tuple(names()) if callable(names) else ()

    def step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        if "options" not in batch or "gt_index" not in batch:
            raise MMFuseError("task=dialog: the batch has no 'options' / 'gt_index'; use dialog data "
                              "(data=shapes_dialog | visdial) built by mmfuse.builder.build_datamodule")
        if isinstance(self.scorer, GenerativeScorer):
            loss, scores = self.scorer(model, batch, rank=not self.training)
        else:
            loss, scores = self.scorer(model, batch)
        outputs: dict[str, Any] = {"loss": loss.detach()}
        if scores is not None:
            outputs["scores"] = scores.detach().float()
        return loss, outputs

    def update(self, stage: str, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        self.losses[stage].update(outputs["loss"], weight=len(batch["gt_index"]))  # a mean over rounds
        scores, gt, relevance = outputs["scores"].cpu(), batch["gt_index"].cpu(), batch["relevance"].float().cpu()
        kinds = batch["kind"].cpu().tolist()
        for i, row in enumerate(batch["round_index"].tolist()):  # copies: a view would carry its whole batch
            self._rounds[stage][int(row)] = (scores[i].clone(), int(gt[i]), relevance[i].clone(), int(kinds[i]))

    def epoch_end(self, stage: str, model: nn.Module) -> None:
        rounds = dict(gather_objects(sorted(self._rounds[stage].items(), key=lambda kv: kv[0])))
        self._rounds[stage] = {}
        self._scores[stage] = self.score(rounds) if rounds else {}

    def score(self, rounds: Mapping[int, tuple[torch.Tensor, int, torch.Tensor, int]]) -> dict[str, float]:
        """The metrics of the module docstring over ``{round: (scores, gt_index, relevance, kind)}``."""
        rows = [rounds[k] for k in sorted(rounds)]
        scores = torch.stack([r[0] for r in rows])
        gt = torch.tensor([r[1] for r in rows])
        relevance = torch.stack([r[2] for r in rows])
        kinds = torch.tensor([r[3] for r in rows])
        if not bool((gt >= 0).any()):
            return {}  # hidden answers (VisDial test): nothing to score here
        out = _drop_counts(dialog_metrics(scores, gt, relevance))
        for k, name in enumerate(self.kind_names):
            keep = kinds == k  # dialog_metrics leaves out the hidden answers
            if bool(keep.any()):
                part = dialog_metrics(scores[keep], gt[keep], relevance[keep])
                out.update({f"{m}_{name}": part[m] for m in PER_KIND if m in part})
        return out

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        out = {f"{stage}/loss": self.losses[stage].compute()}
        out.update({f"{stage}/{k}": torch.tensor(float(v)) for k, v in self._scores[stage].items()})
        return out

    def reset(self, stage: str) -> None:
        self.losses[stage].reset()
        self._scores[stage] = {}


def _drop_counts(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in ("rounds", "dense_rounds")}
