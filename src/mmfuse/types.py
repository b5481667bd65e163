"""The small structures that flow between encoders, fusions and tasks."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class EncoderOutput(NamedTuple):
    """What every encoder returns.

    - ``pooled``: ``[B, D]`` one vector per sample;
    - ``tokens``: ``[B, T, D]`` the sequence (text tokens, conv grid cells or ViT patches);
    - ``mask``: ``[B, T]`` bool, True where ``tokens`` holds a real token (False = padding).
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


# The modalities mmfuse knows, in the canonical order: a run's inputs, a fusion's ``dims`` and every
# per-modality table follow it (text last, so that a pair is (image | video | audio, text)).
MODALITIES: tuple[str, ...] = ("image", "video", "audio", "text")


class LateOutput(dict):
    """What a late fusion returns: one embedding per modality ``{name: [B, D]}``, combined by the task.

    A ``dict`` in ``MODALITIES`` order; ``out.image`` reads ``out["image"]``. ``LateOutput(u, v)``, the
    two-input form late fusions used before N modalities, is ``{"image": u, "text": v}`` (iterating a
    ``LateOutput`` gives its modality names, as a dict's keys: unpack ``out["image"], out["text"]``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) == 2 and all(isinstance(a, torch.Tensor) for a in args):
            args, kwargs = (), {"image": args[0], "text": args[1], **kwargs}
        super().__init__(*args, **kwargs)

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# How an image-text pair was made, for ITM batches (``batch["pair_type"]`` indexes this tuple).
# "positive" is the true caption; the rest are kinds of negative (see mmfuse.data.shapes.negatives;
# "hard" is a negative mined as the most similar wrong caption).
# "direction" / "order" are the video negatives of data=shapes_video (an event's direction reversed, the two
# events swapped). New types are appended: the indices of the old ones never change.
PAIR_TYPES: tuple[str, ...] = ("positive", "other", "color", "shape", "relation", "binding", "hard",
                               "direction", "order")
