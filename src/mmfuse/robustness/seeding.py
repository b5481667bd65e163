"""Deterministic noise per item: the same image or text gets the same noise in every run and for every
fusion, whatever the batch it falls in."""

from __future__ import annotations

import hashlib

import numpy as np


def item_rng(seed: int, level: float, content: bytes) -> np.random.Generator:
    """A generator seeded from ``(seed, level, sha256(content))``."""
    digest = hashlib.sha256(content).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng([int(seed), int(round(float(level) * 1e6)), *words])
