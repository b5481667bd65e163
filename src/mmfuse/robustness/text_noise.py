"""Text perturbations on raw strings, before tokenization; words are whitespace-separated.

Each ``f(text, level, rng) -> text`` is exactly the identity at ``level == 0``:
- ``word_dropout``: each word dropped with probability ``level``;
- ``swap``: left to right, each adjacent pair of words ``(w_i, w_{i+1})`` swapped with probability ``level``
  (a swapped pair is not swapped again: the scan goes on after it);
- ``typo``: each letter, with probability ``level``, substituted by a random other lowercase letter,
  deleted, or doubled (one of the three, equally likely); other characters are kept.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

import numpy as np

from mmfuse.robustness.seeding import item_rng

LETTERS = string.ascii_lowercase


def word_dropout(text: str, level: float, rng: np.random.Generator) -> str:
    words = text.split()
    keep = rng.random(len(words)) >= level
    return " ".join(w for w, k in zip(words, keep, strict=True) if k)


def swap(text: str, level: float, rng: np.random.Generator) -> str:
    words = text.split()
    draws = rng.random(max(len(words) - 1, 0))
    i = 0
    while i < len(words) - 1:
        if draws[i] < level:
            words[i], words[i + 1] = words[i + 1], words[i]
            i += 2
        else:
            i += 1
    return " ".join(words)


def typo(text: str, level: float, rng: np.random.Generator) -> str:
    out = []
    for ch in text:
        if ch.isalpha() and rng.random() < level:
            op = int(rng.integers(3))
            if op == 0:
                out.append(LETTERS[(LETTERS.index(ch.lower()) + 1 + int(rng.integers(25))) % 26]
                           if ch.lower() in LETTERS else ch)
            elif op == 2:
                out.append(ch + ch)
        else:
            out.append(ch)
    return "".join(out)


TEXT_NOISE: dict[str, Callable[[str, float, np.random.Generator], str]] = {
    "word_dropout": word_dropout, "swap": swap, "typo": typo}


def perturb_texts(texts: Sequence[str], kind: str, level: float, seed: int) -> list[str]:
    """Each text perturbed with the generator of ``item_rng(seed, level, its UTF-8 bytes)``."""
    if level == 0:
        return list(texts)
    return [TEXT_NOISE[kind](t, level, item_rng(seed, level, t.encode())) for t in texts]
