"""Greedy and beam search over any decoder that gives next-token log-probabilities.

``step(ids, rows) -> logp [N, V]``: the log-probabilities of the next token for each of the ``N``
prefixes ``ids [N, t]`` (each starting with bos); ``rows [N]`` says which sample of the batch each
prefix belongs to (its memory). Both searches return, per sample, the generated ids without bos and
eos.

Rules shared with Hugging Face's ``generate`` (``early_stopping="never"``):
- while fewer than ``min_length`` tokens are generated, eos is forbidden;
- ``no_repeat_ngram_size = n``: a token that would complete an n-gram already in the prefix (bos
  included) is forbidden;
- beam search keeps ``K = num_beams`` live beams per sample, expands each by every token, and keeps the
  ``2K`` best continuations by summed log-probability; a continuation that ends in eos becomes a
  finished hypothesis scored ``sum log p / L ** length_penalty`` (``L``: its generated tokens, eos
  included), the best ``K`` others stay live; a sample keeps its ``K`` best finished hypotheses. It is
  done when it has ``K`` and no live beam can still beat the worst of them: a live beam's best
  possible score is its sum (log-probabilities only lower it) over the most favourable length,
  ``max_length ** length_penalty`` for a positive penalty, ``(t + 1) ** length_penalty`` otherwise.
  At ``max_length`` generated tokens the live beams are finished as they are (``L = max_length``).
  The answer is the best-scored hypothesis. ``search`` runs greedy search for ``num_beams = 1``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmfuse.decoders.base import GenerationOptions

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def banned_ngram_tokens(prefix: list[int], n: int) -> list[int]:
    """The tokens that would complete an n-gram already in ``prefix`` (``n <= 0``: none)."""
    if n <= 0 or len(prefix) < n:
        return []
    tail = tuple(prefix[len(prefix) - n + 1:]) if n > 1 else ()
    return [prefix[i + n - 1] for i in range(len(prefix) - n + 1) if tuple(prefix[i:i + n - 1]) == tail]


def _constrain(logp: torch.Tensor, prefixes: Callable[[], list[list[int]]], generated: int, eos: int,
               options: GenerationOptions) -> torch.Tensor:
    """``logp`` with eos forbidden before ``min_length`` and the repeating tokens forbidden;
    ``prefixes()`` (the rows' token lists) is only called when n-grams are blocked."""
    if generated < options.min_length:
        logp[:, eos] = -float("inf")
    if options.no_repeat_ngram_size > 0:
        for row, prefix in enumerate(prefixes()):
            banned = banned_ngram_tokens(prefix, options.no_repeat_ngram_size)
            if banned:
                logp[row, banned] = -float("inf")
    return logp


def greedy_search(step: Step, batch_size: int, bos: int, eos: int, options: GenerationOptions,
                  device: torch.device) -> list[list[int]]:
    """The arg-max token at each step until eos or ``max_length`` tokens."""
    ids = torch.full((batch_size, 1), bos, dtype=torch.long, device=device)
    rows = torch.arange(batch_size, device=device)
    out: list[list[int]] = [[] for _ in range(batch_size)]
    live = list(range(batch_size))
    for t in range(options.max_length):
        logp = step(ids, rows).float().clone()
        logp = _constrain(logp, ids.tolist, t, eos, options)
        nxt = logp.argmax(-1)
        keep = []
        for j, token in enumerate(nxt.tolist()):
            if token == eos:
                continue
            out[live[j]].append(token)
            keep.append(j)
        if not keep:
            break
        index = torch.tensor(keep, device=device)
        ids = torch.cat([ids[index], nxt[index, None]], dim=1)
        rows = rows[index]
        live = [live[j] for j in keep]
    return out


def beam_search(step: Step, batch_size: int, bos: int, eos: int, options: GenerationOptions,
                device: torch.device) -> list[list[int]]:
    """Beam search as the module docstring states."""
    k = options.num_beams
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    # live beams: prefix (with bos), summed log-probability, sample
    beams: list[tuple[list[int], float, int]] = [([bos], 0.0, b) for b in range(batch_size)]
    for t in range(options.max_length):
        if not beams:
            break
        ids = torch.tensor([p for p, _, _ in beams], dtype=torch.long, device=device)
        rows = torch.tensor([b for _, _, b in beams], dtype=torch.long, device=device)
        logp = step(ids, rows).float().clone()
        logp = _constrain(logp, lambda beams=beams: [p for p, _, _ in beams], t, eos, options)
        total = logp + torch.tensor([s for _, s, _ in beams], device=device)[:, None]
        vocab = total.shape[1]
        new_beams: list[tuple[list[int], float, int]] = []
        of_sample: dict[int, list[int]] = {}
        for i, (_, _, b) in enumerate(beams):
            of_sample.setdefault(b, []).append(i)
        for b, mine in of_sample.items():
            scores = total[mine].flatten()
            best = torch.topk(scores, min(2 * k, int(torch.isfinite(scores).sum())))
            kept = []
            for score, flat in zip(best.values.tolist(), best.indices.tolist(), strict=True):
                beam, token = mine[flat // vocab], flat % vocab
                prefix = beams[beam][0]
                if token == eos:
                    finished[b].append((score / (t + 1) ** options.length_penalty, prefix[1:]))
                elif len(kept) < k:
                    kept.append((prefix + [token], score, b))
            finished[b] = sorted(finished[b], key=lambda h: -h[0])[:k]
            if kept and not _done(finished[b], max(s for _, s, _ in kept), t + 1, k, options):
                new_beams += kept
        beams = new_beams
    for prefix, score, b in beams:  # max_length reached
        finished[b].append((score / options.max_length ** options.length_penalty, prefix[1:]))
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]


def _done(finished: list[tuple[float, list[int]]], best_live: float, generated: int, k: int,
          options: GenerationOptions) -> bool:
    """``K`` finished hypotheses and none of the live beams (best sum ``best_live`` after ``generated``
    tokens) can still beat the worst of them."""
    if len(finished) < k:
        return False
    penalty = options.length_penalty
    length = options.max_length if penalty > 0 else generated + 1
    return best_live / length ** penalty <= finished[-1][0]


def search(step: Step, batch_size: int, bos: int, eos: int, options: GenerationOptions,
           device: torch.device) -> list[list[int]]:
    """``greedy_search`` for one beam, else ``beam_search``."""
    fn = greedy_search if options.num_beams == 1 else beam_search
    return fn(step, batch_size, bos, eos, options, device)
