"""The soundtrack of a ``data=shapes_av`` clip: a tone during one object's event, plus a little noise.

A clip of ``frames`` frames lasts ``frames / FPS`` seconds. The tone sounds while the object that moves
vertically moves (its event: ``[start_s, end_s)``), at ``LOW_HZ`` or ``HIGH_HZ`` (the audio bit; the
frames do not show it), so the tone's timing ties to that object's motion and its pitch carries what
only the sound holds. With ``t = n / sample_rate`` for sample ``n`` of ``round(duration_s * sample_rate)``::

    wave[n] = A · env(t) · sin(2π f t + φ) + σ · ε_n,     ε_n ~ N(0, 1)
    env(t)  = 0 outside [start_s, end_s), rising / falling as a raised cosine over RAMP_S at its edges, else 1

(the ramps keep the tone's edges from clicking: a click spreads energy over all frequencies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FPS = 8  # frames per second of a clip: 8 frames last 1.0 s
LOW_HZ, HIGH_HZ = 440.0, 880.0  # the audio bit 0 / 1 (A4 / A5)
AMPLITUDE = 0.5
NOISE_STD = 0.01
RAMP_S = 0.005


@dataclass(frozen=True)
class Tone:
    hz: float
    start_s: float
    end_s: float
    phase: float = 0.0  # radians
    amplitude: float = AMPLITUDE


def pitch_hz(high: int | bool) -> float:
    return HIGH_HZ if high else LOW_HZ


def envelope(t: np.ndarray, start_s: float, end_s: float, ramp_s: float = RAMP_S) -> np.ndarray:
    """1 inside ``[start_s, end_s)``, 0 outside, raised-cosine ramps of ``ramp_s`` inside both edges."""
    inside = (t >= start_s) & (t < end_s)
    edge = np.minimum(t - start_s, end_s - t)  # distance to the nearer edge, positive inside
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.clip(edge / ramp_s, 0.0, 1.0))
    return np.where(inside, ramp, 0.0)


def soundtrack(tone: Tone | None, duration_s: float, sample_rate: int, rng: np.random.Generator,
               noise_std: float = NOISE_STD) -> np.ndarray:
    """The mono waveform ``float32 [round(duration_s * sample_rate)]`` of the module docstring's formula
    (``tone=None``: the noise alone)."""
    n = int(round(duration_s * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    wave = noise_std * rng.standard_normal(n)
    if tone is not None:
        env = envelope(t, tone.start_s, tone.end_s)
        wave += tone.amplitude * env * np.sin(2 * np.pi * tone.hz * t + tone.phase)
    return wave.astype(np.float32)
