"""A small transformer text encoder over a word vocabulary built from the training captions."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmfuse.encoders.base import Encoder
from mmfuse.encoders.word_tokenizer import WordTokenizer
from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput


class TinyTextTransformer(Encoder):
    """Word embedding + learned positions -> ``layers`` pre-norm transformer layers.

    Tokens ``[B, T, width]`` with the tokenizer's padding mask; pooled = the ``[CLS]`` token
    (``pooling=cls``) or the mean of the real tokens (``pooling=mean``). The vocabulary is fitted on
    the training captions (``tokenizer.fit``) and saved in the state dict (``get_extra_state``), so a
    checkpoint rebuilds the same tokenizer.

    Initial scales: word embeddings ``N(0, 1)`` (PyTorch's default), positions ``N(0, position_std²)``.
    Word order reaches the layers only through the positions, so the two start at the same scale
    (``position_std=1``). With BERT's 0.02 for the positions alone (this encoder's first version, which
    ``position_std=0.02`` reproduces) the input is 1/50 position: after 9,375 steps the position
    vectors had norm 0.16 against 7.9 for the words, the encoder was close to a bag of words, and no
    fusion could tell "a red circle left of a blue square" from "a blue circle left of a red square"
    (experiments/fusion_zoo).
    """

    def __init__(
        self,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        ff_mult: int = 2,
        max_length: int = 24,
        max_vocab: int = 4096,
        pooling: str = "mean",
        dropout: float = 0.0,
        position_std: float = 1.0,
        pretrained: bool | str = False,
        freeze: bool = False,
        trainable_last: int = 0,
        load_weights: bool = True,
    ) -> None:
        super().__init__(freeze=freeze, trainable_last=trainable_last)
        if pooling not in ("cls", "mean"):
            raise MMFuseError(f"encoder.text.pooling={pooling!r}: expected 'cls' or 'mean'")
        if not position_std > 0:
            raise MMFuseError(f"encoder.text.position_std={position_std!r}: expected a positive number, e.g. 1.0")
        self.out_dim = width
        self.pooling = pooling
        self.tokenizer = WordTokenizer(max_vocab=max_vocab, max_length=max_length)
        self.embed = nn.Embedding(max_vocab, width, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(1, max_length, width))
        nn.init.normal_(self.position, std=float(position_std))
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=ff_mult * width, dropout=dropout, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.load_own_weights(pretrained, load_weights, "encoder.text=tiny_text")
        self.apply_freeze()

    def blocks(self) -> list[nn.Module]:
        return list(self.layers.layers)

    def get_extra_state(self) -> Any:
        return {"vocab": self.tokenizer.vocab}

    def set_extra_state(self, state: Any) -> None:
        if state and state.get("vocab"):
            self.tokenizer.set_vocab(state["vocab"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        mask = attention_mask.bool()
        x = self.embed(input_ids) + self.position[:, : input_ids.shape[1]]
        x = self.norm(self.layers(x, src_key_padding_mask=~mask))
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return EncoderOutput(pooled, x, mask)
