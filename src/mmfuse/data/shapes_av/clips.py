"""The samples of ``data=shapes_av``: a ``shapes_video`` clip, its soundtrack and a caption with the rule.

Sample ``i`` of a split has a rule and three bits (``labels.py``, every (rule, bits) cell equally often)
and, drawn independently of them:

- a clip (``data.shapes_video.clip``: two objects of distinct colours and shapes, each visible only
  during its own event, the first half or the second half of the frames): one object moves vertically,
  ``up`` or ``down`` (the video bit), the other ``left`` or ``right`` (uniform, carrying nothing);
  which event is the vertical one (``vertical``: 0 first, 1 second) is uniform;
- a soundtrack (``soundtrack.py``): the tone sounds during the vertical object's event, so its onset
  says when that object moves, at ``LOW_HZ`` / ``HIGH_HZ`` (the audio bit), with a uniform phase;
- a caption ``"use <rule phrase>, key <off|on>"`` (``"use the video and sound, key on"``): the rule and
  the text bit, nothing about the clip or the tone.

The video bit needs frame order: an event run backwards is the event in the other direction with the
same frames in the other order (see ``data.shapes_video.clip``), so a model that pools frames without
time positions (``encoder.video.temporal=mean | max``) cannot read it, and its video rules stay at
chance; ``temporal=transformer`` can.

Everything is a function of ``(seed, split, n, frames, image_size)``; the noise of sample ``i``'s
soundtrack of ``(seed, split, i)`` alone (drawn when its batch is made, not stored).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmfuse.data.shapes.scene import COLORS, SHAPES
from mmfuse.data.shapes_av.labels import RULE_PHRASES, TEXT_WORDS, VIDEO_DIRECTIONS, balanced_cells
from mmfuse.data.shapes_av.soundtrack import FPS, Tone, pitch_hz, soundtrack
from mmfuse.data.shapes_video.clip import Clip, check_geometry, default_step, draw_clip, sample_event

GENERATOR_VERSION = 1
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
HORIZONTAL: tuple[str, str] = ("left", "right")


@dataclass
class AVSplit:
    """A split's samples: ``rules [n]``, ``bits [n, 3]`` (video, audio, text), ``vertical [n]`` (the
    event of the vertical mover and of the tone), ``phase [n]`` (the tone's, radians), the captions and
    the clips ``uint8 [n, frames, 3, S, S]``."""

    rules: np.ndarray
    bits: np.ndarray
    vertical: np.ndarray
    phase: np.ndarray
    texts: list[str]
    video: torch.Tensor


def caption(rule: int, text_bit: int) -> str:
    return f"use {RULE_PHRASES[rule]}, key {TEXT_WORDS[text_bit]}"


def clip_duration(frames: int) -> float:
    return frames / FPS


def tone_of(split: AVSplit, i: int, frames: int) -> Tone:
    """Sample ``i``'s tone: during the vertical event's frames ``[v h, (v + 1) h)``, ``h = frames / 2``."""
    half = clip_duration(frames) / 2
    start = half * int(split.vertical[i])
    return Tone(pitch_hz(int(split.bits[i, 1])), start, start + half, float(split.phase[i]))


def sample_clip(rng: np.random.Generator, down: int, vertical: int, image_size: int, frames: int,
                step: int) -> Clip:
    """Distinct colours and shapes; event ``vertical`` moves up / down (``down``), the other left / right."""
    names = list(COLORS)
    colors = rng.choice(len(names), size=2, replace=False)
    shapes = rng.choice(len(SHAPES), size=2, replace=False)
    directions = [HORIZONTAL[int(rng.integers(2))]] * 2
    directions[vertical] = VIDEO_DIRECTIONS[down]
    events = tuple(sample_event(rng, names[colors[k]], SHAPES[shapes[k]], directions[k], image_size,
                                frames // 2, step) for k in range(2))
    return Clip(events)  # type: ignore[arg-type]


def render_split(split: str, n: int, frames: int, image_size: int, seed: int) -> AVSplit:
    """The ``n`` samples of ``split`` (see the module docstring)."""
    step = default_step(image_size)
    check_geometry(frames, image_size, step)
    rng = np.random.default_rng([seed, SPLIT_IDS[split], GENERATOR_VERSION])
    rules, bits = balanced_cells(n, rng)
    vertical = rng.integers(2, size=n)
    phase = rng.uniform(0.0, 2 * np.pi, size=n)
    video = np.zeros((n, frames, 3, image_size, image_size), np.uint8)
    for i in range(n):
        clip = sample_clip(rng, int(bits[i, 0]), int(vertical[i]), image_size, frames, step)
        video[i] = draw_clip(clip, image_size, frames, rng, step)
    texts = [caption(int(r), int(b[2])) for r, b in zip(rules, bits, strict=True)]
    return AVSplit(rules, bits, vertical, phase, texts, torch.from_numpy(video))


def render_audio(split: AVSplit, name: str, indices: np.ndarray, frames: int, sample_rate: int,
                 seed: int) -> torch.Tensor:
    """The soundtracks ``float32 [len(indices), round(frames / FPS * sample_rate)]`` of those samples."""
    waves = [soundtrack(tone_of(split, int(i), frames), clip_duration(frames), sample_rate,
                        np.random.default_rng([seed, SPLIT_IDS[name], GENERATOR_VERSION, 1, int(i)]))
             for i in indices]
    return torch.from_numpy(np.stack(waves)) if waves else torch.zeros(0, round(clip_duration(frames) * sample_rate))
