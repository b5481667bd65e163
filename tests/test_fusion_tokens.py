"""The token hand-over of token-level fusions (``fused_tokens``, ``token_dim``; ``mmfuse.fusion.qformer``'s
docstring) and the Q-Former fusion.

For every fusion with ``fused_tokens``: the shape, the mask (exactly the inputs' masks in the documented
order), ``forward`` equal (``torch.equal``) to the documented pooling of the same sequence, and padding
with garbage values appended to any input leaves the real positions (and ``forward``) unchanged. Then
the Q-Former: padding of the image is never read, real tokens are, gradients reach the queries, the
parameter count is the closed form, and ``text_in_self_attention=false`` does not read the text.
"""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR
from mmfuse.builder import build_fusion
from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import masked_mean
from mmfuse.fusion.qformer import QFormerFusion
from mmfuse.types import EncoderOutput

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WIDTHS = {"image": 24, "video": 20, "audio": 12, "text": 16}
TOKENS = {"image": 6, "video": 4, "audio": 5, "text": 7}
B = 3
PAIR = ("image", "text")
TRIPLE = ("video", "audio", "text")


def inputs(mods: tuple[str, ...], seed: int = 1) -> dict[str, EncoderOutput]:
    """Random outputs; text and audio rows have T, T - 2, T - 4 real tokens, the image its last token
    padded in row 1, the video none padded."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in mods:
        d, t = WIDTHS[m], TOKENS[m]
        mask = torch.ones(B, t, dtype=torch.bool)
        if m in ("text", "audio"):
            mask = torch.arange(t).unsqueeze(0) < torch.tensor([[t], [t - 2], [t - 4]])
        elif m == "image":
            mask[1, -1] = False
        out[m] = EncoderOutput(torch.randn(B, d, generator=g), torch.randn(B, t, d, generator=g), mask)
    return out


def build(name: str, mods: tuple[str, ...], **override):
    cfg = OmegaConf.create({"fusion": {**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "fusion" / f"{name}.yaml")),
                                       **override}})
    torch.manual_seed(0)
    return build_fusion(cfg, {m: WIDTHS[m] for m in mods}).eval()


def pad(x: EncoderOutput, extra: int, seed: int = 7) -> EncoderOutput:
    g = torch.Generator().manual_seed(seed)
    junk = 100 * torch.randn(x.tokens.shape[0], extra, x.tokens.shape[2], generator=g)
    return EncoderOutput(x.pooled, torch.cat([x.tokens, junk], 1),
                         torch.cat([x.mask, torch.zeros(x.mask.shape[0], extra, dtype=torch.bool)], 1))


def ones(n: int) -> torch.Tensor:
    return torch.ones(B, n, dtype=torch.bool)


def split_means(tokens, mask, sizes):
    return [masked_mean(t, m) for t, m in zip(tokens.split(sizes, 1), mask.split(sizes, 1))]


# name, modalities, options, the expected mask from the inputs, the expected token_dim, forward from (tokens, mask)
NT, NI = TOKENS["text"], TOKENS["image"]
CASES = {
    "cross_text_to_image": ("cross_attention", PAIR, {}, lambda x: x["text"].mask, 64,
                            lambda t, m: masked_mean(t, m)),
    "cross_both": ("cross_attention", PAIR, {"direction": "both"},
                   lambda x: torch.cat([x["text"].mask, x["image"].mask], 1), 64,
                   lambda t, m: torch.cat(split_means(t, m, [NT, NI]), -1)),
    "cross_image_to_text_global": ("cross_attention", PAIR, {"direction": "image_to_text", "global_token": True},
                                   lambda x: torch.cat([ones(1), x["image"].mask], 1), 64,
                                   lambda t, m: masked_mean(t, m)),
    "cross_bilinear_both": ("cross_attention", PAIR, {"direction": "both", "readout": "bilinear"},
                            lambda x: torch.cat([x["text"].mask, x["image"].mask], 1), 64,
                            lambda t, m: torch.cat(split_means(t, m, [NT, NI]), -1)),
    "co_attention": ("co_attention", PAIR, {}, lambda x: torch.cat([x["image"].mask, x["text"].mask], 1), 64,
                     lambda t, m: split_means(t, m, [NI, NT])[0] * split_means(t, m, [NI, NT])[1]),
    "mult_2": ("mult", PAIR, {}, lambda x: torch.cat([x["text"].mask, x["image"].mask], 1), 64,
               lambda t, m: torch.cat(split_means(t, m, [NT, NI]), -1)),
    "mult_3": ("mult", TRIPLE, {}, lambda x: torch.cat([x["text"].mask, x["video"].mask, x["audio"].mask], 1), 128,
               lambda t, m: torch.cat(split_means(t, m, [NT, TOKENS["video"], TOKENS["audio"]]), -1)),
    "single_stream_cls": ("single_stream", PAIR, {"pooling": "cls"},
                          lambda x: torch.cat([ones(1), x["text"].mask, x["image"].mask], 1), 64, lambda t, m: t[:, 0]),
    "single_stream_text": ("single_stream", PAIR, {}, lambda x: torch.cat([ones(1), x["text"].mask, x["image"].mask], 1),
                           64, lambda t, m: split_means(t[:, 1:], m[:, 1:], [NT, NI])[0]),  # the config's default
    "single_stream_mean_3": ("single_stream", TRIPLE, {"pooling": "mean"},
                             lambda x: torch.cat([ones(1), x["text"].mask, x["video"].mask, x["audio"].mask], 1),
                             64, lambda t, m: masked_mean(t, m)),
    "qformer_2": ("qformer", PAIR, {}, lambda x: ones(8), 64, lambda t, m: t.mean(1)),
    "qformer_3": ("qformer", TRIPLE, {"num_queries": 5}, lambda x: ones(5), 64, lambda t, m: t.mean(1)),
    "qformer_image_only": ("qformer", ("image",), {}, lambda x: ones(8), 64, lambda t, m: t.mean(1)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_tokens_shape_mask_and_forward_is_their_pooling(case):
    name, mods, override, expected_mask, token_dim, pool = CASES[case]
    fusion = build(name, mods, **override)
    x = inputs(mods)
    with torch.no_grad():
        tokens, mask = fusion.fused_tokens(x)
        out = fusion(x)
    want = expected_mask(x)
    assert fusion.token_dim == token_dim
    assert tokens.shape == (B, want.shape[1], token_dim) and tokens.dtype == torch.float32
    assert mask.dtype == torch.bool and torch.equal(mask, want)
    assert torch.isfinite(tokens).all()
    assert torch.equal(out, pool(tokens, mask)), case


@pytest.mark.parametrize("case", sorted(CASES))
def test_appended_padding_leaves_the_real_positions_unchanged(case):
    name, mods, override, *_ = CASES[case]
    fusion = build(name, mods, **override)
    x = inputs(mods)
    with torch.no_grad():
        tokens, mask = fusion.fused_tokens(x)
        out = fusion(x)
        for i, m in enumerate(mods):
            padded = {**x, m: pad(x[m], 2 + i)}
            t2, m2 = fusion.fused_tokens(padded)
            assert m2.sum() == mask.sum() and m2.shape[1] >= mask.shape[1]
            # the real positions, row by row in order, are the same vectors
            assert torch.allclose(t2[m2], tokens[mask], atol=1e-5, rtol=1e-4), (case, m)
            assert torch.allclose(fusion(padded), out, atol=1e-5, rtol=1e-4), (case, m)


def test_fused_tokens_carry_gradients_to_every_parameter():
    """A decoder trains the fusion through ``fused_tokens`` alone (here single_stream with cls pooling:
    every token, not only [CLS], reaches the loss)."""
    fusion = build("single_stream", PAIR).train()
    tokens, mask = fusion.fused_tokens(inputs(PAIR))
    (tokens * mask.unsqueeze(-1)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.parameters())


# -- the Q-Former ----------------------------------------------------------------------------------------

def test_qformer_reads_real_image_tokens_and_never_padded_ones():
    fusion = build("qformer", PAIR)
    x = inputs(PAIR)
    with torch.no_grad():
        ref = fusion.fused_tokens(x)[0]
        tokens = x["image"].tokens.clone()
        tokens[1, -1] += 1000.0  # row 1's last image token is padding
        same = fusion.fused_tokens({**x, "image": x["image"]._replace(tokens=tokens)})[0]
        tokens = x["image"].tokens.clone()
        tokens[1, 0] += 1.0  # a real one
        changed = fusion.fused_tokens({**x, "image": x["image"]._replace(tokens=tokens)})[0]
    assert torch.equal(same, ref)
    assert not torch.allclose(changed[1], ref[1], atol=1e-4)
    assert torch.equal(changed[[0, 2]], ref[[0, 2]])  # the other samples do not see row 1


def test_qformer_text_padding_is_never_read():
    fusion = build("qformer", PAIR)
    x = inputs(PAIR)
    with torch.no_grad():
        ref = fusion(x)
        tokens = x["text"].tokens.clone()
        tokens[2, -1] -= 500.0  # row 2 has 3 real text tokens of 7
        assert torch.equal(fusion({**x, "text": x["text"]._replace(tokens=tokens)}), ref)
        tokens[2, 0] -= 1.0
        assert not torch.allclose(fusion({**x, "text": x["text"]._replace(tokens=tokens)})[2], ref[2], atol=1e-4)


def test_gradients_reach_the_queries():
    fusion = build("qformer", PAIR).train()
    fusion(inputs(PAIR)).pow(2).sum().backward()
    g = fusion.queries.grad
    assert g is not None and g.shape == (8, 64)
    assert (g.abs().sum(1) > 0).all()  # every query, not only some
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.parameters())


@pytest.mark.parametrize(("mods", "options"), [
    (PAIR, {}),
    (PAIR, {"text_in_self_attention": False}),
    (PAIR, {"layers": 1}),
    (PAIR, {"layers": 3, "num_queries": 3, "ff_mult": 3, "dim": 32}),
    (TRIPLE, {}),
    (("image", "video", "audio"), {"num_queries": 2}),
    (("image",), {}),
])
def test_qformer_parameter_count_is_the_closed_form(mods, options):
    fusion = build("qformer", mods, **options)
    count = sum(p.numel() for p in fusion.parameters())
    assert count == QFormerFusion.expected_params({m: WIDTHS[m] for m in mods}, **options)


def test_qformer_parameter_count_by_hand():
    """image 24-d + text 16-d, d = 8, f = 16, K = 2, L = 2: 200 + 136 (proj) + 16 (queries)
    + 2 · (16 + 288 + 48 + 288 + 280) (layers) + 1 · (16 + 280) (text FFN, first layer only) + 16 (norm)."""
    assert QFormerFusion.expected_params({"image": 24, "text": 16}, dim=8, heads=2, layers=2,
                                         num_queries=2, ff_mult=2) == 200 + 136 + 16 + 2 * 920 + 296 + 16
    fusion = QFormerFusion({"image": 24, "text": 16}, dim=8, heads=2, layers=2, num_queries=2, ff_mult=2)
    assert sum(p.numel() for p in fusion.parameters()) == 2504


def test_without_text_in_self_attention_text_is_not_read():
    fusion = build("qformer", PAIR, text_in_self_attention=False)
    with_text = build("qformer", PAIR)
    assert fusion.uses == ("image",) and with_text.uses == PAIR
    assert not hasattr(fusion, "proj_text")
    x = inputs(PAIR)
    other = inputs(PAIR, seed=5)["text"]
    with torch.no_grad():
        assert torch.equal(fusion({**x, "text": other}), fusion(x))
        assert torch.equal(fusion(x), build("qformer", ("image",))(x))  # the same as an image-only run
        assert not torch.allclose(with_text({**x, "text": other}), with_text(x), atol=1e-4)


def test_qformer_needs_a_non_text_modality_and_positive_sizes():
    with pytest.raises(MMFuseError, match="fusion=qformer: .* text only"):
        QFormerFusion({"text": 16})
    with pytest.raises(MMFuseError, match="fusion.num_queries=0"):
        QFormerFusion({"image": 24, "text": 16}, num_queries=0)
    with pytest.raises(MMFuseError, match="divisible by fusion.heads"):
        QFormerFusion({"image": 24}, dim=30, heads=4)
