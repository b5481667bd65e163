"""Audio encoders from Hugging Face: wav2vec2 / HuBERT / WavLM-like waveform models and AST.

``name_or_path``: a hub id (``facebook/wav2vec2-base``) or a local folder with ``config.json``, weights
and (optionally) ``preprocessor_config.json``; resolved as ``hf_text.hf_load`` does (never hangs
offline, one line naming the fix). ``pretrained=false``: random weights from the ``AutoConfig``.
The feature extractor's settings (``sampling_rate``, ``do_normalize``, AST's ``mean`` / ``std``) are
read when the source has one, else those models' defaults (16 kHz, normalise). The extractor itself
is not run: its computation is redone here in torch, on the batch's device.

Waveform models (any model with ``_get_feat_extract_output_lengths``: wav2vec2, HuBERT, WavLM, ...):

- input: per clip, over its real samples, ``x' = (x - mean) / sqrt(var + 1e-7)`` when ``do_normalize``
  (``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``), padded samples set to 0;
- tokens: the last hidden state, ``F = model._get_feat_extract_output_lengths(S)`` frames for the
  batch's ``S`` samples; frame mask: frame ``f`` is real when ``f < _get_feat_extract_output_lengths(L)``
  for the clip's ``L`` real samples (the frames whose receptive field lies in real samples);
- ``feat_extract_norm="layer"`` models (wav2vec2-large-lv60, HuBERT-large): the batch runs at once
  with the sample mask as ``attention_mask``; the conv features are per frame and the model zeroes
  padded frames before its positional convolution, so padding changes nothing;
- ``feat_extract_norm="group"`` models (wav2vec2-base, hubert-base-ls960): the first conv layer's
  GroupNorm normalises each channel over all the clip's time steps, padding included, so zero padding
  changes every frame, and these models were not trained with an ``attention_mask`` (Hugging Face:
  do not pass one, pad with zeros). Each clip runs alone on its real samples instead: the output is
  the model's output on the unpadded clip, independent of the batch (at the cost of B forward calls).

AST (``model_type="audio-spectrogram-transformer"``): ``ASTFeatureExtractor``'s features, per clip on
its real samples: ``torchaudio.compliance.kaldi.fbank`` (Hann window, 25 ms / 10 ms, ``num_mel_bins``),
zero-padded or cut to ``max_length`` frames, then ``(fbank - mean) / (2 std)``. AST has no padding
mask: every clip is padded to the same ``max_length`` frames (10.24 s for the AudioSet models), and
the patches over the padding are real tokens to it (the mask is all True), as in its training on
shorter clips; so a clip's output does not depend on the batch's padding, but does on ``max_length``.
Audio beyond ``max_length`` frames is cut (as the extractor does), with a warning that says so.
Tokens: ``[CLS], [DIST], patches``; ``pooling=cls``: ``(CLS + DIST) / 2``, AST's own pooler.

``pooling=mean``: the mean of the real tokens. ``trainable_last``: the last transformer layers.
``layerdrop``: the model's LayerDrop probability in training (wav2vec2 / HuBERT ship 0.05-0.1); the
default 0.0 turns it off because a skipped layer leaves parameters without gradients, which stops
DDP; null keeps the model's.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfuse.encoders.audio_transform import AudioTransform, masked_pool
from mmfuse.encoders.base import Encoder
from mmfuse.encoders.hf_text import hf_load
from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput

AST = "audio-spectrogram-transformer"
WHAT = "encoder.audio"


def feature_extractor(name_or_path: str) -> Any | None:
    """The source's feature extractor, or None when it has none (a folder without preprocessor_config.json)."""
    from transformers import AutoFeatureExtractor

    folder = Path(name_or_path).expanduser()
    if folder.is_dir() and not (folder / "preprocessor_config.json").is_file():
        return None
    try:
        return hf_load(AutoFeatureExtractor, name_or_path, WHAT)
    except (OSError, ValueError, MMFuseError):
        return None  # the model itself loaded from this source: only the extractor is missing


def receptive_field(model: nn.Module) -> int:
    """The fewest samples that give one frame: ``r <- (r - 1) s + k`` over the conv layers, last first."""
    r = 1
    for k, s in reversed(list(zip(model.config.conv_kernel, model.config.conv_stride))):
        r = (r - 1) * s + k
    return r


def normalize(audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per clip over its real samples (``var`` with ``1/L``, ``+1e-7``); padding 0."""
    m = mask.to(audio.dtype)
    n = m.sum(1, keepdim=True).clamp_min(1.0)
    mean = (audio * m).sum(1, keepdim=True) / n
    var = (((audio - mean) * m) ** 2).sum(1, keepdim=True) / n
    return torch.where(mask, (audio - mean) / torch.sqrt(var + 1e-7), torch.zeros((), device=audio.device))


class HFAudioEncoder(Encoder):
    def __init__(
        self,
        name_or_path: str = "facebook/wav2vec2-base",
        pretrained: bool = True,
        pooling: str = "mean",
        sample_rate: int | None = None,
        layerdrop: float | None = 0.0,
        freeze: bool = False,
        trainable_last: int = 0,
        load_weights: bool = True,
    ) -> None:
        super().__init__(freeze=freeze, trainable_last=trainable_last)
        from transformers import AutoConfig, AutoModel

        if pooling not in ("mean", "cls"):
            raise MMFuseError(f"{WHAT}.pooling={pooling!r}: expected 'mean' or 'cls' (AST only)")
        self.name_or_path = name_or_path
        self.pooling = pooling
        if pretrained and load_weights:
            self.model = hf_load(AutoModel, name_or_path, WHAT)
        else:
            self.model = AutoModel.from_config(hf_load(AutoConfig, name_or_path, WHAT))
        config = self.model.config
        self.is_ast = config.model_type == AST
        if not self.is_ast and not hasattr(self.model, "_get_feat_extract_output_lengths"):
            raise MMFuseError(
                f"{WHAT}.name_or_path={name_or_path!r} is a {config.model_type!r} model; supported: waveform "
                "models with a conv feature encoder (wav2vec2, hubert, wavlm, ...) and AST. Fix: name one of those"
            )
        if pooling == "cls" and not self.is_ast:
            raise MMFuseError(f"{WHAT}.pooling=cls: {config.model_type} has no CLS token; use pooling=mean")
        if layerdrop is not None and hasattr(config, "layerdrop"):
            config.layerdrop = float(layerdrop)
        extractor = feature_extractor(name_or_path)
        own_rate = int(getattr(extractor, "sampling_rate", 16000))
        if sample_rate is not None and int(sample_rate) != own_rate:
            raise MMFuseError(
                f"{WHAT}.sample_rate={sample_rate}: {name_or_path} takes {own_rate} Hz audio (its feature "
                f"extractor's sampling_rate). Fix: set {WHAT}.sample_rate=null or {own_rate}; clips are resampled to it"
            )
        self.sample_rate = own_rate
        self.do_normalize = bool(getattr(extractor, "do_normalize", True))
        if self.is_ast:
            self.fbank_mean = float(getattr(extractor, "mean", -4.2677393))
            self.fbank_std = float(getattr(extractor, "std", 4.5689974))
            self.cut_warned = False
        else:
            self.batched = getattr(config, "feat_extract_norm", "group") == "layer"
            self.min_samples = receptive_field(self.model)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # unused (pooling is ours): unused parameters would break DDP
        self.out_dim = int(config.hidden_size)
        self.transform = AudioTransform(self.sample_rate)
        self.apply_freeze()

    def blocks(self) -> list[nn.Module]:
        for path in ("encoder.layers", "encoder.layer", "layers", "layer"):
            try:
                module = self.model.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(module, nn.ModuleList):
                return list(module)
        return []

    def forward(self, audio: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderOutput:
        """``audio [B, S]`` float, ``mask [B, S]`` bool right-padded (None: all real) -> tokens, frame mask, pooled."""
        if mask is None:
            mask = torch.ones(audio.shape, dtype=torch.bool, device=audio.device)
        mask = mask.bool()
        if self.is_ast:
            tokens = self.model(input_values=self.ast_features(audio, mask)).last_hidden_state
            fmask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            pooled = (tokens[:, 0] + tokens[:, 1]) / 2 if self.pooling == "cls" else tokens.mean(1)
            return EncoderOutput(pooled, tokens, fmask)
        tokens, fmask = self.waveform_tokens(audio, mask)
        tokens = tokens * fmask.unsqueeze(-1).to(tokens.dtype)
        return EncoderOutput(masked_pool(tokens, fmask, "mean"), tokens, fmask)

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of clips of ``lengths`` samples, the model's own formula (0 for clips shorter than one frame)."""
        return self.model._get_feat_extract_output_lengths(lengths).long().clamp_min(0)

    def waveform_tokens(self, audio: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if audio.shape[1] < self.min_samples:  # fewer samples than one frame: pad to one (not real) frame
            pad = self.min_samples - audio.shape[1]
            audio = nn.functional.pad(audio, (0, pad))
            mask = nn.functional.pad(mask, (0, pad), value=False)
        with torch.autocast(audio.device.type, enabled=False):
            x = normalize(audio.float(), mask) if self.do_normalize else torch.where(mask, audio.float(), 0.0)
        x = x.to(self.model.dtype)
        lengths = mask.sum(1)
        n_frames = int(self.frames(torch.tensor(audio.shape[1])))
        fmask = torch.arange(n_frames, device=audio.device) < self.frames(lengths).unsqueeze(1)
        if self.batched:
            return self.model(input_values=x, attention_mask=mask.long()).last_hidden_state, fmask
        tokens = x.new_zeros(x.shape[0], n_frames, self.out_dim)
        for i, n in enumerate(lengths.tolist()):
            if n >= self.min_samples:
                out = self.model(input_values=x[i : i + 1, :n]).last_hidden_state[0]
                tokens[i, : out.shape[0]] = out
        return tokens, fmask

    def ast_features(self, audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``ASTFeatureExtractor``'s ``input_values [B, max_length, num_mel_bins]``, per clip on its real samples."""
        import torchaudio.compliance.kaldi as kaldi

        config = self.model.config
        frames, bins = int(config.max_length), int(config.num_mel_bins)
        feats = audio.new_zeros(audio.shape[0], frames, bins, dtype=torch.float32)
        window = round(0.025 * self.sample_rate)
        with torch.autocast(audio.device.type, enabled=False):
            for i, n in enumerate(mask.sum(1).tolist()):
                if n < window:
                    continue  # shorter than one 25 ms window: no frame (all padding)
                fbank = kaldi.fbank(audio[i : i + 1, :n].float(), sample_frequency=self.sample_rate,
                                    window_type="hanning", num_mel_bins=bins)
                if fbank.shape[0] > frames and not self.cut_warned:
                    self.cut_warned = True
                    warnings.warn(
                        f"{WHAT}: {self.name_or_path} takes {frames} frames ({frames / 100:.2f} s); a clip of "
                        f"{n / self.sample_rate:.2f} s was cut to that, as its feature extractor does (this "
                        "warning is shown once). Fix: cut the clips in the data to choose which part is kept",
                        stacklevel=2,
                    )
                feats[i, : min(frames, fbank.shape[0])] = fbank[:frames]
            if self.do_normalize:
                feats = (feats - self.fbank_mean) / (self.fbank_std * 2)
        return feats.to(self.model.dtype)
