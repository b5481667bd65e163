"""The interface every caption / answer decoder implements (``conf/decoder``).

A decoder turns the *memory* a fusion hands over into text. The memory is a sequence
``memory [B, M, memory_dim]`` with ``memory_mask [B, M]`` (True = a real position): the fused token
sequence of a token-level fusion, or the fused vector as a sequence of one (``mmfuse.decoders.memory``).

Contract:
- ``Decoder(memory_dim, **options)``; ``tokenizer`` is a ``CaptionTokenizer``;
- ``forward(memory, memory_mask, ids, mask) -> logits [B, T, V]``: teacher forcing. ``ids [B, T]``
  are ``tokenizer.encode`` rows (``bos w1 ... wn eos pad ...``), ``mask [B, T]`` True on real tokens;
  ``logits[:, t]`` is the distribution of ``ids[:, t + 1]`` given ``ids[:, :t + 1]`` and the memory,
  and must not depend on any later token (causality) nor on masked memory positions. Whatever the
  decoder puts before the text (a prefix LM's visual prefix) is not part of the returned logits;
- ``generate(memory, memory_mask, options) -> list[list[int]]``: one token-id list per sample, the
  generated text only (no bos, no eos, no padding), at most ``options.max_length`` tokens;
- the loss (``mmfuse.tasks.captioning``) is the token cross-entropy of ``logits[:, :-1]`` against
  ``ids[:, 1:]`` where ``mask[:, 1:]``: padding never counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from mmfuse.errors import MMFuseError


class CaptionTokenizer(Protocol):
    """What the task and the data need from a decoder's tokenizer."""

    pad_id: int
    bos_id: int
    eos_id: int
    vocab_size: int
    fitted: bool  # False: a vocabulary built from data, ``fit`` must see the training captions first

    def fit(self, texts: list[str]) -> None: ...

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [N, T] long, mask [N, T] bool)``: ``bos w1 ... wn eos`` cut to ``max_length`` tokens
        (bos and eos included; a cut caption keeps its eos), padded with ``pad_id`` to the longest."""
        ...

    def decode(self, ids: list[int]) -> str:
        """The text of generated ids (special tokens dropped)."""
        ...


@dataclass(frozen=True)
class GenerationOptions:
    """``task.generate``: beam search with ``num_beams`` beams (1: greedy); at most ``max_length`` and at
    least ``min_length`` generated tokens (eos not counted, prompt and prefix not counted); a finished
    beam's score is ``sum log p / length ** length_penalty`` (Hugging Face's convention, length = its
    generated tokens incl. eos); ``no_repeat_ngram_size`` n > 0 forbids any token that would repeat an
    n-gram already in the sequence."""

    num_beams: int = 1
    max_length: int = 20
    min_length: int = 0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        for name in ("num_beams", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MMFuseError(f"task.generate.{name}={value!r}: expected a positive integer, e.g. "
                                  f"task.generate.{name}={3 if name == 'num_beams' else 20}")
        for name in ("min_length", "no_repeat_ngram_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise MMFuseError(f"task.generate.{name}={value!r}: expected an integer >= 0")
        if self.min_length > self.max_length:
            raise MMFuseError(f"task.generate.min_length={self.min_length} > max_length={self.max_length}: "
                              "lower min_length or raise max_length")


class Decoder(nn.Module):
    tokenizer: CaptionTokenizer
    memory_dim: int

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor, ids: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, memory: torch.Tensor, memory_mask: torch.Tensor,
                 options: GenerationOptions) -> list[list[int]]:
        raise NotImplementedError
