"""Removing a modality at the encoder outputs (missing-modality robustness, modality contribution).

While ``removed(model, modalities, mode, seed, means)`` is active, ``model.encode(m, batch)`` returns, for
each ``m`` of ``modalities``, the encoder output (or cached features) replaced by
- ``zeros``: ``pooled = 0``, ``tokens = 0`` (the mask kept);
- ``mean``: the split's mean, ``means[m]`` (a ``SplitMean`` recorded by ``recording`` during a clean pass
  over the split: every sample the encoder sees, pairs included): ``pooled_b = (1/N) Σ_n pooled_n`` and, at
  token position ``t``, ``tokens_bt = Σ_n mask_nt tokens_nt / Σ_n mask_nt`` (0 where no sample of the pass
  had position ``t``); the mask kept;
- ``shuffle``: the batch's outputs permuted across samples (pooled, tokens and mask together) with a
  permutation drawn from ``seed`` and the call's index, so each sample meets another sample's modality.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput

MODES = ("zeros", "mean", "shuffle")


class SplitMean:
    """Running sums of one modality's encoder outputs: ``add(out)`` per batch, then ``pooled`` ``[D]`` and
    ``tokens`` ``[T_max, D]`` (the masked mean per position) over everything added."""

    def __init__(self) -> None:
        self.n = 0
        self.pooled_sum: torch.Tensor | None = None
        self.token_sum: torch.Tensor | None = None
        self.token_count: torch.Tensor | None = None

    def add(self, out: EncoderOutput) -> None:
        pooled, tokens, mask = (t.detach().double() for t in out)
        m = mask.unsqueeze(-1)
        t_sum, t_count = (tokens * m).sum(0), mask.sum(0)
        if self.pooled_sum is None:
            self.pooled_sum, self.token_sum, self.token_count = pooled.sum(0), t_sum, t_count
        else:
            self.pooled_sum = self.pooled_sum + pooled.sum(0)
            self.token_sum, self.token_count = _grow_add(self.token_sum, t_sum), _grow_add(self.token_count, t_count)
        self.n += pooled.shape[0]

    @property
    def pooled(self) -> torch.Tensor:
        return self.pooled_sum / max(self.n, 1)

    @property
    def tokens(self) -> torch.Tensor:
        return self.token_sum / self.token_count.clamp_min(1).unsqueeze(-1)


def _grow_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` along dim 0, the shorter one padded with zeros."""
    if a.shape[0] < b.shape[0]:
        a, b = b, a
    out = a.clone()
    out[:b.shape[0]] += b
    return out


def replace_output(out: EncoderOutput, mode: str, generator: torch.Generator,
                   mean: SplitMean | None = None) -> EncoderOutput:
    pooled, tokens, mask = out
    if mode == "zeros":
        return EncoderOutput(torch.zeros_like(pooled), torch.zeros_like(tokens), mask)
    if mode == "mean":
        if mean is None or mean.n == 0:
            raise MMFuseError("robustness.mode=mean needs the split's mean outputs: record them with recording()")
        t = tokens.shape[1]
        token_mean = torch.zeros(tokens.shape[1:], dtype=torch.float64, device=tokens.device)
        have = min(t, mean.tokens.shape[0])
        token_mean[:have] = mean.tokens[:have].to(tokens.device)
        return EncoderOutput(mean.pooled.to(pooled).expand_as(pooled).clone(),
                             token_mean.to(tokens).expand_as(tokens).clone(), mask)
    if mode == "shuffle":
        perm = torch.randperm(pooled.shape[0], generator=generator).to(pooled.device)
        return EncoderOutput(pooled[perm], tokens[perm], mask[perm])
    raise MMFuseError(f"robustness.mode={mode!r}: expected one of {MODES}")


@contextlib.contextmanager
def _wrapped_encode(model: Any, wrap: Any) -> Iterator[None]:
    original, own = model.encode, model.__dict__.get("encode")
    model.encode = wrap(original)
    try:
        yield
    finally:
        if own is None:
            del model.encode  # the instance attribute: the class's method shows again
        else:
            model.encode = own


@contextlib.contextmanager
def recording(model: Any, modalities: Sequence[str]) -> Iterator[dict[str, SplitMean]]:
    """Within the block, ``model.encode`` is unchanged and adds each output of ``modalities`` to the
    yielded ``{modality: SplitMean}``."""
    means = {m: SplitMean() for m in modalities}

    def wrap(original: Any) -> Any:
        def encode(modality: str, batch: dict[str, Any]) -> EncoderOutput:
            out = original(modality, batch)
            if modality in means:
                means[modality].add(out)
            return out
        return encode

    with _wrapped_encode(model, wrap):
        yield means


@contextlib.contextmanager
def removed(model: Any, modalities: Sequence[str], mode: str, seed: int = 0,
            means: Mapping[str, SplitMean] | None = None, fraction: float = 1.0) -> Iterator[None]:
    """Within the block, ``model.encode`` removes ``modalities`` (see the module docstring); ``means``:
    the split means ``mode=mean`` needs, from ``recording``. ``fraction < 1``: only a random share of the
    samples loses the modality, each sample independently with probability ``fraction`` (drawn from the same
    seeded generator as the call's permutation; batches come in the same order for every model)."""
    if mode not in MODES:
        raise MMFuseError(f"robustness.mode={mode!r}: expected one of {MODES}")
    unknown = [m for m in modalities if m not in model.modalities]
    if unknown:
        raise MMFuseError(f"robustness: the model has no {unknown} encoder (its modalities: {list(model.modalities)})")
    if mode == "mean" and any(m not in (means or {}) for m in modalities):
        raise MMFuseError("robustness.mode=mean needs the split's mean outputs of every removed modality "
                          "(recording() during a clean pass)")
    calls = [0]

    def wrap(original: Any) -> Any:
        def encode(modality: str, batch: dict[str, Any]) -> EncoderOutput:
            out = original(modality, batch)
            if modality not in modalities:
                return out
            calls[0] += 1
            generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + calls[0])
            replaced = replace_output(out, mode, generator, (means or {}).get(modality))
            if fraction >= 1:
                return replaced
            rows = torch.rand(out.pooled.shape[0], generator=generator).to(out.pooled.device) < fraction
            pick = lambda a, b: torch.where(rows.view(-1, *[1] * (a.dim() - 1)), b, a)  # noqa: E731
            return EncoderOutput(*(pick(a, b) for a, b in zip(out, replaced, strict=True)))
        return encode

    with _wrapped_encode(model, wrap):
        yield
