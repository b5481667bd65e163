"""A log-mel front end with a small CNN or transformer: the trainable-from-scratch audio encoder."""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.encoders.audio_transform import AudioTransform, masked_pool
from mmfuse.encoders.base import Encoder
from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput

LOG_FLOOR = 1e-6


def frame_mask(mask: torch.Tensor, hop: int) -> torch.Tensor:
    """Frame ``f`` (centred on sample ``f * hop``) is real when its centre sample is: ``[B, S] -> [B, 1 + S // hop]``.

    For a right-padded clip of ``L`` real samples that is frames ``0 .. ceil(L / hop) - 1``; frame
    ``S / hop`` (when ``hop`` divides ``S``) is centred past the last sample and never real."""
    past_end = torch.zeros(mask.shape[0], 1, dtype=torch.bool, device=mask.device)
    return torch.cat([mask.bool(), past_end], 1)[:, ::hop]


class LogMelEncoder(Encoder):
    """``log(mel(wave) + 1e-6)`` frames -> ``cnn`` or ``transformer`` -> one token per frame.

    Front end: ``torchaudio.transforms.MelSpectrogram`` (power 2, ``n_fft = win_length = sample_rate ·
    win_ms / 1000``, ``hop = sample_rate · hop_ms / 1000``, ``center=True``), so ``F = 1 + S // hop``
    frames for ``S`` samples, frame ``f`` centred on sample ``f · hop``; frame mask: frame ``f`` is real
    when sample ``f · hop`` is (``frame_mask``). Pooled: the masked mean (``pooling=mean``) or max of
    the tokens; tokens of padded frames are zeros.

    Padding invariance is exact (a clip gives the same real tokens and pooled vector with any amount of
    padding, whatever the padded samples hold), by three choices:

    - padded samples are set to 0 before the STFT and the STFT pads the clip's edges with zeros
      (``pad_mode="constant"``, not reflect): a frame whose window runs past the real samples sees zeros
      whether the clip was padded or not;
    - ``cnn``: 3x3 convolutions over (mel, time), stride 2 along mel only (time frames stay tokens),
      GELU, and the padded frames set to 0 before every convolution: the convolution's own zero padding
      at the end of an unpadded clip and the zeroed frames of a padded one are the same zeros. Time
      kernels of 3 give each token context (``layers`` frames each side) at no cost to exactness. No
      BatchNorm (its batch statistics would mix in padding); the mel axis is flattened into a linear
      projection and a per-frame LayerNorm;
    - ``transformer``: each frame projected (``Linear(n_mels, width)``, LayerNorm) plus a learned time
      position (``N(0, 1)``, the scale of the normalised frames: see ``TinyTextTransformer`` for why),
      pre-norm ``nn.TransformerEncoder`` with the padded frames as ``src_key_padding_mask``. Clips are
      at most ``max_frames`` frames (10.24 s at the defaults); padding beyond that is cut.

    ``pretrained``: false or the path of a state dict (no published weights).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 64,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        backbone: str = "cnn",
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        max_frames: int = 1024,
        pooling: str = "mean",
        pretrained: bool | str = False,
        freeze: bool = False,
        trainable_last: int = 0,
        load_weights: bool = True,
    ) -> None:
        super().__init__(freeze=freeze, trainable_last=trainable_last)
        import torchaudio

        if backbone not in ("cnn", "transformer"):
            raise MMFuseError(f"encoder.audio.backbone={backbone!r}: expected 'cnn' or 'transformer'")
        if pooling not in ("mean", "max"):
            raise MMFuseError(f"encoder.audio.pooling={pooling!r}: expected 'mean' or 'max'")
        self.win = round(sample_rate * win_ms / 1000)
        self.hop = round(sample_rate * hop_ms / 1000)
        if self.win < 2 or self.hop < 1:
            raise MMFuseError(f"encoder.audio: win_ms={win_ms} / hop_ms={hop_ms} at sample_rate={sample_rate} give "
                              f"{self.win} / {self.hop} samples; use a window of at least 2 samples and a hop of 1")
        self.sample_rate = int(sample_rate)
        self.n_mels = int(n_mels)
        self.backbone = backbone
        self.pooling = pooling
        self.max_frames = int(max_frames)
        self.out_dim = int(width)
        self.transform = AudioTransform(sample_rate)
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=self.win, win_length=self.win, hop_length=self.hop, n_mels=n_mels,
            center=True, pad_mode="constant", power=2.0,
        )
        if backbone == "cnn":
            self.stages = nn.ModuleList(
                nn.Sequential(nn.Conv2d(1 if i == 0 else width, width, 3, stride=(2, 1), padding=1), nn.GELU())
                for i in range(layers)
            )
            mels = n_mels
            for _ in range(layers):
                mels = (mels - 1) // 2 + 1
            self.head = nn.Sequential(nn.Linear(width * mels, width), nn.LayerNorm(width))
        else:
            self.embed = nn.Sequential(nn.Linear(n_mels, width), nn.LayerNorm(width))
            self.position = nn.Parameter(torch.randn(1, max_frames, width))
            layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                               batch_first=True, norm_first=True)
            self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(width)
        self.load_own_weights(pretrained, load_weights, f"encoder.audio=logmel_{backbone}")
        self.apply_freeze()

    def blocks(self) -> list[nn.Module]:
        if self.backbone == "cnn":
            return [*self.stages, self.head]
        return list(self.layers.layers)

    def features(self, audio: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, S]`` -> log-mel ``[B, n_mels, F]`` (float32) and the frame mask ``[B, F]``."""
        if mask is None:
            mask = torch.ones(audio.shape, dtype=torch.bool, device=audio.device)
        mask = mask.bool()
        with torch.autocast(audio.device.type, enabled=False):
            wave = torch.where(mask, audio.float(), torch.zeros((), device=audio.device))
            logmel = torch.log(self.melspec(wave) + LOG_FLOOR)
        return logmel, frame_mask(mask, self.hop)

    def forward(self, audio: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderOutput:
        logmel, fmask = self.features(audio, mask)
        if logmel.shape[-1] > self.max_frames:
            if fmask[:, self.max_frames:].any():
                raise MMFuseError(
                    f"encoder.audio: a clip has {int(fmask.sum(1).max())} frames of real audio, more than "
                    f"encoder.audio.max_frames={self.max_frames} ({self.max_frames * self.hop / self.sample_rate:.2f} s). "
                    "Fix: raise encoder.audio.max_frames or cut the clips shorter in the data"
                )
            logmel, fmask = logmel[..., : self.max_frames], fmask[:, : self.max_frames]
        keep = fmask.unsqueeze(1).to(logmel.dtype)  # [B, 1, F]
        if self.backbone == "cnn":
            x = (logmel * keep).unsqueeze(1)  # [B, 1, n_mels, F]
            for stage in self.stages:
                x = stage(x) * keep.unsqueeze(1)
            tokens = self.head(x.flatten(1, 2).transpose(1, 2))
        else:
            f = logmel.shape[-1]
            x = self.embed(logmel.transpose(1, 2)) + self.position[:, :f]
            # a clip without real frames attends to all (its tokens are zeroed below): no all -inf softmax row
            pad = ~fmask & fmask.any(1, keepdim=True)
            tokens = self.norm(self.layers(x, src_key_padding_mask=pad))
        tokens = tokens * fmask.unsqueeze(-1).to(tokens.dtype)
        return EncoderOutput(masked_pool(tokens, fmask, self.pooling), tokens, fmask)
