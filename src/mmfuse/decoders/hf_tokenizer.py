"""A ``CaptionTokenizer`` (``mmfuse.decoders.base``) over a Hugging Face ``AutoTokenizer``, and the offline
loading the Hugging Face decoders share.

Special tokens: ``bos`` = the tokenizer's bos token, else its cls token (BERT: ``[CLS]``); ``eos`` = eos,
else sep (BERT: ``[SEP]``); ``pad`` = pad, else eos (GPT-2 has no pad: pad = eos = bos =
``<|endoftext|>``, padding is told apart by the mask). ``encode``: ``bos w1 ... wn eos`` with no other
special token, the words cut so that the row has at most ``max_length`` ids and keeps its eos.
``decode``: special tokens skipped, tokenisation spaces cleaned.
"""

from __future__ import annotations

from typing import Any

import torch

from mmfuse.encoders.hf_text import hf_load
from mmfuse.errors import MMFuseError


class _With:
    """``loader`` whose ``from_pretrained`` always gets ``kwargs`` (for ``hf_load``, which passes none)."""

    def __init__(self, loader: Any, **kwargs: Any) -> None:
        self.loader, self.kwargs = loader, kwargs
        self.__name__ = loader.__name__

    def from_pretrained(self, name_or_path: str, **kwargs: Any) -> Any:
        return self.loader.from_pretrained(name_or_path, **kwargs, **self.kwargs)


def load_pretrained(loader: Any, name_or_path: str, what: str = "decoder", **kwargs: Any) -> Any:
    """``loader.from_pretrained(name_or_path, **kwargs)``, failing within seconds with one line naming
    ``<what>.name_or_path`` and the fix when the files are neither a local folder nor in the HF cache."""
    return hf_load(_With(loader, **kwargs), name_or_path, what)


def load_config(name_or_path: str, overrides: dict | None, what: str = "decoder") -> Any:
    """An ``AutoConfig``: ``AutoConfig.for_model(**overrides)`` when ``overrides`` has ``model_type`` (no files
    needed: tiny random test models), else the config of ``name_or_path`` with ``overrides`` set on it."""
    from transformers import AutoConfig

    overrides = dict(overrides or {})
    if "model_type" in overrides:
        try:
            return AutoConfig.for_model(**overrides)
        except ValueError as exc:
            raise MMFuseError(f"{what}.config.model_type={overrides['model_type']!r}: {exc}") from exc
    config = load_pretrained(AutoConfig, name_or_path, what)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def load_tokenizer(name_or_path: str, tokenizer: str | None, what: str = "decoder") -> Any:
    from transformers import AutoTokenizer

    if tokenizer is None:
        return load_pretrained(AutoTokenizer, name_or_path, what)
    try:
        return load_pretrained(AutoTokenizer, tokenizer, what)
    except MMFuseError as exc:
        raise MMFuseError(f"{what}.tokenizer={tokenizer!r}: cannot load it. Fix: give a local folder with the "
                          f"tokenizer files or a cached hub id ({exc})") from exc


def load_lm(name_or_path: str, tokenizer: str | None, pretrained: bool, overrides: dict,
            output_loading_info: bool = False) -> tuple[HFCaptionTokenizer, Any, dict]:
    """``(tokenizer, causal LM, loading info)`` of a Hugging Face decoder: the LM pretrained from
    ``name_or_path`` with the config ``overrides``, or (``pretrained=false``) randomly initialised from
    ``load_config`` with the tokenizer's vocabulary size and special ids; one line when the tokenizer has
    more ids than the LM's embeddings. ``info``: ``missing_keys`` / ``unexpected_keys`` when asked."""
    from transformers import AutoModelForCausalLM

    tok = HFCaptionTokenizer(load_tokenizer(name_or_path, tokenizer))
    info: dict = {}
    if pretrained:
        lm = load_pretrained(AutoModelForCausalLM, name_or_path, output_loading_info=output_loading_info,
                             **overrides)
        if output_loading_info:
            lm, info = lm
    else:
        lm = AutoModelForCausalLM.from_config(load_config(name_or_path, {**tok.special_ids(), **overrides}))
    n_vocab = lm.get_input_embeddings().weight.shape[0]
    if tok.vocab_size > n_vocab:
        raise MMFuseError(f"decoder.tokenizer: {tok.vocab_size} tokens but the LM has {n_vocab}; use the LM's own "
                          "tokenizer (decoder.tokenizer=null)")
    return tok, lm, info


class HFCaptionTokenizer:
    """``CaptionTokenizer`` over ``tokenizer`` (an ``AutoTokenizer`` instance)."""

    fitted = True

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if bos is None or eos is None:
            raise MMFuseError(f"decoder.tokenizer: {type(tokenizer).__name__} has neither a bos/cls nor an "
                              "eos/sep token; use a tokenizer that has them (e.g. gpt2 or bert-base-uncased)")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self.bos_id, self.eos_id, self.pad_id = int(bos), int(eos), int(pad)
        self.vocab_size = len(tokenizer)

    def special_ids(self) -> dict[str, int]:
        """The vocabulary size and special ids, as config fields of a randomly initialised LM."""
        return {"vocab_size": self.vocab_size, "bos_token_id": self.bos_id, "eos_token_id": self.eos_id,
                "pad_token_id": self.pad_id}

    def fit(self, texts: list[str]) -> None:
        """Nothing to fit: the vocabulary is the pretrained one."""

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if max_length < 2:
            raise MMFuseError(f"max_length={max_length}: a caption needs at least bos and eos (>= 2)")
        words = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        rows = [[self.bos_id, *w[: max_length - 2], self.eos_id] for w in words]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return ids, mask

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True)


def generate_kwargs(options: Any, tokenizer: HFCaptionTokenizer) -> dict[str, Any]:
    """``GenerationOptions`` as Hugging Face ``generate`` arguments: ``max_new_tokens = max_length`` (so at
    most ``max_length`` tokens, eos included, are produced), ``min_new_tokens = min_length`` (eos is
    forbidden before ``min_length`` tokens: eos not counted), beams with ``length_penalty`` (HF's score
    ``sum log p / length ** length_penalty``), ``early_stopping="never"`` (a sample is done only when no live
    beam can beat its ``num_beams`` finished ones: the rule of ``mmfuse.decoders.search``), no sampling."""
    beams = {"early_stopping": "never", "length_penalty": options.length_penalty} if options.num_beams > 1 else {}
    return {
        **beams,
        "max_new_tokens": options.max_length,
        "min_new_tokens": options.min_length,
        "num_beams": options.num_beams,
        "no_repeat_ngram_size": options.no_repeat_ngram_size,
        "do_sample": False,
        "num_return_sequences": 1,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }


def clean_generated(sequences: torch.Tensor, tokenizer: HFCaptionTokenizer, max_length: int) -> list[list[int]]:
    """Generated rows (prompt already removed) as id lists: cut at the first eos, padding dropped."""
    out = []
    for row in sequences.tolist():
        if tokenizer.eos_id in row:
            row = row[: row.index(tokenizer.eos_id)]
        out.append([t for t in row if t != tokenizer.pad_id][:max_length])
    return out


def keep_frozen_eval(model: torch.nn.Module, trainable: list[torch.nn.Module]) -> None:
    """Frozen parts in eval mode (no dropout) while the ``trainable`` submodules follow ``train()``."""
    model.train(False)
    for module in trainable:
        module.train(True)
