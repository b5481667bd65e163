"""The label of ``data=shapes_av``: classes that need one, two or all three modalities.

Every sample carries one binary content bit per modality, each readable from that modality alone:

- ``video``: the direction of the object that moves vertically (0 = up, 1 = down);
- ``audio``: the pitch of the tone (0 = low, 1 = high);
- ``text``: the key word of the caption (0 = "off", 1 = "on");

and a rule ``r`` that the caption states ("use the video and sound"), which names a non-empty set of
modalities ``S_r`` (``RULES``). The label is the parity of the named bits, with classes of their own
per rule::

    parity(r, b) = XOR_{m in S_r} b_m
    label(r, b)  = 2 r + parity(r, b)                      (2 * len(RULES) = 14 classes)
    interaction type = |S_r| - 1                           (index into INTERACTION_TYPES)

Exactly, with the bits uniform and independent (the datamodule draws every (rule, bits) cell equally
often): given the rule, the label is determined by the bits of ``S_r`` and independent of the bits of
every proper subset ``P`` of ``S_r`` together with the bits outside ``S_r``, since the parity includes
a bit of ``S_r \\ P``, uniform and independent of the rest. In the terms of partial information
decomposition, a unimodal rule's label is unique information of its modality, a pair's parity is
synergy of the two, the three-way parity synergy of all three (no redundancy is built in).

What it asks of a fusion (a head that is linear in the fused vector): the logits are a function of the
rule, which the text states, plus

- unimodal: a sum of per-modality scores suffices (late or additive fusion: the text term selects the
  rule's two classes, the named modality's term their parity);
- bimodal: the two classes of a rule differ by ``±1 = (-1)^(b_m XOR b_n)``, the product of two
  per-modality signs, which no sum ``g(b_m) + h(b_n)`` has the sign of: a multiplicative pair term;
- trimodal: ``(-1)^(b_v XOR b_a XOR b_t)`` is orthogonal to every function of two of the bits (its Walsh
  coefficient is the only one of order three), so a sum of pairwise terms cannot give it; an outer
  product over all three with an appended 1 (TFN) contains the product ``b_v b_a b_t``.
"""

from __future__ import annotations

import numpy as np

BITS: tuple[str, ...] = ("video", "audio", "text")  # the column order of a sample's bits
INTERACTION_TYPES: tuple[str, ...] = ("unimodal", "bimodal", "trimodal")

RULES: tuple[tuple[str, ...], ...] = (
    ("video",), ("audio",), ("text",),
    ("video", "audio"), ("video", "text"), ("audio", "text"),
    ("video", "audio", "text"),
)
RULE_PHRASES: tuple[str, ...] = (
    "the video", "the sound", "the words",
    "the video and sound", "the video and words", "the sound and words",
    "all three",
)
RULE_GROUPS: tuple[str, ...] = tuple("rule_" + "_".join(r) for r in RULES)  # names of acc_<rule> metrics
TEXT_WORDS: tuple[str, str] = ("off", "on")  # the text bit 0 / 1
VIDEO_DIRECTIONS: tuple[str, str] = ("up", "down")  # the video bit 0 / 1
PITCHES: tuple[str, str] = ("low", "high")  # the audio bit 0 / 1

# RULE_MASK[r, j] = 1 when rule r names BITS[j]
RULE_MASK = np.array([[int(m in rule) for m in BITS] for rule in RULES], dtype=np.int64)
NUM_CLASSES = 2 * len(RULES)
CLASS_NAMES: tuple[str, ...] = tuple(f"{phrase}: {p}" for phrase in RULE_PHRASES for p in ("even", "odd"))
CELLS = len(RULES) * 2 ** len(BITS)  # (rule, bits) combinations, 56


def interaction_type(rule: np.ndarray | int) -> np.ndarray:
    """``|S_r| - 1``: the index into ``INTERACTION_TYPES`` of rule(s) ``rule``."""
    return RULE_MASK[rule].sum(-1) - 1


def label(rule: np.ndarray | int, bits: np.ndarray) -> np.ndarray:
    """``2 r + XOR_{m in S_r} b_m`` for rule(s) ``rule`` ``[N]`` and bits ``[N, 3]`` (or one ``[3]``)."""
    bits = np.asarray(bits, dtype=np.int64)
    return 2 * np.asarray(rule) + (RULE_MASK[rule] * bits).sum(-1) % 2


def bits_of(code: np.ndarray | int) -> np.ndarray:
    """The bits ``(video, audio, text)`` of cell code ``code`` in ``0..7`` (video the high bit)."""
    code = np.asarray(code, dtype=np.int64)
    return np.stack([(code >> (len(BITS) - 1 - j)) & 1 for j in range(len(BITS))], axis=-1)


def balanced_cells(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rules ``[n]`` and bits ``[n, 3]`` for ``n`` samples, every (rule, bits) cell equally often.

    Cell ``k`` (``0 <= k < 56``) is rule ``k % 7`` with bits ``bits_of(k // 7)``; sample ``i`` gets cell
    ``i % 56`` before the samples are shuffled, so cell ``k`` holds ``n // 56 + (k < n % 56)`` samples.
    """
    k = np.arange(n) % CELLS
    order = rng.permutation(n)
    k = k[order]
    return k % len(RULES), bits_of(k // len(RULES))
