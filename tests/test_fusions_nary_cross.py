"""The token-level fusions over N modalities: ``mult`` (one crossmodal transformer per ordered pair),
``single_stream`` (one joint sequence), and the pairwise ``cross_attention`` / ``co_attention`` on pairs
other than image + text.

Recomputations write the attention blocks out from their weights (no mmfuse module called; the blocks of
test_audit_fusions), at three modalities whose token counts, widths and padding all differ.
"""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf
from test_audit_fusions import cross, layer_norm, linear, masked_mean, positions, self_layer

from conftest import CONF_DIR
from mmfuse.builder import build_fusion
from mmfuse.errors import MMFuseError
from mmfuse.fusion import single_stream
from mmfuse.fusion.cross import CoAttentionFusion, CrossAttentionFusion, MulTFusion
from mmfuse.fusion.pairs import ContextPairs
from mmfuse.fusion.single_stream import SingleStreamFusion
from mmfuse.types import EncoderOutput

ATOL = 1e-5
B = 3
# width, tokens and real tokens per row: every modality differs, and every one has a padded row
SHAPES = {"image": (7, 4, (4, 3, 4)), "video": (6, 5, (5, 4, 2)), "audio": (5, 9, (9, 6, 3)),
          "text": (4, 7, (7, 5, 2))}
TRIPLE = ("video", "audio", "text")


def dims_of(names) -> dict[str, int]:
    return {m: SHAPES[m][0] for m in names}


def inputs(names, seed: int = 1) -> dict[str, EncoderOutput]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in names:
        width, tokens, lengths = SHAPES[m]
        mask = torch.arange(tokens).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
        out[m] = EncoderOutput(torch.randn(B, width, generator=g), torch.randn(B, tokens, width, generator=g), mask)
    return out


def pad(x: EncoderOutput, extra: int = 3, seed: int = 7) -> EncoderOutput:
    """``extra`` more tokens of large random values, all padding (mask False)."""
    g = torch.Generator().manual_seed(seed)
    junk = 100 * torch.randn(x.tokens.shape[0], extra, x.tokens.shape[2], generator=g)
    return EncoderOutput(x.pooled, torch.cat([x.tokens, junk], 1),
                         torch.cat([x.mask, torch.zeros(x.mask.shape[0], extra, dtype=torch.bool)], 1))


def made(cls, names, **options):
    torch.manual_seed(0)
    return cls(dims_of(names), **options).eval()


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- mult ------------------------------------------------------------------------------------------------

def test_mult_at_three_modalities_has_six_crossmodal_transformers_and_its_parameter_count():
    f = made(MulTFusion, TRIPLE, dim=8, heads=2, layers=1, self_layers=1, ff_mult=2)
    stacks = [name for name, _ in f.named_children() if name.startswith("to_")]
    assert stacks == ["to_text_from_video", "to_text_from_audio", "to_video_from_audio", "to_video_from_text",
                      "to_audio_from_video", "to_audio_from_text"]
    assert f.targets == ("text", "video", "audio")
    assert [len(f.crossmodal(t, s)) for t in f.targets for s in f.sources[t]] == [1] * 6
    # proj 7·8 + 6·8 + 5·8 = 144; 6 crossmodal blocks of P_cross(8) = 288 + 48 + 280 = 616;
    # per target a self block at width d' = 16 (f = 32): 1088 + 64 + 544 + 528 = 2224, and LN(16) = 32
    assert n_params(f) == 144 + 6 * 616 + 3 * (2224 + 32) == 10608
    assert MulTFusion.expected_params(dims_of(TRIPLE), dim=8, heads=2, layers=1, self_layers=1) == 10608
    assert f.out_dim == 3 * 16
    assert f(inputs(TRIPLE)).shape == (B, 48)


def test_mult_at_four_modalities_has_twelve_crossmodal_transformers():
    names = ("image", "video", "audio", "text")
    f = made(MulTFusion, names, dim=8, heads=2, layers=2, self_layers=0)
    assert sum(name.startswith("to_") for name, _ in f.named_children()) == 12
    assert n_params(f) == MulTFusion.expected_params(dims_of(names), dim=8, heads=2, layers=2, self_layers=0)
    assert f(inputs(names)).shape == (B, 4 * 3 * 8)


@pytest.mark.parametrize("layers", [1, 2])
def test_mult_at_three_modalities_is_its_formula(layers):
    """``Z_{s→t}^l = Cross(Z_{s→t}^{l−1}, X_s⁰)``, ``Z_t = [Z_{s→t}]_s`` (sources in order), ``Self`` at width
    ``2d``, ``z = [mean LN(Z_t)]`` for ``t`` = text, video, audio. Two layers tell keys from ``X_s⁰`` apart
    from keys from the source's own crossmodal stream."""
    f = made(MulTFusion, TRIPLE, dim=8, heads=2, layers=layers, self_layers=1)
    x = inputs(TRIPLE)
    low = {m: linear(f.part("proj", m), x[m].tokens) + positions(x[m].tokens.shape[1], 8) for m in TRIPLE}
    sources = {"text": ("video", "audio"), "video": ("audio", "text"), "audio": ("video", "text")}
    parts = []
    for t in ("text", "video", "audio"):
        streams = []
        for s in sources[t]:
            z = low[t]
            for i in range(layers):
                z = cross(getattr(f, f"to_{t}_from_{s}")[i], z, low[s], x[s].mask)
            streams.append(z)
        z = self_layer(getattr(f, f"self_{t}")[0], torch.cat(streams, -1), x[t].mask)
        parts.append(masked_mean(layer_norm(getattr(f, f"norm_{t}"), z), x[t].mask))
    with torch.no_grad():
        assert torch.allclose(f(x), torch.cat(parts, -1), atol=ATOL)


@pytest.mark.parametrize("cls", [MulTFusion, SingleStreamFusion])
@pytest.mark.parametrize("padded", TRIPLE)
def test_padding_any_modality_never_changes_the_output(cls, padded):
    f = made(cls, TRIPLE, dim=8, heads=2, layers=2)
    x = inputs(TRIPLE)
    with torch.no_grad():
        want = f(x)
        got = f({**x, padded: pad(x[padded])})
    assert torch.allclose(got, want, atol=ATOL)


# -- single_stream ---------------------------------------------------------------------------------------

def test_single_stream_at_three_modalities_is_one_sequence_and_its_parameter_count():
    f = made(SingleStreamFusion, TRIPLE, dim=8, heads=2, layers=1, ff_mult=2)
    assert f.order == ("text", "video", "audio")
    assert f.modality.shape == (3, 8)
    assert [name for name, _ in f.named_parameters()][:2] == ["cls", "modality"]
    # proj 144, c and e_1..e_3: 4·8, one self block P_self(8) = 288 + 32 + 144 + 136 = 600, LN(8) = 16
    assert n_params(f) == 144 + 32 + 600 + 16 == 792
    assert SingleStreamFusion.expected_params(dims_of(TRIPLE), dim=8, heads=2, layers=1) == 792
    assert f(inputs(TRIPLE)).shape == (B, 8)


@pytest.mark.parametrize("pooling", ["cls", "mean", "text"])
def test_single_stream_at_three_modalities_is_its_formula(pooling):
    """``H⁰ = [c; Y W + e_1 + PE; V W + e_2 + PE; A W + e_3 + PE]``, ``L`` self layers over all real tokens,
    ``z = LN(H^L)_0`` (cls), the mean of ``LN(H^L)`` over the real tokens (mean) or over the real text
    tokens, rows 1..7 (text)."""
    f = made(SingleStreamFusion, TRIPLE, dim=8, heads=2, layers=2, pooling=pooling)
    x = inputs(TRIPLE)
    h, masks = [f.cls.expand(B, 1, 8)], [torch.ones(B, 1, dtype=torch.bool)]
    for k, m in enumerate(("text", "video", "audio")):
        h.append(linear(f.part("proj", m), x[m].tokens) + f.modality[k] + positions(x[m].tokens.shape[1], 8))
        masks.append(x[m].mask)
    h, mask = torch.cat(h, 1), torch.cat(masks, 1)
    assert h.shape == (B, 1 + 7 + 5 + 9, 8)
    for block in f.blocks:
        h = self_layer(block, h, mask)
    h = layer_norm(f.norm, h)
    want = {"cls": h[:, 0], "mean": masked_mean(h, mask), "text": masked_mean(h[:, 1:8], x["text"].mask)}[pooling]
    with torch.no_grad():
        assert torch.allclose(f(x), want, atol=ATOL)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize(("names", "stream"), [(("image", "text"), "image"), (TRIPLE, "video")])
def test_single_stream_reorders_tokens_only_through_their_positions(monkeypatch, names, stream, pooling):
    """The tokens of ``stream`` (and their mask) permuted: with the position rows permuted alike the output is
    the same (the layers treat the joint sequence as a set); with the positions left in place it differs."""
    f = made(SingleStreamFusion, names, dim=8, heads=2, layers=2, pooling=pooling)
    x = inputs(names)
    n = x[stream].tokens.shape[1]
    perm = torch.tensor([2, 0, 3, 1] if n == 4 else [3, 0, 4, 2, 1])
    moved = {**x, stream: EncoderOutput(x[stream].pooled, x[stream].tokens[:, perm], x[stream].mask[:, perm])}
    with torch.no_grad():
        want = f(x)
        unmoved_positions = f(moved)
        original = single_stream.sinusoidal_positions

        def permuted(length, d, device, dtype):  # the streams' lengths all differ: n is this stream's
            pe = original(length, d, device, dtype)
            return pe[perm] if length == n else pe

        monkeypatch.setattr(single_stream, "sinusoidal_positions", permuted)
        moved_positions = f(moved)
    assert torch.allclose(moved_positions, want, atol=ATOL)
    assert (unmoved_positions - want).abs().max() > 1e-3


# -- the pairwise ones on other pairs -----------------------------------------------------------------

@pytest.mark.parametrize(("cls", "options"), [
    (CrossAttentionFusion, {"direction": "both", "global_token": True, "readout": "bilinear"}),
    (CrossAttentionFusion, {"direction": "text_to_image"}),
    (CoAttentionFusion, {}),
])
def test_a_pairwise_token_fusion_gives_x_the_images_role_and_y_the_texts(cls, options):
    """On video + audio (x = video, y = audio) the fusion is the image + text one with the same weights:
    the state dict keys renamed image → video and text → audio, the inputs likewise."""
    pair = made(cls, ("video", "audio"), dim=8, heads=2, layers=2, **options)
    assert (pair.x, pair.y) == ("video", "audio")
    keys = list(pair.state_dict())
    assert "proj_video.weight" in keys and "proj_audio.weight" in keys
    assert not any("image" in k.split(".")[0] or "text" in k.split(".")[0] for k in keys)
    image_text = cls({"image": SHAPES["video"][0], "text": SHAPES["audio"][0]}, dim=8, heads=2, layers=2, **options)
    renamed = {k.replace("_video", "_image").replace("_audio", "_text"): v for k, v in pair.state_dict().items()}
    image_text.load_state_dict(renamed)
    x = inputs(("video", "audio"))
    with torch.no_grad():
        assert torch.equal(pair(x), image_text.eval()({"image": x["video"], "text": x["audio"]}))


def test_a_pairwise_token_fusion_over_three_modalities_is_built_by_the_context_rule():
    cfg = OmegaConf.create({"fusion": {**OmegaConf.load(CONF_DIR / "fusion" / "cross_attention.yaml"),
                                       "dim": 8, "heads": 2}})
    torch.manual_seed(0)
    f = build_fusion(cfg, dims_of(TRIPLE))
    assert isinstance(f, ContextPairs) and list(f.pairs) == ["video", "audio"]
    assert f.out_dim == 16 and f.needs_tokens
    assert n_params(f) == ContextPairs.expected_params_of(CrossAttentionFusion, dims_of(TRIPLE), dim=8, heads=2)
    assert f.eval()(inputs(TRIPLE)).shape == (B, 16)


# -- errors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cls", "names", "message"), [
    (MulTFusion, ("text",), "fusion MulTFusion fuses 2 to any number modalities; this run has 1 (text)"),
    (SingleStreamFusion, ("video",), "fusion SingleStreamFusion fuses 2 to any number modalities; this run has 1 (video)"),
    (CrossAttentionFusion, TRIPLE, "fusion CrossAttentionFusion fuses 2 to 2 modalities; this run has 3 (video, audio, text)"),
    (CoAttentionFusion, ("image", "video", "audio", "text"),
     "fusion CoAttentionFusion fuses 2 to 2 modalities; this run has 4 (image, video, audio, text)"),
])
def test_too_few_or_too_many_modalities_is_one_line(cls, names, message):
    with pytest.raises(MMFuseError, match=re.escape(message)) as err:
        cls(dims_of(names))
    assert "\n" not in str(err.value) and "encoder.<modality>" in str(err.value)


@pytest.mark.parametrize(("cls", "options", "message"), [
    (MulTFusion, {"self_layers": -1}, "fusion.self_layers=-1 (mult): must be >= 0, e.g. fusion.self_layers=1"),
    (MulTFusion, {"dim": 10, "heads": 4}, "fusion.dim=10 must be divisible by fusion.heads=4"),
    (MulTFusion, {"layers": 0}, "fusion.layers=0 for MulTFusion: must be a positive integer, e.g. fusion.layers=2"),
    (SingleStreamFusion, {"dim": 2.5}, "fusion.dim=2.5 for single_stream: must be a positive integer"),
    (SingleStreamFusion, {"pooling": "max"}, "fusion.pooling='max' is not an option of single_stream. Fix: cls, mean or text"),
])
def test_bad_options_at_three_modalities_are_one_line(cls, options, message):
    with pytest.raises(MMFuseError, match=re.escape(message)) as err:
        cls(dims_of(TRIPLE), **options)
    assert "\n" not in str(err.value)


def test_single_stream_text_pooling_needs_a_text_modality():
    with pytest.raises(MMFuseError, match=r"fusion.pooling=text reads out the text tokens, but the modalities are "
                                          r"\['video', 'audio'\]. Fix: fusion.pooling=cls or mean"):
        SingleStreamFusion(dims_of(("video", "audio")), dim=8, heads=2, pooling="text")
