"""Run a frozen encoder once over a split and write its outputs into a cache entry, with a progress bar.

Images come in store order, in batches, from whichever the store offers:
- ``load_many(indices)`` (images in memory): batches gathered in-process, transformed on the CPU;
- ``read_bytes(i)`` or ``paths`` (image files) with ``decode_on_device``: DataLoader workers read the
  files, ``torchvision.io.decode_jpeg`` decodes the batch's JPEGs on the GPU in one call and the
  transform runs there (other formats are decoded by the workers);
- ``load(i)``: DataLoader workers decode and transform, batches are pinned for the copy to a GPU.
Clips (``video``) come as images do, through ``load(i)`` and the transform, as ``[B, T, 3, H, W]``.
Items of a split that is not a ``PairDataset`` come from a ``FeatureSource`` (``source_batches``):
workers load them; an item that fails is reported to the source (``fail``), left out (its row stays
zero) and listed in the returned ``failed``.
Texts and sounds are encoded in order of length (so that a batch pads little) and written back to their
rows.

Stored per sample: ``pooled [D]`` and, with ``tokens``, ``tokens [T, D]`` and ``mask [T]`` (``T`` the
longest sequence of the split; shorter rows are zero-padded with ``mask`` False). Outputs with more
axes are stored whole: a frame encoder's ``pooled [T, D]``, ``tokens [T, N, D]``, ``mask [T, N]``. Values that do not
fit the storage dtype (float16 overflows above 65504) stop the encoding with an error instead of
being stored as ``inf``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mmfuse.data.media import pad_audio
from mmfuse.errors import MMFuseError
from mmfuse.features.storage import EntryWriter
from mmfuse.types import EncoderOutput

log = logging.getLogger(__name__)

Batches = Iterator[tuple[np.ndarray, Any]]
# a worker that cannot deliver its batch ends the encoding with an error after this long, not never
LOADER_TIMEOUT_S = 600


class _Transformed(Dataset):
    def __init__(self, store: Any, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.store, self.transform = store, transform

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.store.load(i))


class _Encoded(Dataset):
    """Item ``i``: ``("jpeg", file bytes)`` for a JPEG file, else ``("pixels", decoded uint8 [3, H, W]
    as a NumPy array)``. No tensors: a batch of many small tensors from a worker is shared one file
    descriptor per tensor, which failed on a GPU machine ("Bad file descriptor" in the worker, then the
    loader waited forever); bytes and arrays travel pickled."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> tuple[str, bytes | np.ndarray]:
        if hasattr(self.store, "read_bytes"):
            data = self.store.read_bytes(i)
            data = data.numpy().tobytes() if isinstance(data, torch.Tensor) else bytes(data)
        else:
            data = Path(self.store.paths[i]).read_bytes()
        if data[:2] == b"\xff\xd8":
            return "jpeg", data
        return "pixels", self.store.load(i).numpy()


def _keep_list(items: list[Any]) -> list[Any]:
    return items


def has_file_bytes(store: Any) -> bool:
    return hasattr(store, "read_bytes") or hasattr(store, "paths")


def decode_on(device: torch.device, transform: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Whether ``transform`` runs on ``device`` (a probe on one small image): GPU JPEG decoding needs it."""
    try:
        transform(torch.zeros(3, 8, 8, dtype=torch.uint8, device=device))
        return True
    except (RuntimeError, TypeError) as e:
        log.info("feature cache: the image transform does not run on %s (%s); decoding JPEGs on the CPU", device, e)
        return False


def image_batches(store: Any, transform: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
                  num_workers: int, device: torch.device, decode_on_device: bool) -> Batches:
    n = len(store)
    if hasattr(store, "load_many"):
        for start in range(0, n, batch_size):
            rows = np.arange(start, min(n, start + batch_size))
            yield rows, transform(store.load_many(torch.from_numpy(rows))).to(device, non_blocking=True)
        return
    pin = device.type == "cuda"
    if decode_on_device and has_file_bytes(store):
        from torchvision.io import ImageReadMode, decode_jpeg

        loader = DataLoader(_Encoded(store), batch_size=batch_size, num_workers=num_workers, collate_fn=_keep_list,
                            timeout=LOADER_TIMEOUT_S if num_workers else 0)
        start = 0
        for items in loader:
            jpegs = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for kind, data in items if kind == "jpeg"]
            decoded = iter(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device) if jpegs else [])
            images = [next(decoded) if kind == "jpeg" else torch.from_numpy(data).to(device) for kind, data in items]
            yield np.arange(start, start + len(items)), torch.stack([transform(img) for img in images])
            start += len(items)
        return
    loader = DataLoader(_Transformed(store, transform), batch_size=batch_size, num_workers=num_workers, pin_memory=pin,
                        timeout=LOADER_TIMEOUT_S if num_workers else 0)
    start = 0
    for images in loader:
        yield np.arange(start, start + len(images)), images.to(device, non_blocking=True)
        start += len(images)


def text_batches(text: dict[str, torch.Tensor], batch_size: int, device: torch.device) -> Batches:
    lengths = text["attention_mask"].sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        length = max(int(lengths[rows].max()), 1)
        yield rows.numpy(), {k: text[k][rows, :length].long().to(device, non_blocking=True)  # dialogs store int32 / bool
                             for k in ("input_ids", "attention_mask")}


def _wave(store: Any, transform: Callable[..., torch.Tensor], i: int) -> torch.Tensor:
    """``transform(wave, store.sample_rate)`` (an ``AudioTransform``) when the store knows its rate, else
    ``transform(wave)``."""
    rate = getattr(store, "sample_rate", None)
    return transform(store.load(i)) if rate is None else transform(store.load(i), rate)


def audio_batches(store: Any, transform: Callable[..., torch.Tensor], batch_size: int,
                  device: torch.device) -> Batches:
    """Waveforms ``transform(store.load(i), store.sample_rate)`` (``transform(store.load(i))`` for a store
    without ``sample_rate``; float ``[S_i]``) in order of length, longest first (so that
    the first batch has the most tokens), right-padded with zeros: ``{"audio": [B, S], "audio_mask":
    [B, S]}``, True on real samples. Lengths come from ``store.lengths()`` when the store has it, else
    from a first pass over the clips."""
    n = len(store)
    if hasattr(store, "lengths"):
        lengths = torch.as_tensor(store.lengths(), dtype=torch.long)
    else:
        lengths = torch.tensor([len(_wave(store, transform, i)) for i in range(n)], dtype=torch.long)
    order = torch.argsort(lengths, descending=True, stable=True)
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        audio, mask = pad_audio([_wave(store, transform, int(i)) for i in rows])
        yield rows.numpy(), {"audio": audio.to(device), "audio_mask": mask.to(device)}


class _Loaded(Dataset):
    """Item ``i`` of a ``FeatureSource``: ``(i, array, None)``, or ``(i, None, reason)`` when it fails
    (arrays, not tensors: see ``_Encoded``)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return i, self.source.load(i).numpy(), None
        except Exception as e:
            last = (str(e).strip().splitlines() or [""])[-1].strip()
            return i, None, f"{type(e).__name__}: {last}"


def source_batches(source: Any, batch_size: int, num_workers: int, device: torch.device, audio: bool,
                   failed: dict[int, str]) -> Batches:
    """A ``FeatureSource``'s items in order, ``[B, ...]`` stacked, or for ``audio`` right-padded:
    ``{"audio": [B, S], "audio_mask": [B, S]}``. Items that fail are reported (``source.fail``), put into
    ``failed`` (``{index: reason}``) and left out of the batches."""
    loader = DataLoader(_Loaded(source), batch_size=batch_size, num_workers=num_workers, collate_fn=_keep_list,
                        timeout=LOADER_TIMEOUT_S if num_workers else 0)
    for items in loader:
        for i, _, reason in items:
            if reason is not None:
                failed[i] = reason
                source.fail(i, reason)
        good = [(i, torch.from_numpy(x)) for i, x, reason in items if reason is None]
        if not good:
            continue
        rows = np.array([i for i, _ in good])
        if audio:
            wave, mask = pad_audio([x for _, x in good])
            yield rows, {"audio": wave.to(device), "audio_mask": mask.to(device)}
        else:
            yield rows, torch.stack([x for _, x in good]).to(device)


def _host(t: torch.Tensor, dtype: np.dtype, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = t.detach().float().cpu().numpy().astype(dtype)
    if dtype != np.float32 and not np.isfinite(out).all():
        raise MMFuseError(f"feature cache: {what} has values beyond the range of {dtype} (largest "
                          f"|x| = {t.detach().abs().max().item():.4g}); set cache.dtype=float32")
    return out


def encode_into(writer: EntryWriter, batches: Batches, encode: Callable[[Any], EncoderOutput], samples: int,
                tokens: bool, dtype: np.dtype, desc: str, max_tokens: int | None = None,
                autocast: contextlib.AbstractContextManager | None = None) -> dict[str, Any]:
    """Encode every batch, write rows into ``writer``'s arrays; returns the shapes and the time taken."""
    start = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    # the autocast context is entered once: Lightning's forward_context() cannot be re-entered
    with tqdm(total=samples, desc=desc, unit="sample", mininterval=1.0, dynamic_ncols=True) as bar, \
            (autocast or contextlib.nullcontext()):
        for rows, inputs in batches:
            with torch.no_grad():
                out = encode(inputs)
            if not arrays:
                arrays["pooled"] = writer.array("pooled", (samples, *out.pooled.shape[1:]), dtype)
                if tokens:
                    t = max_tokens or out.tokens.shape[1]
                    arrays["tokens"] = writer.array("tokens", (samples, t, *out.tokens.shape[2:]), dtype)
                    arrays["mask"] = writer.array("mask", (samples, t, *out.mask.shape[2:]), np.bool_)
            arrays["pooled"][rows] = _host(out.pooled, dtype, f"{desc}: pooled")
            if tokens:
                length = out.tokens.shape[1]
                if length > arrays["tokens"].shape[1]:
                    raise MMFuseError(f"feature cache: {desc} gave {length} tokens for a batch, more than "
                                      f"the {arrays['tokens'].shape[1]} of the first batch; token counts must "
                                      "not vary between image batches")
                arrays["tokens"][rows, :length] = _host(out.tokens, dtype, f"{desc}: tokens")
                arrays["mask"][rows, :length] = out.mask.detach().bool().cpu().numpy()
            bar.update(len(rows))
    if samples and not arrays:
        raise MMFuseError(f"feature cache: {desc} produced no batches for {samples} samples")
    seconds = time.perf_counter() - start
    log.info("feature cache: %s: %d samples in %.1f s (%.0f/s)", desc, samples, seconds, samples / max(seconds, 1e-9))
    return {"encode_seconds": round(seconds, 3),
            "shapes": {name: list(a.shape) for name, a in arrays.items()}}
