"""``decoder=hf_cross``: a pretrained Hugging Face LM turned into a decoder that cross-attends to the memory.

As BLIP's text decoder and ``VisionEncoderDecoderModel`` do: ``AutoModelForCausalLM.from_pretrained(
name_or_path, is_decoder=True, add_cross_attention=True)`` keeps the pretrained embeddings, causal
self-attention and FFNs, and adds a newly initialised cross-attention block per layer (BERT, RoBERTa,
GPT-2, ...; families without cross-attention in transformers, e.g. Llama, are refused: use prefix_lm).
The memory ``[B, M, memory_dim]`` is mapped to the LM width ``H`` by a Linear (identity when
``memory_dim == H``) and passed as ``encoder_hidden_states`` with ``encoder_attention_mask = memory_mask``:

    logits = LM(ids, attention_mask=mask, encoder_hidden_states=W memory + b, encoder_attention_mask=memory_mask)

``freeze=true``: every pretrained LM weight is frozen (and in eval mode) except the cross-attention
blocks; the projection and the weights the checkpoint lacked (logged at load, e.g. MiniLM's LM head
transform) stay trainable. ``generate`` runs HF ``generate`` from ``input_ids = bos``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from mmfuse.decoders.base import Decoder, GenerationOptions
from mmfuse.decoders.hf_tokenizer import (
    clean_generated,
    generate_kwargs,
    keep_frozen_eval,
    load_lm,
)
from mmfuse.errors import MMFuseError

log = logging.getLogger(__name__)

CROSS_NAMES = ("crossattention", "cross_attn", "encoder_attn", "cross_attention", "ln_cross_attn")


def is_cross(name: str) -> bool:
    return any(part in CROSS_NAMES for part in name.split("."))


class HFCrossDecoder(Decoder):
    def __init__(
        self,
        memory_dim: int,
        name_or_path: str = "bert-base-uncased",
        tokenizer: str | None = None,
        pretrained: bool = True,
        config: dict | None = None,
        freeze: bool = False,
        max_length: int = 32,
    ) -> None:
        super().__init__()
        self.memory_dim, self.name_or_path = int(memory_dim), name_or_path
        self.freeze, self.max_length = bool(freeze), int(max_length)
        overrides = {**(config or {}), "is_decoder": True, "add_cross_attention": True}
        self.tokenizer, self.lm, info = load_lm(name_or_path, tokenizer, pretrained, overrides,
                                                output_loading_info=True)
        self.new_weights: list[str] = sorted(info.get("missing_keys", []))
        if pretrained:
            log.info("decoder=hf_cross %s: newly initialised weights (%d): %s; checkpoint weights unused: %s",
                     name_or_path, len(self.new_weights), ", ".join(self.new_weights),
                     ", ".join(sorted(info.get("unexpected_keys", []))) or "none")
        cross = [n for n, _ in self.lm.named_modules() if is_cross(n)]
        if not cross:
            raise MMFuseError(f"decoder.name_or_path={name_or_path!r}: {type(self.lm).__name__} has no "
                              "cross-attention in transformers (add_cross_attention ignored). Fix: a BERT / "
                              "RoBERTa / GPT-2 family model, or decoder=prefix_lm for any causal LM")
        width = int(self.lm.config.hidden_size)
        self.proj = nn.Identity() if width == self.memory_dim else nn.Linear(self.memory_dim, width)
        if self.freeze:
            new = set(self.new_weights)
            for name, p in self.lm.named_parameters():
                p.requires_grad_(is_cross(name) or name in new)
        self.cross_modules = [m for n, m in self.lm.named_modules() if is_cross(n) and not is_cross(n.rsplit(".", 1)[0])]

    def train(self, mode: bool = True) -> HFCrossDecoder:
        super().train(mode)
        if self.freeze and mode:
            keep_frozen_eval(self.lm, self.cross_modules)
        return self

    def _memory(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> dict[str, Any]:
        return {"encoder_hidden_states": self.proj(memory), "encoder_attention_mask": memory_mask.long()}

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor, ids: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, attention_mask=mask.long(), use_cache=False,
                       **self._memory(memory, memory_mask)).logits

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_mask: torch.Tensor,
                 options: GenerationOptions) -> list[list[int]]:
        b = memory.shape[0]
        start = torch.full((b, 1), self.tokenizer.bos_id, dtype=torch.long, device=memory.device)
        from transformers import DynamicCache, EncoderDecoderCache

        # generate would make a self-attention-only DynamicCache, which BERT's cross-attention cannot use
        cache = EncoderDecoderCache(DynamicCache(config=self.lm.config), DynamicCache(config=self.lm.config))
        out = self.lm.generate(input_ids=start, attention_mask=torch.ones_like(start), cache=cache,
                               **self._memory(memory, memory_mask),
                               **generate_kwargs(options, self.tokenizer))
        return clean_generated(out[:, 1:], self.tokenizer, options.max_length)
