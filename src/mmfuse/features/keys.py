"""What a cache key is made of: digests of exactly the inputs that determine an encoder's features.

Image, video and audio sides: ``(encoder code + config + weights, transform, the split's items, numeric
regime, tokens)``; the per-frame side of a video encoder (``video_frames``) the same with the frame
encoder's code and weights and the video config without the temporal model's keys.
Text side: ``(encoder code + config + weights, tokenizer, the split's token ids and masks, numeric
regime, tokens)``. The key is ``sha256(json(parts, sort_keys))[:24]``; the parts themselves go into the
manifest, so a human can see why two entries differ.

- Weights are hashed tensor by tensor (``state_dict``, non-tensor extra state such as a fitted word
  vocabulary as JSON), so a different checkpoint, seed or fine-tuned copy never matches.
- Code: the encoder class, a digest of its source file (and of the files of nested mmfuse modules) and the versions of torch / torchvision /
  transformers (a change of the forward pass re-encodes).
- Images (clips, sounds): a store's own ``fingerprint()`` when it has one (e.g. file names, sizes and mtimes), the
  bytes of an in-memory ``TensorImages``, else the decoded pixels of every image (slow; logged).
- Texts: the token ids and attention masks the encoder would see, which covers the texts, the
  tokenizer's settings and a vocabulary fitted on the data.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from mmfuse.data.pairs import TensorImages

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the on-disk layout or the meaning of the stored arrays changes


def update_tensor(h: Any, t: torch.Tensor) -> None:
    """Feed dtype, shape and raw bytes of ``t`` into the hash ``h``."""
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        update_tensor(h, t)
    return h.hexdigest()


def weights_digest(module: nn.Module) -> str:
    """sha256 over the state dict: names, dtypes, shapes and bytes (non-tensor entries as JSON)."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            update_tensor(h, value)
        else:
            h.update(json.dumps(value, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def _source_digest(cls: type) -> str:
    try:
        source = inspect.getsource(sys.modules[cls.__module__])
    except (OSError, TypeError, KeyError):
        source = cls.__qualname__
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def code_identity(module: nn.Module) -> dict[str, Any]:
    """The encoder's class, a digest of the file that defines it, the digests of the files of the
    mmfuse modules nested in it (a video encoder's frame encoder), and the library versions it runs on."""
    cls = type(module)
    out: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}", "source_sha256": _source_digest(cls),
                           "torch": torch.__version__}
    nested = {type(m) for m in module.modules()} - {cls}
    nested_sources = {f"{c.__module__}.{c.__qualname__}": _source_digest(c) for c in nested
                      if c.__module__.startswith("mmfuse.")}
    if nested_sources:
        out["nested_sources"] = dict(sorted(nested_sources.items()))
    for lib in ("torchvision", "transformers"):
        if lib in sys.modules:
            out[lib] = getattr(sys.modules[lib], "__version__", "?")
    return out


def without_keys(config: Any, names: tuple[str, ...]) -> Any:
    """``config`` (plain dicts and lists) with the keys ``names`` removed at every depth (``load_weights``
    of a video encoder's nested ``frame`` config as well as its own)."""
    if isinstance(config, dict):
        return {k: without_keys(v, names) for k, v in config.items() if k not in names}
    if isinstance(config, list):
        return [without_keys(v, names) for v in config]
    return config


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def describe_transform(transform: Any) -> str:
    """``repr(transform)`` when it shows the settings; else its class and attributes (never an address)."""
    text = repr(transform)
    if " at 0x" in text or " object at " in text:
        attrs = {k: _plain(v) for k, v in sorted(vars(transform).items())} if hasattr(transform, "__dict__") else {}
        text = json.dumps({"class": f"{type(transform).__module__}.{type(transform).__qualname__}",
                           "attrs": attrs}, sort_keys=True)
    return text


def describe_tokenizer(tokenizer: Any) -> dict[str, Any]:
    """Class, ``max_length``, a digest of a data-fitted vocabulary, and a Hugging Face tokenizer's source."""
    out: dict[str, Any] = {"class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
                           "max_length": getattr(tokenizer, "max_length", None)}
    vocab = getattr(tokenizer, "vocab", None)
    if isinstance(vocab, (list, dict)):
        out["vocab_sha256"] = hashlib.sha256(json.dumps(vocab, sort_keys=True).encode()).hexdigest()[:16]
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None:
        out["hf"] = {"class": type(inner).__name__, "name_or_path": str(getattr(inner, "name_or_path", "")),
                     "vocab_size": getattr(inner, "vocab_size", None)}
    return out


def images_fingerprint(store: Any) -> str:
    """What identifies the images of a split (see the module docstring for the three cases)."""
    if hasattr(store, "fingerprint"):
        return f"store:{store.fingerprint()}"
    if isinstance(store, TensorImages):
        return f"tensor:{tensor_digest(store.images)}"
    log.info("feature cache: %s has no fingerprint(); hashing the pixels of its %d images",
             type(store).__name__, len(store))
    h = hashlib.sha256()
    for i in range(len(store)):
        update_tensor(h, store.load(i))
    return f"pixels:{h.hexdigest()}"


def texts_fingerprint(text: dict[str, torch.Tensor]) -> str:
    return f"ids:{tensor_digest(text['input_ids'], text['attention_mask'])}"


def key_of(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def file_sha256(path: Any, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def as_numpy_dtype(name: str) -> np.dtype:
    return np.dtype({"float16": np.float16, "float32": np.float32}[name])
