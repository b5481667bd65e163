"""What audio encoders share: the resampling transform and masked pooling over frames.

Contract of an audio encoder: ``forward(audio [B, S] float, mask [B, S] bool | None) -> EncoderOutput``
with the mono waveform at the encoder's ``sample_rate`` (clips right-padded, ``mask`` True on real
samples; None: all real). ``transform(wave, rate)`` brings one decoded clip to that rate.
"""

from __future__ import annotations

import torch


class AudioTransform:
    """``(wave float [S] or [C, S], rate) -> mono float [S']`` at ``sample_rate``.

    Channels are averaged (mono), then ``torchaudio.functional.resample`` (band-limited windowed sinc,
    its defaults) from ``rate`` to ``sample_rate``: ``S' = ceil(S * sample_rate / rate)``. Identity
    (the same tensor, as float32) when ``rate == sample_rate``.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = int(sample_rate)

    def __call__(self, wave: torch.Tensor, rate: int) -> torch.Tensor:
        if not torch.is_floating_point(wave):
            raise TypeError(f"AudioTransform expects a float waveform in [-1, 1], got {wave.dtype}")
        if wave.dim() == 2:
            wave = wave.mean(0)
        if wave.dim() != 1:
            raise ValueError(f"AudioTransform expects a waveform [S] or [C, S], got shape {tuple(wave.shape)}")
        wave = wave.float()
        if int(rate) == self.sample_rate:
            return wave
        import torchaudio.functional as AF

        return AF.resample(wave, int(rate), self.sample_rate)

    def __repr__(self) -> str:
        return f"AudioTransform(sample_rate={self.sample_rate}, mono=mean, resample=torchaudio.functional.resample)"


def masked_pool(tokens: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """``[B, T, D], [B, T] -> [B, D]``: the mean (``sum_t m_t x_t / max(1, sum_t m_t)``) or the max of the
    real tokens; a clip without real tokens pools to zeros."""
    m = mask.unsqueeze(-1)
    if how == "max":
        pooled = tokens.masked_fill(~m, float("-inf")).amax(1)
        return torch.where(mask.any(1, keepdim=True), pooled, torch.zeros_like(pooled))
    w = m.to(tokens.dtype)
    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)
