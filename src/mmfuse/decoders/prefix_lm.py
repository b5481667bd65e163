"""``decoder=prefix_lm``: any Hugging Face causal LM (GPT-2, SmolLM, Qwen, Llama, ... by ``name_or_path``) fed
the memory as input embeddings before the text (ClipCap, Mokady et al. 2021; LLaVA, Liu et al. 2023).

    prefix, prefix_mask = mapper(memory, memory_mask)               # [B, P, H], [B, P]  (decoders.mappers)
    h = LM(inputs_embeds=[prefix ; embed(ids)], attention_mask=[prefix_mask ; mask], position_ids)
    logits = h[:, P:]                                                 # the text positions only

The prefix is left-packed (its masked positions moved first, real ones kept in order) and
``position_ids = cumsum(attention_mask) - 1``, so the real prefix and text get the same positions whatever
the padding: prefix padding changes nothing, and generation uses HF's left-padding convention
(``generate(inputs_embeds=[prefix ; embed(bos)], attention_mask)`` returns the new tokens only).

``freeze=true``: the LM is frozen (and in eval mode), the mapper trained (ClipCap's frozen-GPT-2 setting);
``trainable_last=N`` with it: the last N transformer blocks train too. ``pretrained=false``: random init
from the AutoConfig of ``name_or_path`` with ``config`` overrides (or ``config.model_type`` alone).
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.decoders.base import Decoder, GenerationOptions
from mmfuse.decoders.hf_tokenizer import (
    clean_generated,
    generate_kwargs,
    keep_frozen_eval,
    load_lm,
)
from mmfuse.decoders.mappers import build_mapper
from mmfuse.errors import MMFuseError


def left_pack(prefix: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked positions first, real ones after them in their order (a stable sort on the mask)."""
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    return prefix.gather(1, order.unsqueeze(-1).expand_as(prefix)), mask.gather(1, order)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum(mask) - 1`` on real positions, 1 on masked ones (as HF's generate does)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


class PrefixLMDecoder(Decoder):
    def __init__(
        self,
        memory_dim: int,
        name_or_path: str = "gpt2",
        tokenizer: str | None = None,
        pretrained: bool = True,
        config: dict | None = None,
        freeze: bool = False,
        trainable_last: int = 0,
        mapper: str = "mlp",
        prefix_length: int = 10,
        mapper_layers: int = 8,
        mapper_heads: int = 8,
        max_length: int = 32,
    ) -> None:
        super().__init__()
        self.memory_dim, self.name_or_path = int(memory_dim), name_or_path
        self.freeze, self.trainable_last, self.max_length = bool(freeze), int(trainable_last), int(max_length)
        if self.trainable_last and not self.freeze:
            raise MMFuseError(f"decoder.trainable_last={trainable_last} needs decoder.freeze=true (without it "
                              "the whole LM trains); set decoder.freeze=true or decoder.trainable_last=0")
        self.tokenizer, self.lm, _ = load_lm(name_or_path, tokenizer, pretrained, dict(config or {}))
        hidden = int(self.lm.config.get_text_config().hidden_size)
        self.mapper = build_mapper(mapper, self.memory_dim, hidden, prefix_length, mapper_layers, mapper_heads)
        self.trainable_blocks: list[nn.Module] = []
        if self.freeze:
            self.lm.requires_grad_(False)
            if self.trainable_last:
                blocks = self.blocks()
                if self.trainable_last > len(blocks):
                    raise MMFuseError(f"decoder.trainable_last={trainable_last} > the LM's {len(blocks)} blocks")
                self.trainable_blocks = blocks[-self.trainable_last:]
                for block in self.trainable_blocks:
                    block.requires_grad_(True)

    def blocks(self) -> list[nn.Module]:
        """The LM's transformer blocks, input to output: its ModuleList of ``num_hidden_layers`` modules."""
        n = getattr(self.lm.config.get_text_config(), "num_hidden_layers", None)
        for module in self.lm.modules():
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return list(module)
        raise MMFuseError(f"decoder.trainable_last: no list of {n} blocks found in {type(self.lm).__name__}; "
                          "set decoder.trainable_last=0")

    def train(self, mode: bool = True) -> PrefixLMDecoder:
        super().train(mode)
        if self.freeze and mode:
            keep_frozen_eval(self.lm, self.trainable_blocks)
        return self

    def prefix(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The left-packed prefix ``[B, P, H]`` and its mask, in the LM's dtype (left packing: HF's padding
        convention for ``generate``; with positions taken from the mask, results do not depend on it)."""
        prefix, mask = self.mapper(memory, memory_mask.bool())
        return left_pack(prefix.to(self.lm.dtype), mask)

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor, ids: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        prefix, prefix_mask = self.prefix(memory, memory_mask)
        embeds = torch.cat([prefix, self.lm.get_input_embeddings()(ids)], dim=1)
        attention = torch.cat([prefix_mask, mask.bool()], dim=1).long()
        out = self.lm(inputs_embeds=embeds, attention_mask=attention, position_ids=positions(attention),
                      use_cache=False)
        return out.logits[:, prefix.shape[1]:]

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_mask: torch.Tensor,
                 options: GenerationOptions) -> list[list[int]]:
        prefix, prefix_mask = self.prefix(memory, memory_mask)
        bos = torch.full((memory.shape[0], 1), self.tokenizer.bos_id, dtype=torch.long, device=memory.device)
        embeds = torch.cat([prefix, self.lm.get_input_embeddings()(bos)], dim=1)
        attention = torch.cat([prefix_mask, torch.ones_like(bos, dtype=torch.bool)], dim=1).long()
        out = self.lm.generate(inputs_embeds=embeds, attention_mask=attention,
                               **generate_kwargs(options, self.tokenizer))
        return clean_generated(out, self.tokenizer, options.max_length)
