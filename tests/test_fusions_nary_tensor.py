"""TFN and LMF over 3 and 4 modalities, recomputed by hand; the pairwise bilinear / MI / NL-gate fusions
on pairs other than image + text; the errors for a fusion given a number of modalities it does not fuse.

TFN and LMF are N-ary by their papers' formulas: ``vec(⊗_m [h_m; 1])`` holds the product of all N
inputs, so at N = 3 the fused vector is not a sum of functions of two inputs each. The mixed third
difference ``Δ³ f = Σ_{s ∈ {0,1}³} (−1)^{3−|s|} f(x_1 + s_1 δ_1, x_2 + s_2 δ_2, x_3 + s_3 δ_3)`` is zero
for any sum of pairwise functions and, for a multilinear map, is exactly its three-way term at
``(δ_1, δ_2, δ_3)``: the tests compute that term by hand and check it against ``Δ³ f``.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR
from mmfuse.builder import build_fusion
from mmfuse.errors import MMFuseError
from mmfuse.fusion import bilinear, nl_gate, tensor
from mmfuse.fusion.pooled import AddFusion
from mmfuse.types import EncoderOutput

DIMS3 = {"image": 5, "audio": 4, "text": 3}
DIMS4 = {"image": 5, "video": 6, "audio": 4, "text": 3}
B = 4
ATOL = 1e-5


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def one(v: torch.Tensor) -> torch.Tensor:
    return torch.cat([v, torch.ones(v.shape[0], 1, dtype=v.dtype)], 1)


def encoded(dims: dict[str, int], batch: int = B, seed: int = 1, tokens: dict[str, int] | None = None,
            lengths: dict[str, list[int]] | None = None) -> dict[str, EncoderOutput]:
    """Random encoder outputs; ``tokens[m]`` tokens of modality ``m`` (3 by default), the first
    ``lengths[m][b]`` of row ``b`` real (all by default)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, d in dims.items():
        t = (tokens or {}).get(m, 3)
        n = torch.tensor((lengths or {}).get(m, [t] * batch))
        out[m] = EncoderOutput(torch.randn(batch, d, generator=g), torch.randn(batch, t, d, generator=g),
                               torch.arange(t).unsqueeze(0) < n.unsqueeze(1))
    return out


def shifted(inputs: dict[str, EncoderOutput], deltas: dict[str, torch.Tensor], which: tuple[str, ...]):
    return {m: e._replace(pooled=e.pooled + deltas[m]) if m in which else e for m, e in inputs.items()}


def mixed_difference(f, inputs: dict[str, EncoderOutput], deltas: dict[str, torch.Tensor]) -> torch.Tensor:
    """``Δ^N f``: the mixed N-th difference of ``f`` in the pooled vectors along ``deltas`` (one per input),
    in float64 (a copy of ``f``), so that the 2^N-term cancellation loses nothing."""
    f = copy.deepcopy(f).double()
    inputs = {m: e._replace(pooled=e.pooled.double()) for m, e in inputs.items()}
    deltas = {m: d.double() for m, d in deltas.items()}
    names = tuple(inputs)
    total = 0
    for s in itertools.product((0, 1), repeat=len(names)):
        which = tuple(m for m, bit in zip(names, s) if bit)
        total = total + (-1) ** (len(names) - len(which)) * f(shifted(inputs, deltas, which))
    return total


def deltas_for(dims: dict[str, int], seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: 3 * torch.randn(B, d, generator=g) for m, d in dims.items()}


def tfn(dims: dict[str, int], **options) -> tensor.TensorFusion:
    torch.manual_seed(0)
    return tensor.TensorFusion(dims, **{"dim": 3, "hidden": 2, **options}).eval()


def lmf(dims: dict[str, int], **options) -> tensor.LowRankFusion:
    torch.manual_seed(0)
    f = tensor.LowRankFusion(dims, **{"dim": 3, "rank": 2, **options}).eval()
    with torch.no_grad():  # rank weights and bias away from their 1/R and 0 starts, so a mix-up shows
        f.rank_weights.copy_(torch.tensor([0.7, -1.3]))
        f.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return f


# -- TFN -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_tfn_at_three_modalities_is_the_triple_outer_product(activation):
    """``z = σ(W vec([a; 1] ⊗ [b; 1] ⊗ [c; 1]) + w)``, ``t[9 i + 3 j + k] = a_i b_j c_k`` (image, audio, text)."""
    act = {"relu": torch.relu, "tanh": torch.tanh}[activation]
    f = tfn(DIMS3, activation=activation)
    x = encoded(DIMS3)
    a, b, c = (one(act(linear(f.part("proj", m), x[m].pooled))) for m in ("image", "audio", "text"))
    t = torch.stack([a[:, i] * b[:, j] * c[:, k] for i in range(3) for j in range(3) for k in range(3)], 1)
    assert f.out.weight.shape == (3, 27)
    assert list(f.state_dict()) == ["proj_image.weight", "proj_image.bias", "proj_audio.weight", "proj_audio.bias",
                                    "proj_text.weight", "proj_text.bias", "out.weight", "out.bias"]
    assert torch.allclose(f(x), act(linear(f.out, t)), atol=1e-6)


def test_tfn_three_way_term_is_the_third_mixed_difference_and_not_zero():
    """With ``σ = identity`` TFN is multilinear in the three projections: ``Δ³ z = W vec([Aδ_1; 0] ⊗
    [Bδ_2; 0] ⊗ [Cδ_3; 0])`` (no bias), which a sum of pairwise terms would make 0."""
    f = tfn(DIMS3, activation="identity")
    x, d = encoded(DIMS3), deltas_for(DIMS3)
    with torch.no_grad():
        got = mixed_difference(f, x, d)
        u, v, w = (torch.cat([d[m] @ f.part("proj", m).weight.T, torch.zeros(B, 1)], 1) for m in DIMS3)
        term = torch.einsum("bi,bj,bk->bijk", u, v, w).flatten(1) @ f.out.weight.T
    assert torch.allclose(got, term.double(), atol=ATOL)
    assert term.abs().min() > 1e-2


def test_the_third_difference_of_a_sum_of_single_modality_terms_is_zero():
    """The control: ``add`` (``Σ_m σ(A_m x_m)``) has no interaction, and ``Δ³`` finds none."""
    torch.manual_seed(0)
    f = AddFusion(DIMS3, dim=3, activation="tanh").eval()
    with torch.no_grad():
        got = mixed_difference(f, encoded(DIMS3), deltas_for(DIMS3))
    assert torch.allclose(got, torch.zeros_like(got), atol=ATOL)


def test_tfn_at_four_modalities_has_the_fourfold_product():
    f = tfn(DIMS4, hidden=1)
    x = encoded(DIMS4)
    a = [one(torch.relu(linear(f.part("proj", m), x[m].pooled))) for m in ("image", "video", "audio", "text")]
    t = torch.stack([a[0][:, i] * a[1][:, j] * a[2][:, k] * a[3][:, n]
                     for i, j, k, n in itertools.product(range(2), repeat=4)], 1)
    assert f.out.weight.shape == (3, 16)
    assert torch.allclose(f(x), torch.relu(linear(f.out, t)), atol=1e-6)


def test_tfn_parameter_count_is_exact_at_two_three_and_four_modalities():
    """``Σ_m (D_m + 1) h + ((h + 1)^N + 1) dim``; the docstring's sizes at the defaults (h = 32, dim = 256)."""
    for dims, want in (({"image": 5, "text": 3}, 6 * 2 + 4 * 2 + 10 * 3), (DIMS3, 15 * 2 + 28 * 3),
                       (DIMS4, 22 * 2 + 82 * 3)):
        f = tfn(dims, hidden=2)
        assert sum(p.numel() for p in f.parameters()) == want == tensor.TensorFusion.expected_params(dims, dim=3, hidden=2)
    ones = {m: 1 for m in DIMS4}
    out_layer = {n: tensor.TensorFusion.expected_params(dict(list(ones.items())[:n])) - n * 2 * 32 for n in (2, 3, 4)}
    assert out_layer == {2: 279_040, 3: 9_200_128, 4: 303_596_032}


# -- LMF -------------------------------------------------------------------------------------------------

def test_lmf_at_three_modalities_is_the_rank_r_sum_of_products():
    """``z = Σ_r λ_r (W_1^r [x_1; 1]) ⊙ (W_2^r [x_2; 1]) ⊙ (W_3^r [x_3; 1]) + c``, each rank written out."""
    f = lmf(DIMS3)
    x = encoded(DIMS3)
    expected = f.bias.clone()
    for r in range(2):
        prod = 1
        for m in ("image", "audio", "text"):
            prod = prod * (one(x[m].pooled) @ getattr(f, f"factor_{m}")[r])
        expected = expected + f.rank_weights[r] * prod
    assert [(k, tuple(v.shape)) for k, v in f.state_dict().items()] == [
        ("factor_image", (2, 6, 3)), ("factor_audio", (2, 5, 3)), ("factor_text", (2, 4, 3)),
        ("rank_weights", (2,)), ("bias", (3,))]
    assert torch.allclose(f(x), expected, atol=1e-6)


def test_lmf_three_way_term_is_the_third_mixed_difference_and_not_zero():
    """``Δ³ z = Σ_r λ_r Π_m (W_m^r [δ_m; 0])``: the low-rank form keeps TFN's three-way term."""
    f = lmf(DIMS3)
    x, d = encoded(DIMS3), deltas_for(DIMS3)
    with torch.no_grad():
        got = mixed_difference(f, x, d)
        term = sum(f.rank_weights[r] * torch.prod(torch.stack(
            [d[m] @ getattr(f, f"factor_{m}")[r, :-1] for m in DIMS3]), 0) for r in range(2))
    assert torch.allclose(got, term.double(), atol=ATOL)
    assert term.abs().min() > 1e-2


def test_lmf_at_four_modalities_trains_every_factor():
    """Four factors, each with a gradient (MultiBench's list of factors got none); the count is exact."""
    f = lmf(DIMS4).train()
    out = f(encoded(DIMS4))
    assert out.shape == (B, 3)
    out.square().sum().backward()
    assert [n for n, p in f.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    assert sum(p.numel() for p in f.parameters()) == 2 * 3 * (6 + 7 + 5 + 4) + 2 + 3 == \
        tensor.LowRankFusion.expected_params(DIMS4, dim=3, rank=2)


def test_tfn_and_lmf_read_only_the_pooled_vectors():
    """Other token counts and padding leave z as it is (both fuse ``pooled``)."""
    x = encoded(DIMS3)
    padded = encoded(DIMS3, tokens={"audio": 9, "text": 5}, lengths={"audio": [9, 2, 5, 1], "text": [5, 5, 1, 3]})
    padded = {m: e._replace(pooled=x[m].pooled) for m, e in padded.items()}
    for f in (tfn(DIMS3), lmf(DIMS3)):
        with torch.no_grad():
            assert torch.equal(f(padded), f(x))


# -- the pairwise fusions on pairs other than image + text ------------------------------------------------

def renamed(key: str, rename: dict[str, str]) -> str:
    """``proj_image.0.weight`` -> ``proj_video.0.weight`` for ``rename = {"image": "video"}``."""
    head, dot, rest = key.partition(".")
    part, _, modality = head.rpartition("_")
    return (f"{part}_{rename[modality]}" if modality in rename else head) + dot + rest


PAIRWISE = [
    (bilinear.MFBFusion, {"dim": 4, "factor": 2}),
    (bilinear.MFHFusion, {"dim": 4, "factor": 2, "order": 2}),
    (bilinear.MutanFusion, {"dim": 4, "mm_dim": 6, "rank": 2}),
    (bilinear.TuckerFusion, {"dim": 4, "mm_dim": 3}),
    (bilinear.BlockFusion, {"dim": 4, "mm_dim": 6, "chunks": 2, "rank": 2}),
    (bilinear.MCBFusion, {"dim": 4, "sketch_dim": 16}),
    (tensor.MultiplicativeInteraction, {"dim": 4, "form": "matrix"}),
    (tensor.MultiplicativeInteraction, {"dim": 4, "form": "vector"}),
    (nl_gate.NLGateFusion, {"dim": 4}),
    (nl_gate.NLGateFusion, {"dim": 4, "form": "multibench", "image_tokens": 3}),
]


@pytest.mark.parametrize(("cls", "options"), PAIRWISE, ids=[f"{c.__name__}-{o.get('form', '')}" for c, o in PAIRWISE])
def test_a_pairwise_fusion_of_video_and_audio_is_the_image_text_one_renamed(cls, options):
    """``x`` = video plays the image's role and ``y`` = audio the text's: the same weights under
    ``<part>_video`` / ``<part>_audio`` and the same output for the same tensors."""
    torch.manual_seed(0)
    ref = cls({"image": 5, "text": 4}, **options).eval()
    torch.manual_seed(0)
    f = cls({"audio": 4, "video": 5}, **options).eval()
    assert (f.x, f.y) == ("video", "audio")
    want = {renamed(k, {"image": "video", "text": "audio"}): v for k, v in ref.state_dict().items()}
    assert list(f.state_dict()) == list(want)
    assert all(torch.equal(v, want[k]) for k, v in f.state_dict().items())
    x = encoded({"image": 5, "text": 4}, lengths={"image": [3, 2, 3, 1], "text": [3, 1, 2, 3]})
    with torch.no_grad():
        assert torch.equal(f({"video": x["image"], "audio": x["text"]}), ref(x))


def test_nl_gate_video_audio_ignores_padding_of_either():
    torch.manual_seed(0)
    f = nl_gate.NLGateFusion({"video": 5, "audio": 4}, dim=4).eval()
    x = encoded({"video": 5, "audio": 4}, lengths={"video": [3, 2, 3, 1], "audio": [3, 1, 2, 3]})
    padded = {m: EncoderOutput(e.pooled, torch.cat([e.tokens, 100 * torch.ones(B, 2, e.tokens.shape[2])], 1),
                               torch.cat([e.mask, torch.zeros(B, 2, dtype=torch.bool)], 1)) for m, e in x.items()}
    with torch.no_grad():
        assert torch.allclose(f(padded), f(x), atol=1e-6)


def test_nl_gate_multibench_names_the_x_encoder_in_its_errors():
    with pytest.raises(MMFuseError) as err:
        nl_gate.NLGateFusion({"video": 5, "audio": 4}, dim=4, form="multibench")
    assert str(err.value) == ("fusion.image_tokens is unset (nl_gate form=multibench flattens the video tokens): "
                              "set it to the video encoder's token count, e.g. 64 for tiny_cnn at 32 px")
    f = nl_gate.NLGateFusion({"video": 5, "audio": 4}, dim=4, form="multibench", image_tokens=4)
    x = encoded({"video": 5, "audio": 4})
    with pytest.raises(MMFuseError) as err:
        f(x)
    assert str(err.value) == ("fusion.image_tokens=4 (nl_gate form=multibench) but the video encoder gives 3 tokens: "
                              "set fusion.image_tokens=3")


def test_a_pairwise_fusion_over_three_modalities_is_built_per_context_pair():
    """The builder's rule (``mmfuse.fusion.pairs``): ``[f(image, text); f(audio, text)]``, each its own copy."""
    cfg = OmegaConf.create({"fusion": {**OmegaConf.load(CONF_DIR / "fusion" / "mfb.yaml"), "dim": 4, "factor": 2}})
    torch.manual_seed(0)
    f = build_fusion(cfg, DIMS3).eval()
    assert f.out_dim == 8
    assert [k for k in f.state_dict() if k.endswith("weight")] == [
        "pairs.image.proj_image.weight", "pairs.image.proj_text.weight",
        "pairs.audio.proj_audio.weight", "pairs.audio.proj_text.weight"]
    x = encoded(DIMS3)
    with torch.no_grad():
        expected = torch.cat([f.pairs["image"]({"image": x["image"], "text": x["text"]}),
                              f.pairs["audio"]({"audio": x["audio"], "text": x["text"]})], -1)
        assert torch.equal(f(x), expected)


# -- errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [tensor.TensorFusion, tensor.LowRankFusion])
def test_an_n_ary_tensor_fusion_needs_two_modalities(cls):
    with pytest.raises(MMFuseError) as err:
        cls({"audio": 4})
    assert str(err.value) == (f"fusion {cls.__name__} fuses 2 to any number modalities; this run has 1 (audio): "
                              "set the encoder.<modality> groups (or =none) to match")


@pytest.mark.parametrize("cls", [bilinear.MFBFusion, bilinear.MCBFusion, tensor.MultiplicativeInteraction,
                                 nl_gate.NLGateFusion])
def test_a_pairwise_fusion_built_directly_refuses_three_modalities(cls):
    with pytest.raises(MMFuseError) as err:
        cls(DIMS3)
    assert str(err.value) == (f"fusion {cls.__name__} fuses 2 to 2 modalities; this run has 3 (image, audio, text): "
                              "set the encoder.<modality> groups (or =none) to match")


def test_an_unknown_modality_is_one_line():
    with pytest.raises(MMFuseError) as err:
        tensor.TensorFusion({"image": 5, "depth": 3})
    assert str(err.value) == "fusion TensorFusion: unknown modalities ['depth']; known: ['image', 'video', 'audio', 'text']"
