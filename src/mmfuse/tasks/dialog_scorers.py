"""How ``task=dialog`` scores the ``K`` candidate answers of a round (``task.decoder``).

``discriminative`` (``DiscriminativeScorer``; Das et al. 2017's discriminative decoder): the query
``e = head(fusion(image, text)) ∈ R^E`` (late fusion: one head per modality, summed), each distinct
candidate ``c`` encoded by the run's text encoder and projected, ``a_c = W_a pooled(c) ∈ R^E``;
``score_k = <e, a_{options_k}> / sqrt(E)``; loss: cross-entropy over the ``K`` scores with the
ground-truth position as the class. ``history=late``: the history text is encoded by the same text
encoder, ``h = W_h pooled(history)``, and ``e = MLP([e; h])`` (``Linear(2E, E) . ReLU . Linear(E, E)``).

``generative`` (``GenerativeScorer``): a decoder (``conf/decoder``) over the fusion's memory
(``task.memory``, ``mmfuse.decoders.memory``) is trained on the ground-truth answer by teacher forcing
(``mmfuse.tasks.generative.token_loss``, averaged over answer tokens); a candidate's score is its
log-likelihood ``Σ_t log p(c_t | c_<t, memory)`` over its tokens (eos included, bos not), unnormalised
by length as in the VisDial starter code. ``history=late``: the history's token states, projected to the
memory width (``Linear(text_dim, memory_dim)``), are appended to the memory (with their mask).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmfuse.decoders.base import Decoder
from mmfuse.decoders.memory import check_mode, memory_dim, memory_of
from mmfuse.errors import MMFuseError
from mmfuse.tasks.generative import token_loss, trim
from mmfuse.tasks.heads import build_task_head
from mmfuse.types import EncoderOutput

FIRST_PASS = 256  # candidate sequences in the first pass
SCORE_BUDGET = 2**27  # floats per decoder pass when ranking by likelihood (0.5 GB of logits and memory)


def encode_text(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> EncoderOutput:
    """The run's text encoder on ``ids`` / ``mask`` (candidates, histories); one line without one."""
    if "text" not in model.modalities:
        raise MMFuseError("task=dialog encodes candidate answers and histories with the text encoder: configure "
                          "encoder.text (not none)")
    return model.encode("text", {"input_ids": ids, "attention_mask": mask})


def candidate_loss(scores: torch.Tensor, gt_index: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the rows with a known answer (``gt_index >= 0``); 0 when there is none."""
    known = gt_index >= 0
    if not bool(known.any()):
        return scores.sum() * 0.0
    return F.cross_entropy(scores[known].float(), gt_index[known])


class DiscriminativeScorer(nn.Module):
    def __init__(self, in_dim: int, fusion_stage: str, text_dim: int | None, embed_dim: int = 256, head: str = "mlp",
                 hidden_dim: int = 256, dropout: float = 0.0, modalities: Sequence[str] = ("image", "text"),
                 late_history: bool = False) -> None:
        super().__init__()
        if text_dim is None:
            raise MMFuseError("task=dialog task.decoder=discriminative encodes the candidates with the text encoder: "
                              "configure encoder.text (not none)")
        self.embed_dim = int(embed_dim)
        self.head = build_task_head(head, in_dim, self.embed_dim, fusion_stage, hidden_dim, dropout, modalities)
        self.answer = nn.Linear(int(text_dim), self.embed_dim)
        self.history = nn.Linear(int(text_dim), self.embed_dim) if late_history else None
        self.join = nn.Sequential(nn.Linear(2 * self.embed_dim, self.embed_dim), nn.ReLU(),
                                  nn.Linear(self.embed_dim, self.embed_dim)) if late_history else None

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, scores [B, K])``."""
        query = self.head(model(batch))
        if self.history is not None:
            h = self.history(encode_text(model, batch["history_ids"], batch["history_mask"]).pooled)
            query = self.join(torch.cat([query, h], dim=-1))
        answers = self.answer(encode_text(model, batch["option_ids"], batch["option_mask"]).pooled)
        scores = (query @ answers.T / math.sqrt(self.embed_dim)).gather(1, batch["options"])
        return candidate_loss(scores, batch["gt_index"]), scores


class GenerativeScorer(nn.Module):
    def __init__(self, decoder: Decoder, fusion: nn.Module | None = None, memory: str = "auto",
                 label_smoothing: float = 0.0, text_dim: int | None = None, memory_width: int | None = None,
                 late_history: bool = False) -> None:
        super().__init__()
        self.decoder = decoder
        self.memory = check_mode(memory)
        self.label_smoothing = float(label_smoothing)
        width = memory_width if memory_width is not None else (memory_dim(fusion, memory) if fusion is not None else None)
        if late_history and (text_dim is None or width is None):
            raise MMFuseError("task.history=late encodes the history with the text encoder: configure encoder.text")
        self.history = nn.Linear(int(text_dim), int(width)) if late_history else None

    def memory_of(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        memory, mask = memory_of(model.fusion, model.encode_all(batch), self.memory)
        if self.history is not None:
            h = encode_text(model, batch["history_ids"], batch["history_mask"])
            memory = torch.cat([memory, self.history(h.tokens).to(memory.dtype)], dim=1)
            mask = torch.cat([mask, h.mask.bool()], dim=1)
        return memory, mask

    def forward(self, model: nn.Module, batch: dict[str, Any], rank: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(loss on the true answers, scores [B, K] or None when not ranking)``."""
        memory, memory_mask = self.memory_of(model, batch)
        ids, mask = trim(batch["caption_ids"], batch["caption_mask"])
        total, count = token_loss(self.decoder(memory, memory_mask, ids, mask), ids, mask, self.label_smoothing)
        loss = total / count.clamp_min(1)
        return loss, (self.likelihoods(memory, memory_mask, batch) if rank else None)

    def likelihoods(self, memory: torch.Tensor, memory_mask: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """``[B, K]``: the log-likelihood of each row's candidates (module docstring), as
        ``logit[target] - logsumexp(logits)`` per token, in passes of at most ``SCORE_BUDGET`` floats of
        logits and repeated memory (``chunk_size``; the first pass, of ``FIRST_PASS``, measures the logits' width)."""
        options = batch["options"]
        b, k = options.shape
        tokens, token_mask = batch["option_tokens"], batch["option_token_mask"].bool()
        flat = options.reshape(-1)
        rows = torch.arange(b, device=options.device).repeat_interleave(k)
        out = torch.empty(b * k, device=memory.device, dtype=torch.float32)
        start, chunk = 0, FIRST_PASS  # the first pass shows the logits' width, which sizes the others
        while start < b * k:
            part = slice(start, start + chunk)
            ids, mask = tokens[flat[part]], token_mask[flat[part]]
            logits = self.decoder(memory[rows[part]], memory_mask[rows[part]], ids, mask)[:, :-1]
            logp = logits.gather(2, ids[:, 1:, None]).squeeze(2).float() - logits.float().logsumexp(-1)
            out[part] = torch.where(mask[:, 1:], logp, 0.0).sum(1)  # padding may be a banned (-inf) token
            start += chunk
            chunk = chunk_size(tokens.shape[1], logits.shape[-1], memory.shape[1] * memory.shape[2])
        return out.view(b, k)


def chunk_size(length: int, vocabulary: int, memory_floats: int) -> int:
    """Candidate sequences per decoder pass: ``SCORE_BUDGET`` over the floats one costs (its logits,
    ``length × vocabulary``, and its copy of the memory)."""
    return max(1, SCORE_BUDGET // (length * vocabulary + memory_floats))
