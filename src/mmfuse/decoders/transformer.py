"""``decoder=transformer``: a small transformer decoder trained from scratch on a word vocabulary.

``h_0 = E[w] + P[t]`` (both initialised ``N(0, 0.02²)``); ``layers`` pre-norm ``nn.TransformerDecoderLayer`` blocks (causal self-attention,
cross-attention to ``W_m memory`` with the memory's padding masked, feed-forward); logits
``= W_o LN(h)`` (``W_o`` tied to ``E`` when ``tie_embeddings``) over the fitted vocabulary only: the
layers are sized for ``max_vocab`` ids before the vocabulary is known, and the ids beyond it are never
scored (no probability mass on words that do not exist; on shapes' 21 words, 1/200 of the output
layer's work). The vocabulary (``WordCaptionTokenizer``) is fitted on the training captions and saved in
the state dict, so a checkpoint rebuilds it. ``tokenizer: <name_or_path>`` uses a Hugging Face tokenizer
instead (the text encoder's, e.g. ``decoder.tokenizer=${encoder.text.name_or_path}``: ``bos``/``eos``
are its cls/sep or bos/eos tokens), sized by its vocabulary. Generation: ``mmfuse.decoders.search`` (greedy / beam),
recomputing the prefix at every step; ``[PAD]`` and ``[BOS]`` are never generated.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmfuse.decoders.base import Decoder, GenerationOptions
from mmfuse.decoders.hf_tokenizer import HFCaptionTokenizer, load_tokenizer
from mmfuse.decoders.search import search
from mmfuse.decoders.words import WordCaptionTokenizer
from mmfuse.errors import MMFuseError


class TransformerDecoder(Decoder):
    def __init__(self, memory_dim: int, width: int = 128, layers: int = 2, heads: int = 4, ff_mult: int = 4,
                 dropout: float = 0.1, max_length: int = 24, max_vocab: int = 4096,
                 tie_embeddings: bool = True, tokenizer: str | None = None) -> None:
        super().__init__()
        if width % heads:
            raise MMFuseError(f"decoder.width={width} is not a multiple of decoder.heads={heads}")
        self.memory_dim = int(memory_dim)
        self.max_length = int(max_length)
        if tokenizer:
            self.tokenizer = HFCaptionTokenizer(load_tokenizer(str(tokenizer), None, "decoder.tokenizer"))
            max_vocab = self.tokenizer.vocab_size
        else:
            self.tokenizer = WordCaptionTokenizer(max_vocab)
        # words and positions at one scale (GPT-2's N(0, 0.02²)): with PyTorch's N(0, 1) words and tied output
        # weights, LN(h) · E scored the input word itself ~100x above the rest, and the decoder first
        # learned to repeat it ("a white white white ...", measured)
        self.embed = nn.Embedding(max_vocab, width)  # padding is never a target nor seen before a real token
        nn.init.normal_(self.embed.weight, std=0.02)
        self.position = nn.Parameter(torch.randn(1, max_length, width) * 0.02)
        self.memory_proj = nn.Linear(memory_dim, width)
        layer = nn.TransformerDecoderLayer(width, heads, dim_feedforward=ff_mult * width, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, max_vocab, bias=False)
        if tie_embeddings:
            self.out.weight = self.embed.weight

    def get_extra_state(self) -> Any:
        return {"vocab": getattr(self.tokenizer, "vocab", None)}

    def set_extra_state(self, state: Any) -> None:
        if state and state.get("vocab") and isinstance(self.tokenizer, WordCaptionTokenizer):
            self.tokenizer.set_vocab(state["vocab"])

    def scored_ids(self) -> int:
        """How many ids the output scores: the fitted word vocabulary, or the whole tokenizer's."""
        words = getattr(self.tokenizer, "vocab", None)
        return len(words) if isinstance(words, list) and words else self.out.weight.shape[0]

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor, ids: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        t = ids.shape[1]
        if t > self.max_length:
            raise MMFuseError(f"a caption of {t} tokens > decoder.max_length={self.max_length}")
        x = self.embed(ids) + self.position[:, :t]
        causal = torch.triu(torch.full((t, t), float("-inf"), device=ids.device, dtype=x.dtype), diagonal=1)
        h = self.layers(x, self.memory_proj(memory), tgt_mask=causal, tgt_is_causal=True,
                        memory_key_padding_mask=~memory_mask.bool())
        return F.linear(self.norm(h), self.out.weight[: self.scored_ids()])

    def generate(self, memory: torch.Tensor, memory_mask: torch.Tensor,
                 options: GenerationOptions) -> list[list[int]]:
        max_new = min(options.max_length, self.max_length - 1)
        if max_new < options.max_length:
            options = GenerationOptions(**{**options.__dict__, "max_length": max_new,
                                           "min_length": min(options.min_length, max_new)})

        tok = self.tokenizer
        banned = sorted({tok.pad_id, tok.bos_id} - {tok.eos_id})  # GPT-2's bos = eos = pad

        def step(ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            logits = self(memory[rows], memory_mask[rows], ids)[:, -1].float()
            logits[:, banned] = -float("inf")
            return torch.log_softmax(logits, dim=-1)

        return search(step, memory.shape[0], tok.bos_id, tok.eos_id, options, memory.device)
