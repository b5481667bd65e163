"""Greedy and beam search (mmfuse.decoders.search) on hand-made next-token tables with known answers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmfuse.decoders.base import GenerationOptions
from mmfuse.decoders.search import banned_ngram_tokens, beam_search, greedy_search, search
from mmfuse.errors import MMFuseError

BOS, EOS = 0, 1
CPU = torch.device("cpu")


def table_step(table: dict[tuple[int, ...], dict[int, float]], vocab: int = 5):
    """Next-token probabilities looked up by the whole prefix (after bos); unlisted prefixes end (eos);
    unlisted tokens have probability 0 (log -inf: never a candidate)."""

    def step(ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out = torch.full((ids.shape[0], vocab), -float("inf"))
        for r, prefix in enumerate(ids.tolist()):
            probs = table.get(tuple(prefix[1:]), {EOS: 1.0})
            for token, p in probs.items():
                out[r, token] = math.log(p)
        return out

    return step


# greedy takes 2 (0.6) then is stuck with 0.4 / 0.3 / 0.3; beam finds 3 (0.4) then 4 at 0.9 with eos
TRAP = {(): {2: 0.6, 3: 0.4}, (2,): {EOS: 0.4, 3: 0.3, 4: 0.3}, (3,): {EOS: 0.9, 4: 0.1}}


def test_greedy_takes_the_locally_best_token():
    assert greedy_search(table_step(TRAP), 1, BOS, EOS, GenerationOptions(), CPU) == [[2]]


def test_beam_search_finds_the_better_sequence_greedy_misses():
    # [2] eos: 0.6 * 0.4 = 0.24; [3] eos: 0.4 * 0.9 = 0.36 (both have 2 generated tokens)
    out = beam_search(table_step(TRAP), 1, BOS, EOS, GenerationOptions(num_beams=2), CPU)
    assert out == [[3]]


def test_search_with_one_beam_is_greedy_on_random_tables():
    torch.manual_seed(0)
    vocab, batch = 7, 6
    weights = torch.randn(batch, vocab, vocab) * 3

    def step(ids, rows):
        return torch.log_softmax(weights[rows, ids[:, -1]] + 0.1 * ids.shape[1], dim=-1)

    for options in (GenerationOptions(max_length=9), GenerationOptions(max_length=9, min_length=3),
                    GenerationOptions(max_length=9, no_repeat_ngram_size=2)):
        greedy = greedy_search(step, batch, BOS, EOS, options, CPU)
        assert search(step, batch, BOS, EOS, options, CPU) == greedy
        assert search(step, batch, BOS, EOS, GenerationOptions(**{**options.__dict__, "num_beams": 2}), CPU) != greedy


def _score(step, seq, max_length, length_penalty):
    """A hypothesis' beam score: ended by eos, or cut at max_length."""
    ids, total = [BOS], 0.0
    tokens = seq if len(seq) == max_length else [*seq, EOS]
    for token in tokens:
        total += float(step(torch.tensor([ids]), torch.tensor([0]))[0, token])
        ids.append(token)
    return total / len(tokens) ** length_penalty


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_wide_beam_finds_the_exact_best_sequence(length_penalty):
    """With more beams than sequences, beam search is exhaustive: its answer is the brute-force best."""
    torch.manual_seed(3)
    weights = torch.randn(4, 4, 4) * 2  # next-token logits from the last two tokens; vocab: bos eos 2 3

    def step(ids, rows):
        prev = ids[:, -2] if ids.shape[1] > 1 else torch.zeros_like(ids[:, -1])
        return torch.log_softmax(weights[prev, ids[:, -1]], dim=-1)

    max_length = 3  # every token but eos may be generated (bos too): 1 + 3 + 9 + 27 sequences, fewer than the beams
    candidates = [list(c) for n in range(max_length + 1) for c in itertools.product((0, 2, 3), repeat=n)]
    best = max(candidates, key=lambda c: _score(step, c, max_length, length_penalty))
    options = GenerationOptions(num_beams=64, max_length=max_length, length_penalty=length_penalty)
    found = beam_search(step, 1, BOS, EOS, options, CPU)[0]
    assert _score(step, found, max_length, length_penalty) == pytest.approx(_score(step, best, max_length, length_penalty))
    assert found == best


def test_max_and_min_length():
    loop = {(): {2: 1.0}}
    for n in range(1, 12):
        loop[(2,) * n] = {2: 0.9, EOS: 0.1}  # always prefers to go on
    for beams in (1, 3):
        out = search(table_step(loop), 2, BOS, EOS, GenerationOptions(num_beams=beams, max_length=4), CPU)
        assert out == [[2, 2, 2, 2]] * 2
    short = {(): {EOS: 0.9, 2: 0.1}, (2,): {EOS: 0.9, 3: 0.1}, (2, 3): {EOS: 1.0}}
    assert greedy_search(table_step(short), 1, BOS, EOS, GenerationOptions(), CPU) == [[]]
    assert greedy_search(table_step(short), 1, BOS, EOS, GenerationOptions(min_length=2), CPU) == [[2, 3]]
    assert beam_search(table_step(short), 1, BOS, EOS, GenerationOptions(num_beams=2, min_length=2), CPU) == [[2, 3]]


def test_length_penalty_prefers_longer_hypotheses():
    # [2] eos: log(0.5 * 0.5) / 2 = -0.693; [3 4 4] eos: log(0.5 * 0.9^3 * 0.4)... see below
    table = {(): {2: 0.5, 3: 0.5}, (2,): {EOS: 0.5, 4: 0.5}, (3,): {4: 1.0}, (3, 4): {4: 1.0},
             (3, 4, 4): {EOS: 1.0}, (2, 4): {EOS: 1.0}}
    # finished: [2] -> log .25 = -1.386 (L=2); [2 4] -> log .25 (L=3); [3 4 4] -> log .5 = -0.693 (L=4)
    assert beam_search(table_step(table), 1, BOS, EOS, GenerationOptions(num_beams=3, length_penalty=0.0), CPU) \
        == [[3, 4, 4]]
    # with a strong negative penalty (short is favoured), -1.386 / 2 ** -3 = -0.173 beats -0.693 / 4 ** -3
    assert beam_search(table_step(table), 1, BOS, EOS, GenerationOptions(num_beams=3, length_penalty=-3.0), CPU) \
        == [[2]]


def test_no_repeat_ngram():
    assert banned_ngram_tokens([0, 5, 6, 5], 2) == [6]
    assert banned_ngram_tokens([0, 5, 6, 5, 7, 5], 2) == [6, 7]
    assert banned_ngram_tokens([0, 5, 6], 1) == [0, 5, 6]
    assert banned_ngram_tokens([0, 5], 3) == []
    assert banned_ngram_tokens([0, 5, 5], 0) == []
    cycle = {(): {2: 1.0}}
    prefix: tuple[int, ...] = (2,)
    for _ in range(8):  # always wants 3 after 2 and 2 after 3: "2 3 2 3 ..."
        cycle[prefix] = {3 if prefix[-1] == 2 else 2: 0.7, 4: 0.2, EOS: 0.1}
        prefix = prefix + (3 if prefix[-1] == 2 else 2,)
    options = GenerationOptions(max_length=6, no_repeat_ngram_size=2)
    assert greedy_search(table_step(cycle), 1, BOS, EOS, GenerationOptions(max_length=6), CPU) == [[2, 3, 2, 3, 2, 3]]
    # after "2 3 2", 3 would repeat the bigram (2, 3): 4 (0.2) beats eos (0.1); "2 3 2 4" is not in the table: eos
    assert greedy_search(table_step(cycle), 1, BOS, EOS, options, CPU) == [[2, 3, 2, 4]]


def test_options_are_checked():
    with pytest.raises(MMFuseError, match="task.generate.num_beams=0"):
        GenerationOptions(num_beams=0)
    with pytest.raises(MMFuseError, match="min_length=5 > max_length=3"):
        GenerationOptions(max_length=3, min_length=5)
    with pytest.raises(MMFuseError, match="no_repeat_ngram_size"):
        GenerationOptions(no_repeat_ngram_size=-1)


def test_a_sample_is_not_done_while_a_live_beam_can_still_win():
    """Two hypotheses finish at log 0.6 = -0.511 and log(0.4 * 0.6) / 2 = -0.714; the live beams' sum is
    log 0.08 = -2.526 after 2 tokens. Their best possible score with length_penalty 1 is -2.526 / max_length
    = -0.253, so the search goes on and finds the long caption (-2.526 / 10); a bound at the next length,
    -2.526 / 3 = -0.842 <= -0.714, would stop and return the empty one."""
    table = {(): {EOS: 0.6, 2: 0.4}, (2,): {EOS: 0.6, 3: 0.2, 4: 0.2}, (2, 4): {EOS: 1.0}}
    for n in range(1, 9):
        table[(2,) + (3,) * n] = {3: 1.0}  # never ends: cut at max_length
    out = beam_search(table_step(table), 1, BOS, EOS, GenerationOptions(num_beams=2, max_length=10), CPU)
    assert out == [[2] + [3] * 9]


def test_an_early_eos_does_not_take_a_live_beams_place():
    """2K candidates per step: eos (0.35) ranks second at the first step, yet both non-eos tokens stay
    live, and the one ranked third (0.25) leads to the best caption (-1.386 / 10)."""
    table = {(): {2: 0.4, EOS: 0.35, 3: 0.25}, (2,): {EOS: 1.0}}
    for n in range(0, 9):
        table[(3,) + (4,) * n] = {4: 1.0}
    out = beam_search(table_step(table), 1, BOS, EOS, GenerationOptions(num_beams=2, max_length=10), CPU)
    assert out == [[3] + [4] * 9]
