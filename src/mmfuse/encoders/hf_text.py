"""Text encoders from Hugging Face (BERT, DistilBERT, RoBERTa, MiniLM, any ``AutoModel``).

``name_or_path``: a hub id (``bert-base-uncased``) or a local folder with ``config.json``, weights and
tokenizer files. Resolution never hangs: a local folder is used as is; a hub id is looked up in the
local cache first, and the hub is contacted only when it answers within a few seconds. Otherwise the
error names the model, the cache folder and the fixes. ``pretrained=false`` builds the architecture
from ``config.json`` with random weights. ``tokenizer`` may name another source for the tokenizer files.

Pooled: the first token (``pooling=cls``) or the mean of the real tokens (``pooling=mean``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfuse.encoders.base import Encoder
from mmfuse.encoders.network import reachable
from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("", "0"):
        return False
    return reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)


def hf_load(loader: Any, name_or_path: str, what: str) -> Any:
    """``loader.from_pretrained(name_or_path)`` that fails within seconds when it cannot succeed."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return loader.from_pretrained(str(folder))
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise MMFuseError(f"{what}.name_or_path={name_or_path!r} looks like a folder but {folder.resolve()} "
                          "does not exist. Fix: give an existing folder with config.json, weights and "
                          "tokenizer files, or a hub id such as bert-base-uncased")
    try:
        return loader.from_pretrained(name_or_path, local_files_only=True)
    except OSError:
        pass
    if hub_reachable():
        return loader.from_pretrained(name_or_path)
    from huggingface_hub.constants import HF_HUB_CACHE

    raise MMFuseError(
        f"{what}: cannot load {name_or_path!r} ({loader.__name__}): it is not a local folder, not in the "
        f"Hugging Face cache ({HF_HUB_CACHE}), and the hub is unreachable (offline). Fix: set "
        f"{what}.name_or_path=<a local folder with config.json, weights and tokenizer files>, or fill the "
        f"cache once where there is network (set HF_HOME to share it); {what}.pretrained=false still needs "
        f"config.json and tokenizer files (it only skips the weights)."
    )


class HFTokenizer:
    """Callable ``texts -> {"input_ids", "attention_mask"}`` padded to the longest, cut at ``max_length``."""

    fitted = True

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class HFTextEncoder(Encoder):
    def __init__(
        self,
        name_or_path: str = "bert-base-uncased",
        pretrained: bool = True,
        tokenizer: str | None = None,
        pooling: str = "cls",
        max_length: int = 64,
        freeze: bool = False,
        trainable_last: int = 0,
        load_weights: bool = True,
    ) -> None:
        super().__init__(freeze=freeze, trainable_last=trainable_last)
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if pooling not in ("cls", "mean"):
            raise MMFuseError(f"encoder.text.pooling={pooling!r}: expected 'cls' or 'mean'")
        self.pooling = pooling
        self.name_or_path = name_or_path
        if pretrained and load_weights:
            self.model = hf_load(AutoModel, name_or_path, "encoder.text")
        else:
            self.model = AutoModel.from_config(hf_load(AutoConfig, name_or_path, "encoder.text"))
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # unused (pooling is ours): unused parameters would break DDP
        self.out_dim = int(self.model.config.hidden_size)
        self.tokenizer = HFTokenizer(hf_load(AutoTokenizer, tokenizer or name_or_path, "encoder.text"), max_length)
        self.apply_freeze()

    def blocks(self) -> list[nn.Module]:
        n = getattr(self.model.config, "num_hidden_layers", None)
        for module in self.model.modules():
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return list(module)
        return []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        tokens = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.bool()
        if self.pooling == "cls":
            pooled = tokens[:, 0]
        else:
            w = mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)
        return EncoderOutput(pooled, tokens, mask)
