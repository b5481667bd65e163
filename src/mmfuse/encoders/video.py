"""Video encoder: an image encoder on every frame, then a temporal model over the frames.

``VideoEncoder.forward(video [B, T, 3, H, W] float, mask [B, T] bool | None) -> EncoderOutput``, in two
stages that can also run apart (a per-frame feature cache runs the first once):

1. ``encode_frames``: the ``frame`` encoder (any ``encoder.image`` option) on the real frames of all
   clips as one batch of images; padded frames (mask False) are not encoded and read as zeros, so they
   change nothing, not even BatchNorm statistics in training;
2. ``temporal_forward``: with ``v_t`` the frame encoder's ``pooled`` vector of frame ``t`` and ``m_t``
   the mask,

   - ``mean``: ``pooled = sum_t m_t v_t / sum_t m_t``; ``max``: ``pooled_d = max_{t: m_t} v_{t,d}``.
     Both ignore time positions (they have none): they are invariant to the order of the frames, which
     is what the shapes_video benchmark sets against ``transformer``. No parameters of their own, so a
     frozen frame encoder with mean or max pooling is fully frozen (cacheable);
   - ``transformer``: ``h = TransformerEncoder(v + P[t])`` with a learned time-position table
     ``P = nn.Embedding(max_frames, D)``, padded frames masked out as keys; ``pooled = sum_t m_t h_t /
     sum_t m_t``. Pre-norm layers (GELU, feed-forward width ``4D``) and a final LayerNorm: its
     parameters number ``max_frames·D + layers·(12D² + 13D) + 2D``.

Tokens: the per-frame vectors ``[B, T, D]`` (``h`` for ``transformer``, ``v`` otherwise), or with
``grid=True`` the frame encoder's tokens of all frames ``[B, T·N, D]`` (frame-major; for
``transformer`` each plus its frame's ``P[t]``). The mask is ``mask`` (all True when None), for the grid
``frame mask[b, t, n] and mask[b, t]``. A clip with no real frame gets ``pooled = 0``.

Frame sampling is an encoder setting (``encoder.video.frames`` / ``sampling`` / ``fps`` / ``stride``,
``mmfuse.data.video_files.sample_frame_indices``): the ``transform`` carries it, and a dataset of video
files asks it how many frames to decode and how. The configs default ``frames`` to ``data.frames``
when the data has one (embedded clips, e.g. ``data=shapes_video``), else 8, so that the two agree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mmfuse.data.video_files import sample_frame_indices
from mmfuse.encoders.base import Encoder
from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput

TEMPORAL = ("mean", "max", "transformer")


class FrameTransform:
    """``frames uint8 [T, 3, H, W] -> float [T, 3, H', W']``: the frame encoder's image ``transform``
    applied to the frames as one batch (the same as applying it frame by frame: resizing, cropping and
    normalisation act on each image alone).

    ``frames``, ``sampling``, ``fps``, ``stride``: which frames a dataset of video files decodes
    (``read_video(path, frames, sampling, fps, stride)``); embedded clips come with their own frames."""

    def __init__(self, image_transform: Callable[[torch.Tensor], torch.Tensor], frames: int = 8,
                 sampling: str = "uniform", fps: float | None = None, stride: int | None = None) -> None:
        self.image_transform = image_transform
        self.frames, self.sampling, self.fps, self.stride = frames, sampling, fps, stride

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise MMFuseError(f"encoder.video: a clip's frames must be [T, 3, H, W]; got {tuple(frames.shape)}")
        return self.image_transform(frames)

    def __repr__(self) -> str:  # part of the feature cache's key
        return (f"FrameTransform({self.image_transform!r}, frames={self.frames}, sampling={self.sampling}, "
                f"fps={self.fps}, stride={self.stride})")


class VideoEncoder(Encoder):
    def __init__(
        self,
        frame: Encoder,
        temporal: str = "mean",
        frames: int = 8,
        sampling: str = "uniform",
        fps: float | None = None,
        stride: int | None = None,
        max_frames: int = 32,
        grid: bool = False,
        layers: int = 1,
        heads: int = 4,
        dropout: float = 0.0,
        freeze: bool = False,
        trainable_last: int = 0,
    ) -> None:
        super().__init__(freeze=freeze, trainable_last=trainable_last)
        if temporal not in TEMPORAL:
            raise MMFuseError(f"encoder.video.temporal={temporal!r}: expected one of {', '.join(TEMPORAL)}")
        self.frame = frame
        self.temporal = temporal
        self.grid = bool(grid)
        self.max_frames = int(max_frames)
        self.out_dim = d = frame.out_dim
        try:  # a setting that cannot sample is refused here, not in the first batch
            sample_frame_indices(1, frames, sampling, 30.0, fps, stride)
        except MMFuseError as e:
            raise MMFuseError(f"encoder.video: {e}") from None
        if temporal == "transformer" and frames > self.max_frames:
            raise MMFuseError(f"encoder.video.frames={frames} > encoder.video.max_frames={self.max_frames}: "
                              "the transformer has no time position for the extra frames. Fix: raise max_frames")
        self.transform = FrameTransform(frame.transform, frames, sampling, fps, stride)
        self.position: nn.Embedding | None = None
        self.temporal_model: nn.TransformerEncoder | None = None
        if temporal == "transformer":
            if self.max_frames < 1 or layers < 1:
                raise MMFuseError(f"encoder.video: max_frames={max_frames} and layers={layers} must be >= 1 "
                                  "for temporal=transformer")
            if heads < 1 or d % heads:
                raise MMFuseError(f"encoder.video.heads={heads} does not divide the frame encoder's width {d}; "
                                  "choose a divisor of it")
            self.position = nn.Embedding(self.max_frames, d)
            nn.init.normal_(self.position.weight, std=0.02)
            layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=dropout,
                                               activation="gelu", batch_first=True, norm_first=True)
            self.temporal_model = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d),
                                                        enable_nested_tensor=False)
        self.apply_freeze()

    def blocks(self) -> list[nn.Module]:
        """The frame encoder's blocks, then the transformer's layers (the first with the time positions,
        the last with the final LayerNorm)."""
        if self.temporal_model is None:
            return list(self.frame.blocks())
        temporal: list[nn.Module] = list(self.temporal_model.layers)
        temporal[0] = nn.ModuleList([self.position, temporal[0]])
        temporal[-1] = nn.ModuleList([temporal[-1], self.temporal_model.norm])
        return [*self.frame.blocks(), *temporal]

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderOutput:
        mask = self._mask(video, mask)
        return self.temporal_forward(self.encode_frames(video, mask), mask)

    def encode_frames(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderOutput:
        """The frame encoder alone: ``pooled [B, T, D]``, ``tokens [B, T, N, D]``, ``mask [B, T, N]``.

        Only frames with ``mask`` True are encoded; the others are zeros with mask False."""
        mask = self._mask(video, mask)
        b, t = mask.shape
        real = mask.flatten()
        frames = video.flatten(0, 1)
        every = bool(real.all())
        out = self.frame(frames if every else frames[real])
        if every:
            return EncoderOutput(out.pooled.unflatten(0, (b, t)), out.tokens.unflatten(0, (b, t)),
                                 out.mask.unflatten(0, (b, t)))
        parts = []
        for x in out:
            full = x.new_zeros((b * t, *x.shape[1:]))
            full[real] = x
            parts.append(full.unflatten(0, (b, t)))
        return EncoderOutput(*parts)

    def temporal_forward(self, frame_out: EncoderOutput, mask: torch.Tensor | None = None) -> EncoderOutput:
        """Stage 2 on ``encode_frames``' output (see the module docstring for the formulas)."""
        v = frame_out.pooled
        b, t, _ = v.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=v.device)
        weight = mask.unsqueeze(-1).to(v.dtype)
        count = weight.sum(1).clamp(min=1)
        position = None
        if self.temporal_model is not None:
            if t > self.max_frames:
                raise MMFuseError(f"encoder.video.max_frames={self.max_frames} but a clip has {t} frames; "
                                  "raise encoder.video.max_frames or sample fewer frames (data.frames)")
            position = self.position.weight[:t].to(v.dtype)
            pad = ~mask
            pad[~mask.any(1)] = False  # a clip with no real frame attends to its padding, not to nothing (NaN)
            v = self.temporal_model(v + position, src_key_padding_mask=pad)
            pooled = (v * weight).sum(1) / count
        elif self.temporal == "mean":
            pooled = (v * weight).sum(1) / count
        else:
            pooled = v.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
            pooled = pooled.masked_fill(~mask.any(1, keepdim=True), 0.0)
        if not self.grid:
            return EncoderOutput(pooled, v, mask)
        tokens = frame_out.tokens
        if position is not None:
            tokens = tokens + position[:, None]
        grid_mask = frame_out.mask & mask.unsqueeze(-1)
        return EncoderOutput(pooled, tokens.flatten(1, 2), grid_mask.flatten(1, 2))

    @staticmethod
    def _mask(video: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if video.dim() != 5 or video.shape[2] != 3:
            raise MMFuseError(f"encoder.video expects video [B, T, 3, H, W]; got {tuple(video.shape)}")
        if mask is None:
            return torch.ones(video.shape[:2], dtype=torch.bool, device=video.device)
        if tuple(mask.shape) != tuple(video.shape[:2]):
            raise MMFuseError(f"encoder.video: the frame mask is {tuple(mask.shape)}, the video "
                              f"{tuple(video.shape)}; expected a mask [B, T]")
        return mask.bool()
