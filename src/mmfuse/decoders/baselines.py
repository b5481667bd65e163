"""Non-parametric caption baselines: ``decoder=most_frequent`` and ``decoder=nearest``.

Neither learns anything; both answer with a *training caption*. They see the training data through the
task's teacher-forced steps: every ``forward`` in train mode records ``(pooled memory, caption words)`` of
the batch in a pending bank, and the first switch to eval mode (``.eval()``, as before validation) makes
the pending bank *the* bank; the next ``forward`` in train mode starts a new one. So the bank holds the
training pairs of the last completed epoch (all of them: ``data.captioning`` gives one pair per (image,
reference)). ``forward`` returns all-zero logits ``+ 0 * anchor`` (one dummy parameter): the task's loss is
``log V`` (``V`` = the fitted vocabulary), finite, and ``backward`` works. The vocabulary and the bank are
in the state dict (``get_extra_state``), so ``eval.py`` on a checkpoint generates the same captions.

- pooled memory: ``v = Σ_m mask_m memory_m / Σ_m mask_m`` (the masked mean), stored in float32;
- captions: the words of ``WordCaptionTokenizer`` (``split_words``: lower case, letters and digits,
  punctuation dropped; the normalisation the metrics' PTB tokenisation agrees with on COCO), i.e. the
  encoded ids without bos / eos / padding (cut at ``max_length - 2`` words like every training caption);
- *images*: bank entries with bit-identical pooled vectors are one image with several captions (frozen,
  cached features: the 5 references of a COCO image; features that change every step make every pair
  its own image). Images are ordered by their sorted caption lists, captions within an image sorted, so
  the bank and every tie-break below do not depend on the training order.

``most_frequent``: every image gets the caption (word sequence) that occurs most often among the bank's
pairs; ties: the alphabetically first of the joined words.

``nearest`` (Devlin et al. 2015, "Exploring nearest neighbor approaches for image captioning"): the ``k``
training images with the highest cosine ``v_q · v_i / (|v_q| |v_i|)`` (computed in float64; ties: bank
order). ``consensus=false``: the first caption of the nearest image (k > 1 changes nothing then).
``consensus=true``: the captions of the ``k`` images are pooled (``C``, with repeats) and the answer is
``argmax_{c ∈ C} (1 / (|C| - 1)) Σ_{r ∈ C, r ≠ c} BLEU4(c | r)`` (ties: the first in pool order, nearest
image first); ``BLEU4`` is sentence BLEU of ``c`` against the single reference ``r``:
``BP · exp(¼ Σ_{n=1..4} log p_n)``, ``p_1 = m_1 / c_1``, ``p_n = (m_n + 1) / (c_n + 1)`` for ``n > 1``
(Lin & Och 2004 add-one smoothing; ``m_n`` clipped n-gram matches, ``c_n`` candidate n-grams),
``BP = min(1, exp(1 - |r| / |c|))``; 0 for an empty ``c`` or ``m_1 = 0``. BLEU rather than CIDEr-D: CIDEr's
tf-idf needs document frequencies, which a pool of 5-25 captions does not give. With ``k=1`` this is the
consensus caption among the nearest image's own references. A pool of one caption returns it.

Single process only: with DDP each rank would bank its own share of the training pairs.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch
from torch import nn

from mmfuse.decoders.base import Decoder, GenerationOptions
from mmfuse.decoders.words import WordCaptionTokenizer
from mmfuse.errors import MMFuseError

Caption = tuple[int, ...]


def pooled(memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
    """The masked mean of the memory over its positions, ``[B, D]``."""
    w = memory_mask.to(memory.dtype).unsqueeze(-1)
    return (memory * w).sum(1) / w.sum(1).clamp_min(1)


def caption_words(ids: torch.Tensor, mask: torch.Tensor) -> list[Caption]:
    """Each row's word ids: ``bos w1 .. wn eos pad ..`` -> ``(w1, .., wn)``."""
    lengths = mask.long().sum(1).tolist()
    return [tuple(row[1: n - 1]) for row, n in zip(ids.tolist(), lengths, strict=True)]


def ngrams(words: Caption, n: int) -> Counter:
    return Counter(words[i: i + n] for i in range(len(words) - n + 1))


def sentence_bleu(candidate: Caption, reference: Caption) -> float:
    """Smoothed sentence BLEU-4 of ``candidate`` against one reference (formula in the module docstring)."""
    c_len = len(candidate)
    if c_len == 0:
        return 0.0
    log_p = 0.0
    for n in range(1, 5):
        cand, ref = ngrams(candidate, n), ngrams(reference, n)
        matches = sum(min(k, ref[g]) for g, k in cand.items())
        total = max(c_len - n + 1, 0)
        if n == 1:
            if matches == 0:
                return 0.0
            log_p += math.log(matches / total)
        else:
            log_p += math.log((matches + 1) / (total + 1))
    bp = min(1.0, math.exp(1 - len(reference) / c_len))
    return bp * math.exp(log_p / 4)


def consensus(pool: list[Caption]) -> Caption:
    """The caption of ``pool`` with the highest mean ``sentence_bleu`` to the others (first on ties)."""
    if len(pool) == 1:
        return pool[0]
    best, best_score = pool[0], -1.0
    for i, c in enumerate(pool):
        score = sum(sentence_bleu(c, r) for j, r in enumerate(pool) if j != i) / (len(pool) - 1)
        if score > best_score:
            best, best_score = c, score
    return best


class BankDecoder(Decoder):
    """What both baselines share: the tokenizer, the bank of training pairs, the zero logits."""

    def __init__(self, memory_dim: int, max_length: int = 32, max_vocab: int = 4096) -> None:
        super().__init__()
        self.memory_dim = int(memory_dim)
        self.max_length = int(max_length)
        self.tokenizer = WordCaptionTokenizer(max_vocab)
        self.anchor = nn.Parameter(torch.zeros(()))  # so that the loss has a gradient path (always 0)
        self.bank_vectors = torch.zeros(0, self.memory_dim)  # [N images, D]
        self.bank_captions: list[list[Caption]] = []  # per image, its captions (sorted)
        self._pending: list[tuple[torch.Tensor, list[Caption]]] = []
        self._collecting = False

    # -- the bank ---------------------------------------------------------------------------------
    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor, ids: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = ids != self.tokenizer.pad_id
        if self.training:
            if not self._collecting:  # first training step since the last eval: a new epoch
                self._pending, self._collecting = [], True
            self._pending.append((pooled(memory, memory_mask).detach().float().cpu(), caption_words(ids, mask)))
        n = len(self.tokenizer.vocab) or self.tokenizer.vocab_size
        return memory.new_zeros(ids.shape[0], ids.shape[1], n) + 0 * self.anchor

    def train(self, mode: bool = True) -> BankDecoder:
        if not mode and self._collecting:
            self.bank_vectors, self.bank_captions = self._build_bank(self._pending)
            self._pending, self._collecting = [], False
        return super().train(mode)

    def _build_bank(self, pending: list[tuple[torch.Tensor, list[Caption]]]) -> tuple[torch.Tensor, list]:
        images: dict[bytes, tuple[torch.Tensor, list[Caption]]] = {}
        for vectors, captions in pending:
            for v, c in zip(vectors, captions, strict=True):
                images.setdefault(v.numpy().tobytes(), (v, []))[1].append(c)
        entries = sorted(((sorted(cs), v) for v, cs in images.values()), key=lambda e: e[0])
        if not entries:
            return torch.zeros(0, self.memory_dim), []
        return torch.stack([v for _, v in entries]), [cs for cs, _ in entries]

    def get_extra_state(self) -> Any:
        vectors, captions = self.bank_vectors, self.bank_captions
        if not captions and self._pending:  # saved mid-way through the first epoch
            vectors, captions = self._build_bank(self._pending)
        return {"vocab": self.tokenizer.vocab, "vectors": vectors,
                "captions": [[list(c) for c in cs] for cs in captions]}

    def set_extra_state(self, state: Any) -> None:
        if not state:
            return
        if state.get("vocab"):
            self.tokenizer.set_vocab(state["vocab"])
        vectors = state.get("vectors")
        if vectors is not None and vectors.numel() and vectors.shape[1] != self.memory_dim:
            raise MMFuseError(f"a caption bank of width {vectors.shape[1]} for a memory of width {self.memory_dim}: "
                              "the checkpoint's fusion differs from this run's (use the run's own fusion config)")
        self.bank_vectors = vectors if vectors is not None else torch.zeros(0, self.memory_dim)
        self.bank_captions = [[tuple(c) for c in cs] for cs in state.get("captions", [])]
        self._pending, self._collecting = [], False

    # -- generation -------------------------------------------------------------------------------
    def choose(self, queries: torch.Tensor) -> list[Caption]:
        raise NotImplementedError

    def generate(self, memory: torch.Tensor, memory_mask: torch.Tensor,
                 options: GenerationOptions) -> list[list[int]]:
        if not self.bank_captions:  # nothing trained on yet (Lightning's sanity validation)
            return [[] for _ in range(memory.shape[0])]
        chosen = self.choose(pooled(memory, memory_mask).detach().double().cpu())
        return [list(c[: options.max_length]) for c in chosen]


class MostFrequentDecoder(BankDecoder):
    """``decoder=most_frequent``: the most frequent training caption for every image."""

    def choose(self, queries: torch.Tensor) -> list[Caption]:
        counts = Counter(c for cs in self.bank_captions for c in cs)
        vocab = self.tokenizer.vocab
        best = min(counts, key=lambda c: (-counts[c], " ".join(vocab[i] for i in c)))
        return [best] * queries.shape[0]


class NearestDecoder(BankDecoder):
    """``decoder=nearest``: the caption of the most similar training image(s) (module docstring)."""

    def __init__(self, memory_dim: int, k: int = 1, consensus: bool = False, max_length: int = 32,
                 max_vocab: int = 4096) -> None:
        super().__init__(memory_dim, max_length, max_vocab)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise MMFuseError(f"decoder.k={k!r}: expected a positive integer (training images pooled), e.g. decoder.k=1")
        self.k, self.consensus = k, bool(consensus)

    def neighbours(self, queries: torch.Tensor) -> torch.Tensor:
        """``[B, min(k, N)]`` bank indices by decreasing cosine similarity (stable: bank order on ties)."""
        bank = torch.nn.functional.normalize(self.bank_vectors.double(), dim=1)
        sims = torch.nn.functional.normalize(queries, dim=1) @ bank.T
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices
        return order[:, : min(self.k, bank.shape[0])]

    def choose(self, queries: torch.Tensor) -> list[Caption]:
        out = []
        for row in self.neighbours(queries).tolist():
            if not self.consensus:
                out.append(self.bank_captions[row[0]][0])
            else:
                out.append(consensus([c for i in row for c in self.bank_captions[i]]))
        return out
