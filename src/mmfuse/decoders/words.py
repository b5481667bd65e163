"""A word-level caption vocabulary built from the training captions (``decoder=transformer``).

Ids: 0 = ``[PAD]``, 1 = ``[UNK]``, 2 = ``[BOS]``, 3 = ``[EOS]``, then the words in order of decreasing
frequency (ties alphabetical), at most ``max_vocab`` ids in all. Words are those of
``mmfuse.encoders.word_tokenizer.split_words`` (lower case, letters and digits); ``decode`` joins them
with spaces, so a generated caption is already in the form the caption metrics tokenise to (special
tokens, ``[UNK]`` included, are left out of it).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mmfuse.encoders.word_tokenizer import split_words, words_by_frequency
from mmfuse.errors import MMFuseError

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


class WordCaptionTokenizer:
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, max_vocab: int = 4096) -> None:
        if max_vocab <= len(SPECIALS):
            raise MMFuseError(f"decoder.max_vocab={max_vocab}: must exceed the {len(SPECIALS)} special tokens")
        self.max_vocab = int(max_vocab)
        self.vocab: list[str] = []
        self._index: dict[str, int] = {}

    @property
    def fitted(self) -> bool:
        return bool(self.vocab)

    @property
    def vocab_size(self) -> int:
        """The embedding / output size: ``max_vocab`` (fixed before the vocabulary is known)."""
        return self.max_vocab

    def fit(self, texts: Iterable[str]) -> None:
        self.set_vocab([*SPECIALS, *words_by_frequency(texts, self.max_vocab - len(SPECIALS))])

    def set_vocab(self, vocab: list[str]) -> None:
        if len(vocab) > self.max_vocab or tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise MMFuseError(f"a caption vocabulary of {len(vocab)} words starting {vocab[:4]}: expected at most "
                              f"decoder.max_vocab={self.max_vocab} words starting with {list(SPECIALS)}")
        self.vocab = list(vocab)
        self._index = {w: i for i, w in enumerate(self.vocab)}

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.fitted:
            raise MMFuseError("the decoder's word vocabulary is empty: fit() it on the training captions first")
        if max_length < 2:
            raise MMFuseError(f"decoder.max_length={max_length}: needs room for bos and eos (>= 2)")
        rows = []
        for text in texts:
            words = [self._index.get(w, self.unk_id) for w in split_words(text)][: max_length - 2]
            rows.append([self.bos_id, *words, self.eos_id])
        length = max((len(r) for r in rows), default=2)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return ids, mask

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if len(SPECIALS) <= i < len(self.vocab))
