"""Audio encoders: the log-mel CNN / transformer, and Hugging Face wav2vec2 / HuBERT / AST on tiny random
configs saved to a folder and loaded by path (the real loading code)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hydra.utils import instantiate

from mmfuse.encoders.audio_logmel import LogMelEncoder
from mmfuse.encoders.audio_transform import AudioTransform
from mmfuse.encoders.hf_audio import HFAudioEncoder
from mmfuse.errors import MMFuseError
from tests.conftest import CONF_DIR

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(32, 32),
            conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
# conv (10, 5) then (3, 2): L samples -> floor((floor((L - 10) / 5) + 1 - 3) / 2) + 1 frames; 400 samples of
# receptive field at 16 kHz in the real models, 20 samples here
WAVEFORM_MODELS = [("wav2vec2", "layer"), ("wav2vec2", "group"), ("hubert", "group"), ("hubert", "layer")]


def right_padded(lengths: list[int], total: int, junk: float = 100.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random clips of ``lengths`` samples, padded to ``total`` with large junk (mask False)."""
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(len(lengths), total, generator=g) * 0.1
    mask = torch.arange(total) < torch.tensor(lengths).unsqueeze(1)
    return torch.where(mask, audio, junk * torch.randn(audio.shape, generator=g)), mask


def sine(freq: float, n: int, rate: int = 16000) -> torch.Tensor:
    return torch.sin(2 * math.pi * freq * torch.arange(n) / rate)


def assert_same_clip(out, i: int, alone, atol: float = 1e-5) -> None:
    """Clip ``i`` of a padded batch encodes as the clip ``alone`` (a batch of one, unpadded)."""
    n = int(alone.mask[0].sum())
    assert int(out.mask[i].sum()) == n
    torch.testing.assert_close(out.tokens[i, :n], alone.tokens[0, :n], atol=atol, rtol=0)
    torch.testing.assert_close(out.pooled[i], alone.pooled[0], atol=atol, rtol=0)
    assert not out.tokens[i, n:].any(), "tokens of padded frames are zeros"


# ---------------------------------------------------------------- log-mel


@pytest.mark.parametrize("backbone", ["cnn", "transformer"])
def test_logmel_frames_formula(backbone):
    """F = 1 + S // hop frames (hop = 160 at 16 kHz, 10 ms); a clip of L real samples has ceil(L / hop) real ones."""
    torch.manual_seed(0)
    enc = LogMelEncoder(backbone=backbone, width=48, heads=4).eval()
    assert (enc.win, enc.hop, enc.out_dim) == (400, 160, 48)
    for total, lengths, frames, real in [(4000, [4000, 2500, 161, 160], 26, [25, 16, 2, 1]),
                                         (3999, [3999, 1, 0], 25, [25, 1, 0]),
                                         (100, [100], 1, [1])]:
        audio, mask = right_padded(lengths, total)
        out = enc(audio, mask)
        assert out.tokens.shape == (len(lengths), frames, 48)
        assert out.pooled.shape == (len(lengths), 48)
        assert out.mask.sum(1).tolist() == real
        assert torch.isfinite(out.pooled).all()
        torch.testing.assert_close(enc(audio, mask.long()).pooled, out.pooled, atol=0, rtol=0)  # a 0/1 mask
    empty = enc(*right_padded([0, 50], 400))
    assert not empty.pooled[0].any(), "a clip without samples pools to zeros"


@pytest.mark.parametrize("backbone,pooling", [("cnn", "mean"), ("cnn", "max"), ("transformer", "mean")])
def test_logmel_padding_changes_nothing(backbone, pooling):
    """Each clip of a junk-padded batch encodes exactly as itself alone, unpadded (the STFT edge, the
    convolutions' time context and the attention all see zeros or nothing past the real samples)."""
    torch.manual_seed(0)
    enc = LogMelEncoder(backbone=backbone, pooling=pooling).eval()
    lengths = [2500, 4000, 1234]
    audio, mask = right_padded(lengths, 5000)
    out = enc(audio, mask)
    for i, n in enumerate(lengths):
        assert_same_clip(out, i, enc(audio[i : i + 1, :n]))


def test_logmel_sine_peaks_in_its_mel_band():
    """A 1 kHz sine puts its energy in the mel band of FFT bin 1000 / (16000 / 400) = 25, a 3 kHz one in
    that of bin 75 (the bands torchaudio's filter bank gives those bins most weight in)."""
    torch.manual_seed(0)
    enc = LogMelEncoder().eval()
    fb = enc.melspec.mel_scale.fb  # [n_freqs, n_mels]
    low, high = sine(1000, 8000), sine(3000, 8000)
    logmel, _ = enc.features(torch.stack([low, high]))
    inner = logmel[:, :, 2:-3]  # frames whose window lies inside the clip
    assert (inner[0].argmax(0) == fb[25].argmax()).all()
    assert (inner[1].argmax(0) == fb[75].argmax()).all()
    # HTK mel(f) = 2595 log10(1 + f / 700); band m peaks at mel (m + 1) * mel(8000) / 65: 1 kHz -> m + 1 =
    # 1000.0 / 43.69 = 22.9 -> band 22; 3 kHz -> 1876.5 / 43.69 = 42.9 -> band 42
    assert int(fb[25].argmax()) == 22 and int(fb[75].argmax()) == 42
    out = enc(torch.stack([low, high]))
    assert (out.tokens[0] - out.tokens[1]).abs().mean() > 0.1


def test_logmel_transformer_max_frames():
    torch.manual_seed(0)
    enc = LogMelEncoder(backbone="transformer", max_frames=10).eval()
    audio, mask = right_padded([1600, 1000], 4000)  # 10 and 7 real frames of 26
    out = enc(audio, mask)
    assert out.tokens.shape == (2, 10, 64) and out.mask.sum(1).tolist() == [10, 7]
    with pytest.raises(MMFuseError, match=r"a clip has 11 frames of real audio, more than encoder.audio.max_frames=10 "
                                          r"\(0.10 s\). Fix: raise encoder.audio.max_frames"):
        enc(*right_padded([1601], 4000))


def test_logmel_freeze_trainable_last_and_state_dict(tmp_path):
    torch.manual_seed(0)
    enc = LogMelEncoder(freeze=True, trainable_last=1)
    assert len(enc.blocks()) == 3  # two conv stages, then the projection
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"}
    torch.save(enc.state_dict(), tmp_path / "audio.pt")
    torch.manual_seed(1)
    again = LogMelEncoder(pretrained=str(tmp_path / "audio.pt")).eval()
    audio = sine(440, 3000)[None]
    torch.testing.assert_close(again(audio).pooled, enc.eval()(audio).pooled, atol=0, rtol=0)
    with pytest.raises(MMFuseError, match="no published weights"):
        LogMelEncoder(pretrained=True)
    with pytest.raises(MMFuseError, match="encoder.audio.backbone='lstm': expected 'cnn' or 'transformer'"):
        LogMelEncoder(backbone="lstm")


def test_transform_resamples_to_the_encoder_rate():
    t = LogMelEncoder().transform
    assert t(torch.zeros(8000), 8000).shape == (16000,)
    assert t(torch.zeros(1001), 44100).shape == (364,)  # ceil(1001 * 16000 / 44100)
    same = torch.randn(500)
    assert t(same, 16000) is same
    resampled = t(sine(440, 8000, rate=8000), 8000)  # a 440 Hz tone stays a 440 Hz tone
    assert (resampled - sine(440, 16000))[500:-500].abs().max() < 1e-3
    stereo = torch.stack([torch.ones(100), torch.zeros(100)])
    torch.testing.assert_close(t(stereo, 16000), torch.full((100,), 0.5))
    with pytest.raises(TypeError, match="float waveform"):
        t(torch.zeros(10, dtype=torch.int16), 16000)
    assert repr(AudioTransform(8000)).startswith("AudioTransform(sample_rate=8000,")


# ---------------------------------------------------------------- Hugging Face


def save_waveform_model(folder, kind: str, norm: str, extractor: dict | None = None, **config) -> None:
    from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(kind, feat_extract_norm=norm, **{**TINY, **config})).save_pretrained(folder)
    if extractor is not None:
        Wav2Vec2FeatureExtractor(**extractor).save_pretrained(folder)


@pytest.fixture(scope="module")
def waveform_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_audio")
    for kind, norm in WAVEFORM_MODELS:
        save_waveform_model(root / f"{kind}_{norm}", kind, norm,
                            extractor={"do_normalize": True, "return_attention_mask": norm == "layer"})
    return root


@pytest.fixture(scope="module")
def ast_model(tmp_path_factory):
    from transformers import ASTFeatureExtractor, AutoConfig, AutoModel

    folder = tmp_path_factory.mktemp("hf_ast")
    torch.manual_seed(0)
    config = AutoConfig.for_model("audio-spectrogram-transformer", hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=37, num_mel_bins=16, max_length=32)
    AutoModel.from_config(config).save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=16, max_length=32).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind,norm", WAVEFORM_MODELS)
def test_hf_waveform_frames_padding_and_parity(waveform_models, kind, norm):
    """Frames by the model's own formula; each clip of a junk-padded batch is the model's output on that clip
    alone through its own feature extractor (Hugging Face's pipeline, unbatched)."""
    from transformers import AutoFeatureExtractor, AutoModel

    folder = waveform_models / f"{kind}_{norm}"
    enc = HFAudioEncoder(str(folder), pretrained=True).eval()
    assert (enc.out_dim, enc.sample_rate, enc.batched) == (32, 16000, norm == "layer")
    lengths = [1600, 1000, 19, 20]
    audio, mask = right_padded(lengths, 2000)
    out = enc(audio, mask)
    model = AutoModel.from_pretrained(folder).eval()
    frames = model._get_feat_extract_output_lengths(torch.tensor([2000, *lengths]))
    assert frames.tolist() == [199, 159, 99, 0, 1]
    assert out.tokens.shape == (4, 199, 32)
    assert out.mask.sum(1).tolist() == [159, 99, 0, 1]
    assert not out.pooled[2].any()
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    for i, n in enumerate(lengths):
        if n < 20:
            continue
        ref = model(**extractor(audio[i, :n].numpy(), sampling_rate=16000, return_tensors="pt")).last_hidden_state
        torch.testing.assert_close(out.tokens[i, : ref.shape[1]], ref[0], atol=1e-5, rtol=0)
        assert_same_clip(out, i, enc(audio[i : i + 1, :n]))


def test_group_norm_is_why_clips_run_alone(waveform_models):
    """A group-norm model's zero-padded batch (what Hugging Face advises for it) is not its unpadded output:
    the GroupNorm statistics include the padding. A layer-norm model with the attention mask is."""
    from transformers import AutoModel

    audio, mask = right_padded([1600, 1000], 1600)
    padded = torch.where(mask, audio, 0.0)
    for norm, differs in (("group", True), ("layer", False)):
        model = AutoModel.from_pretrained(waveform_models / f"wav2vec2_{norm}").eval()
        batch = model(padded, attention_mask=mask.long() if norm == "layer" else None).last_hidden_state[1, :99]
        alone = model(audio[1:, :1000]).last_hidden_state[0]
        assert ((batch - alone).abs().max() > 1e-2) == differs


def test_hf_ast_features_tokens_and_padding(ast_model):
    from transformers import AutoFeatureExtractor, AutoModel

    enc = HFAudioEncoder(str(ast_model), pooling="cls").eval()
    lengths = [4000, 2000, 300]  # 300 samples: shorter than one 25 ms window, all padding
    audio, mask = right_padded(lengths, 5000)
    feats = enc.ast_features(audio, mask)
    extractor = AutoFeatureExtractor.from_pretrained(ast_model)
    ref = extractor([audio[0, :4000].numpy(), audio[1, :2000].numpy()], sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(feats[:2], ref["input_values"], atol=1e-5, rtol=0)
    torch.testing.assert_close(feats[2], torch.full((32, 16), 4.2677393 / (2 * 4.5689974)))
    out = enc(audio, mask)
    # [CLS], [DIST], then (16 - 16) // 10 + 1 = 1 frequency x (32 - 16) // 10 + 1 = 2 time patches
    assert out.tokens.shape == (3, 4, 32) and out.mask.all()
    model = AutoModel.from_pretrained(ast_model).eval()
    torch.testing.assert_close(out.pooled[:2], model(ref["input_values"]).pooler_output, atol=1e-5, rtol=0)
    for i, n in enumerate(lengths):
        alone = enc(audio[i : i + 1, :n])
        torch.testing.assert_close(out.tokens[i], alone.tokens[0], atol=1e-5, rtol=0)
    mean = HFAudioEncoder(str(ast_model), pooling="mean").eval()(audio, mask)
    torch.testing.assert_close(mean.pooled, out.tokens.mean(1), atol=1e-6, rtol=0)


def test_hf_ast_cuts_long_clips_with_one_warning(ast_model):
    enc = HFAudioEncoder(str(ast_model)).eval()
    long_clip = torch.randn(1, 8000)  # 48 fbank frames > max_length 32
    with pytest.warns(UserWarning, match=r"takes 32 frames \(0.32 s\); a clip of 0.50 s was cut to that"):
        cut = enc.ast_features(long_clip, torch.ones(1, 8000, dtype=torch.bool))
    torch.testing.assert_close(cut, enc.ast_features(long_clip[:, :5360], torch.ones(1, 5360, dtype=torch.bool)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.ast_features(long_clip, torch.ones(1, 8000, dtype=torch.bool))  # once per encoder


def test_hf_sample_rate_and_normalisation_from_the_extractor(tmp_path):
    save_waveform_model(tmp_path / "at8k", "wav2vec2", "layer", extractor={"sampling_rate": 8000, "do_normalize": False})
    enc = HFAudioEncoder(str(tmp_path / "at8k"))
    assert (enc.sample_rate, enc.do_normalize) == (8000, False)
    assert enc.transform(torch.zeros(16000), 16000).shape == (8000,)
    with pytest.raises(MMFuseError, match=r"encoder.audio.sample_rate=16000: .*at8k takes 8000 Hz audio .* "
                                          r"Fix: set encoder.audio.sample_rate=null or 8000"):
        HFAudioEncoder(str(tmp_path / "at8k"), sample_rate=16000)
    save_waveform_model(tmp_path / "bare", "wav2vec2", "layer")  # no preprocessor_config.json
    bare = HFAudioEncoder(str(tmp_path / "bare"), sample_rate=16000)
    assert (bare.sample_rate, bare.do_normalize) == (16000, True)


def test_hf_weights_freezing_and_layerdrop(waveform_models):
    from transformers import AutoModel

    folder = waveform_models / "wav2vec2_group"
    saved = AutoModel.from_pretrained(folder).state_dict()
    loaded = HFAudioEncoder(str(folder), pretrained=True).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    torch.manual_seed(1)
    random = HFAudioEncoder(str(folder), pretrained=False).model.state_dict()
    assert random.keys() == saved.keys()
    assert not torch.equal(random["encoder.layers.0.attention.q_proj.weight"], saved["encoder.layers.0.attention.q_proj.weight"])

    enc = HFAudioEncoder(str(folder), freeze=True, trainable_last=1)
    assert enc.blocks() == list(enc.model.encoder.layers)  # the transformer layers, not the 2 conv layers
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {f"model.encoder.layers.1.{n}" for n, _ in enc.model.encoder.layers[1].named_parameters()}
    enc.train()
    assert not enc.model.training and enc.model.encoder.layers[1].training

    assert AutoModel.from_pretrained(folder).config.layerdrop == 0.1
    assert enc.model.config.layerdrop == 0.0
    assert HFAudioEncoder(str(folder), layerdrop=None).model.config.layerdrop == 0.1


def test_hf_batch_shorter_than_one_frame(waveform_models):
    enc = HFAudioEncoder(str(waveform_models / "hubert_group")).eval()
    out = enc(torch.randn(2, 5))
    assert out.tokens.shape == (2, 1, 32) and not out.mask.any() and not out.pooled.any()


def test_hf_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MMFuseError) as err:
        HFAudioEncoder("nobody-h3/no-such-audio-model-7781")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("encoder.audio: cannot load 'nobody-h3/no-such-audio-model-7781' (AutoModel): "
                                     "it is not a local folder, not in the Hugging Face cache")
    assert "Fix: set encoder.audio.name_or_path=" in str(err.value)

    from transformers import AutoConfig, AutoModel

    AutoModel.from_config(AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=37)).save_pretrained(tmp_path / "bert")
    with pytest.raises(MMFuseError, match=r"is a 'bert' model; supported: waveform models .* and AST"):
        HFAudioEncoder(str(tmp_path / "bert"))
    save_waveform_model(tmp_path / "w2v", "wav2vec2", "layer")
    with pytest.raises(MMFuseError, match="encoder.audio.pooling=cls: wav2vec2 has no CLS token; use pooling=mean"):
        HFAudioEncoder(str(tmp_path / "w2v"), pooling="cls")


# ---------------------------------------------------------------- configs


def audio_override(name: str) -> str:
    """``+encoder.audio=<name>`` until conf/train.yaml lists the group in its defaults, then without ``+``."""
    listed = "encoder.audio:" in (CONF_DIR / "train.yaml").read_text()
    return f"{'' if listed else '+'}encoder.audio={name}"


CONFIGS = {
    "none": None,
    "logmel_cnn": "mmfuse.encoders.audio_logmel.LogMelEncoder",
    "logmel_transformer": "mmfuse.encoders.audio_logmel.LogMelEncoder",
    "wav2vec2_base": "facebook/wav2vec2-base",
    "hubert_base": "facebook/hubert-base-ls960",
    "ast": "MIT/ast-finetuned-audioset-10-10-0.4593",
}


def test_configs_compose(make_cfg):
    assert sorted(p.stem for p in (CONF_DIR / "encoder.audio").glob("*.yaml")) == sorted(CONFIGS)
    for name, what in CONFIGS.items():
        audio = make_cfg(audio_override(name)).encoder.audio
        if name == "none":
            assert audio._target_ is None
        elif name.startswith("logmel"):
            enc = instantiate(audio)
            assert isinstance(enc, LogMelEncoder) and enc.backbone == name.split("_")[1] and enc.out_dim == 64
            assert audio._target_ == what
        else:
            assert audio._target_ == "mmfuse.encoders.hf_audio.HFAudioEncoder"
            assert (audio.name_or_path, audio.pretrained) == (what, True)
