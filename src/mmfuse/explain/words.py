"""Which whitespace-separated word of a text each token of the model's tokenizer belongs to."""

from __future__ import annotations

import bisect
import re
from typing import Any


def token_words(tokenizer: Any, text: str, length: int) -> list[int | None]:
    """``length`` entries: the word index of each token position (None: a special token, or padding).

    mmfuse's word tokenizer (tiny_text): ``[CLS]`` then one token per word of ``[a-z0-9]+`` (the whitespace words
    of a caption made of such words); Hugging Face fast tokenizers: from the tokens' character offsets."""
    inner = getattr(tokenizer, "tokenizer", None)
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    if inner is not None and getattr(inner, "is_fast", False):
        enc = inner(text, truncation=True, max_length=length, return_offsets_mapping=True)
        out: list[int | None] = [None if e <= s else bisect.bisect_right(starts, s) - 1 for s, e in enc["offset_mapping"]]
    else:
        words = re.findall(r"[a-z0-9]+", text.lower())
        out = [None, *range(len(words))]
    return (out + [None] * length)[:length]
