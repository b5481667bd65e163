"""A split's cached encoder outputs as a store that ``PairDataset`` reads: ``features(idx) -> EncoderOutput``.

Rows are read from memory-mapped ``.npy`` files, so a split larger than RAM works: only the rows of a
batch are copied out (the operating system's page cache keeps hot rows in memory). Values come back
in the stored dtype (float32, or float16 with ``cache.dtype=float16``, which halves what crosses to a
GPU); ``FusionModel`` casts them to its parameters' dtype after the batch has reached its device.

``with_tokens=False`` (the fusion reads only ``pooled``): ``tokens`` is ``[B, 0, D]`` and ``mask``
``[B, 0]``, and the token file is never touched. With tokens, columns that are padding for every row
of the batch are dropped, as ``PairDataset`` does for token ids, so shapes match an uncached run.

The store pickles without its arrays (each DataLoader worker maps the files itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfuse.features.storage import load_arrays, read_manifest
from mmfuse.types import EncoderOutput


class CachedFeatures:
    def __init__(self, entry: str | Path, with_tokens: bool) -> None:
        self.entry = Path(entry)
        self.manifest = read_manifest(self.entry)
        if with_tokens and "tokens" not in self.manifest["files"]:
            raise ValueError(f"{self.entry} holds pooled features only; token sequences were asked for")
        self.with_tokens = with_tokens
        self.samples = int(self.manifest["samples"])
        # rows whose item failed to load while encoding (zeros in the arrays): {index: reason}
        self.failed = {int(i): reason for i, reason in self.manifest.get("failed", {}).items()}
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = load_arrays(self.entry, self.manifest)
        return self._arrays

    def __len__(self) -> int:
        return self.samples

    def features(self, idx: torch.Tensor) -> EncoderOutput:
        rows = np.asarray(idx, dtype=np.int64)
        arrays = self.arrays
        pooled = torch.from_numpy(np.ascontiguousarray(arrays["pooled"][rows]))
        if not self.with_tokens:
            tokens = pooled.new_zeros((len(rows), 0, pooled.shape[1]))
            return EncoderOutput(pooled, tokens, torch.zeros((len(rows), 0), dtype=torch.bool))
        mask = torch.from_numpy(np.ascontiguousarray(arrays["mask"][rows]))
        real = mask.any(0).nonzero()
        length = int(real.max()) + 1 if len(real) else 1
        tokens = torch.from_numpy(np.ascontiguousarray(arrays["tokens"][rows, :length]))
        return EncoderOutput(pooled, tokens, mask[:, :length].contiguous())

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def __repr__(self) -> str:
        return f"CachedFeatures({self.entry}, samples={self.samples}, with_tokens={self.with_tokens})"


class CachedFrameFeatures(CachedFeatures):
    """A video encoder's per-frame outputs (its frame encoder's, ``VideoEncoder.encode_frames``):
    ``features(idx)`` is ``pooled [B, T, D]``, ``tokens [B, T, N, D]``, ``mask [B, T, N]`` (every frame
    whole: clips of a split have the same frames, nothing to trim). ``per_frame`` tells the dataset to
    name them ``video_frame_features``, on which ``FusionModel`` runs only the temporal model. Without
    tokens (``grid=false``: the temporal model reads ``pooled`` only) ``tokens`` is ``[B, T, 0, D]``."""

    per_frame = True

    def features(self, idx: torch.Tensor) -> EncoderOutput:
        rows = np.asarray(idx, dtype=np.int64)
        arrays = self.arrays
        pooled = torch.from_numpy(np.ascontiguousarray(arrays["pooled"][rows]))
        if not self.with_tokens:
            b, t, d = pooled.shape
            return EncoderOutput(pooled, pooled.new_zeros((b, t, 0, d)), torch.zeros((b, t, 0), dtype=torch.bool))
        return EncoderOutput(pooled, torch.from_numpy(np.ascontiguousarray(arrays["tokens"][rows])),
                             torch.from_numpy(np.ascontiguousarray(arrays["mask"][rows])))

    def __repr__(self) -> str:
        return f"CachedFrameFeatures({self.entry}, samples={self.samples}, with_tokens={self.with_tokens})"
