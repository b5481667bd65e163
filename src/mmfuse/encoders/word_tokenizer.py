"""A word-level tokenizer whose vocabulary is built from training captions.

Ids: 0 = ``[PAD]``, 1 = ``[UNK]``, 2 = ``[CLS]``, then the words in order of decreasing frequency
(ties broken alphabetically). Text is lower-cased and split on anything that is not a letter or digit.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIALS = (PAD, UNK, CLS)
_WORD = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def words_by_frequency(texts: Iterable[str], limit: int) -> list[str]:
    """The words of ``texts`` in order of decreasing frequency (ties alphabetical), at most ``limit``."""
    counts = Counter(w for t in texts for w in split_words(t))
    return sorted(counts, key=lambda w: (-counts[w], w))[:limit]


class WordTokenizer:
    """Maps captions to ``input_ids`` / ``attention_mask`` like a Hugging Face tokenizer call."""

    def __init__(self, max_vocab: int, max_length: int) -> None:
        self.max_vocab = max_vocab
        self.max_length = max_length
        self.vocab: list[str] = []
        self._index: dict[str, int] = {}

    @property
    def fitted(self) -> bool:
        return bool(self.vocab)

    def fit(self, texts: Iterable[str]) -> None:
        self.set_vocab([*SPECIALS, *words_by_frequency(texts, self.max_vocab - len(SPECIALS))])

    def set_vocab(self, vocab: list[str]) -> None:
        if len(vocab) > self.max_vocab:
            raise ValueError(f"vocabulary of {len(vocab)} words exceeds max_vocab={self.max_vocab}")
        self.vocab = list(vocab)
        self._index = {w: i for i, w in enumerate(self.vocab)}

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``[CLS] w1 w2 ...`` truncated to ``max_length`` and padded to the longest in ``texts``."""
        if not self.fitted:
            raise RuntimeError("WordTokenizer.fit() must see the training captions before tokenizing")
        unk, cls = self._index[UNK], self._index[CLS]
        rows = [[cls] + [self._index.get(w, unk) for w in split_words(t)] for t in texts]
        rows = [r[: self.max_length] for r in rows]
        length = max((len(r) for r in rows), default=1)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}
