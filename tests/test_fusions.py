"""Every fusion in conf/fusion/ (parametrised over the directory: a new config is tested automatically).

Contract checked for each: output shape / dtype; every parameter receives a gradient (MultiBench's
low-rank fusion kept its factors in a Python list and never trained them); the parameter count equals
the closed-form formula for two sizes; padding never changes the output; a batch of one gives the same
row as a batch; bf16 / fp16 autocast on CPU stays close to float32; shuffling either modality changes
the output (the unimodal baselines instead must ignore the other one). Then a few fusions are checked
against their formula by recomputation, and the README table against the configs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from conftest import CONF_DIR, ROOT
from mmfuse.builder import build_fusion, build_module
from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import Fusion
from mmfuse.fusion.pairs import ContextPairs
from mmfuse.types import EncoderOutput, LateOutput

FUSION_DIR = CONF_DIR / "fusion"
NAMES = sorted(p.stem for p in FUSION_DIR.glob("*.yaml"))
BASELINES = {"image_only", "text_only", "video_only", "audio_only"}
DX, DY = 24, 16          # different widths, so that a swapped projection fails
WIDTHS = {"image": DX, "video": 20, "audio": 12, "text": DY}
TOKENS = {"image": 6, "video": 4, "audio": 9, "text": 7}
B, N_IMG, N_TXT = 5, 6, 7
SETS = {2: ("image", "text"), 3: ("video", "audio", "text")}


def config(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(FUSION_DIR / f"{name}.yaml"))


def fusion_class(name: str) -> type[Fusion]:
    return get_class(config(name)["_target_"])


def options(name: str) -> dict:
    return {k: v for k, v in config(name).items() if k not in ("_target_", "stage", "context")}


def modalities(name: str, n: int) -> tuple[str, ...]:
    """The image-text pair, or video + audio + text; a unimodal baseline gets its own modality in."""
    mods = SETS[n]
    own = config(name).get("modality", {"image_only": "image", "text_only": "text"}.get(name))
    if own is not None and own not in mods:
        mods = tuple(sorted({own, *mods[1:]}, key=("image", "video", "audio", "text").index))
    return mods


def dims_of(mods: tuple[str, ...], widths: dict | None = None) -> dict[str, int]:
    return {m: (widths or WIDTHS)[m] for m in mods}


def build(name: str, image_dim: int = DX, text_dim: int = DY, *, n: int = 2, widths: dict | None = None,
          **override) -> Fusion:
    cfg = OmegaConf.create({"fusion": {**config(name), **override}})
    torch.manual_seed(0)
    widths = widths or {**WIDTHS, "image": image_dim, "text": text_dim}
    return build_fusion(cfg, dims_of(modalities(name, n), widths))  # the real builder: also checks the stage


def expected_params(name: str, dims: dict[str, int], **o) -> int:
    cls = fusion_class(name)
    if cls.arity == "pair" and len(dims) > 2:
        return ContextPairs.expected_params_of(cls, dims, config(name).get("context", "text"), **o)
    return cls.expected_params(dims, **o)


def inputs(batch: int = B, seed: int = 1, mods: tuple[str, ...] = SETS[2]) -> dict[str, EncoderOutput]:
    """Random encoder outputs; text rows have 7, 6, 5, ... real tokens (padding at the end), audio rows
    9, 8, ... (the other modalities have no padding)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in ("image", "video", "audio", "text"):  # drawn in one order, whichever are used
        d, t = WIDTHS[m], TOKENS[m]
        pooled, tokens = torch.randn(batch, d, generator=g), torch.randn(batch, t, d, generator=g)
        if m in ("text", "audio"):
            lengths = torch.tensor([max(2, t - i) for i in range(batch)])
            mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
        else:
            mask = torch.ones(batch, t, dtype=torch.bool)
        out[m] = EncoderOutput(pooled, tokens, mask)
    return {m: out[m] for m in mods}


def inputs_for(name: str, n: int, batch: int = B, seed: int = 1) -> dict[str, EncoderOutput]:
    return inputs(batch, seed, modalities(name, n))


def score(out: torch.Tensor | LateOutput) -> torch.Tensor:
    """What the task sees: the fused vector, or for late fusion the cosine of the text with each other
    modality's embedding."""
    if isinstance(out, LateOutput):
        v = out["text"].float()
        return torch.stack([torch.nn.functional.cosine_similarity(u.float(), v, dim=-1)
                            for m, u in out.items() if m != "text"], -1)
    return out.float()


def pad(x: EncoderOutput, extra: int, seed: int = 7) -> EncoderOutput:
    """Append ``extra`` padding tokens with large random values (mask False)."""
    g = torch.Generator().manual_seed(seed)
    junk = 100 * torch.randn(x.tokens.shape[0], extra, x.tokens.shape[2], generator=g)
    return EncoderOutput(x.pooled, torch.cat([x.tokens, junk], 1),
                         torch.cat([x.mask, torch.zeros(x.mask.shape[0], extra, dtype=torch.bool)], 1))


def rows(x: EncoderOutput, index) -> EncoderOutput:
    return EncoderOutput(*(t[index] for t in x))


ARITIES = [2, 3]


def test_the_zoo_is_complete():
    issue_names = {"add", "mul", "concat", "gated", "film", "mfb", "mfh", "mutan", "tucker", "block", "mcb",
                   "tfn", "lmf", "mi", "mi_vector", "attention", "cross_attention", "co_attention",
                   "single_stream", "mult", "nl_gate", "late", "image_only", "text_only"}
    assert issue_names <= set(NAMES)


@pytest.mark.parametrize("n", ARITIES)
@pytest.mark.parametrize("name", NAMES)
def test_output_shape_dtype_and_stage(name, n):
    fusion = build(name, n=n)
    assert config(name)["stage"] == fusion.stage in ("early", "mid", "late", "none")
    out = fusion(inputs_for(name, n))
    if fusion.stage == "late":
        assert isinstance(out, LateOutput) and tuple(out) == modalities(name, n)
        assert all(u.shape == (B, fusion.out_dim) and u.dtype == torch.float32 for u in out.values())
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (B, fusion.out_dim) and out.dtype == torch.float32
    assert torch.isfinite(score(out)).all()


@pytest.mark.parametrize("n", ARITIES)
@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_receives_a_gradient(name, n):
    fusion = build(name, n=n).train()
    params = dict(fusion.named_parameters())
    assert params, f"{name} has no trainable parameters"
    out = fusion(inputs_for(name, n))
    g = torch.Generator().manual_seed(3)
    parts = tuple(out.values()) if isinstance(out, LateOutput) else (out,)
    loss = sum((p * torch.randn(p.shape, generator=g)).sum() for p in parts)
    loss.backward()
    no_grad = [k for k, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad}"


@pytest.mark.parametrize("n", ARITIES)
@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_the_formula(name, n):
    opts = options(name)
    bigger = {**opts, "dim": 2 * opts["dim"]} if "dim" in opts else opts
    for widths, o in ((WIDTHS, opts), ({"image": 40, "video": 9, "audio": 33, "text": 8}, bigger),
                      ({m: 64 for m in WIDTHS}, opts)):
        fusion = build(name, n=n, widths=widths, **o)
        count = sum(p.numel() for p in fusion.parameters())
        assert count == expected_params(name, dims_of(modalities(name, n), widths), **o), (name, widths, o)


@pytest.mark.parametrize("n", ARITIES)
@pytest.mark.parametrize("name", NAMES)
def test_padding_never_changes_the_output(name, n):
    fusion = build(name, n=n).eval()
    inp = inputs_for(name, n)
    with torch.no_grad():
        ref = score(fusion(inp))
        padded_each = [{**inp, m: pad(inp[m], 3 + i)} for i, m in enumerate(inp)]
        padded_all = {m: pad(x, 2 + 7 * i) for i, (m, x) in enumerate(inp.items())}
        for padded in (*padded_each, padded_all):
            assert torch.allclose(score(fusion(padded)), ref, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("n", ARITIES)
@pytest.mark.parametrize("name", NAMES)
def test_needs_tokens_is_truthful(name, n):
    """A token-level fusion reads the real tokens; a pooled one reads only ``pooled``."""
    fusion = build(name, n=n).eval()
    inp = inputs_for(name, n)
    with torch.no_grad():
        ref = score(fusion(inp))
        for m, x in inp.items():
            changed = EncoderOutput(x.pooled, x.tokens + torch.randn_like(x.tokens), x.mask)
            out = score(fusion({**inp, m: changed}))
            if fusion.needs_tokens and m in fusion.uses:
                assert not torch.allclose(out, ref, atol=1e-6), (name, m)
            else:
                assert torch.equal(out, ref), f"{name} reads {m} tokens but says needs_tokens=False"


@pytest.mark.parametrize("n", ARITIES)
@pytest.mark.parametrize("name", NAMES)
def test_a_batch_of_one_gives_the_row_of_the_batch(name, n):
    fusion = build(name, n=n).eval()
    inp = inputs_for(name, n)
    one = {m: rows(x, slice(1, 2)) for m, x in inp.items()}
    with torch.no_grad():
        row = score(fusion(one))
        full = score(fusion(inp))
    assert row.shape == (1, full.shape[1])
    assert torch.allclose(row[0], full[1], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("n", ARITIES)
@pytest.mark.parametrize("name", NAMES)
def test_autocast_on_cpu_stays_close_to_float32(name, n, dtype):
    if not torch.amp.autocast_mode.is_autocast_available("cpu"):
        pytest.skip("this PyTorch build has no CPU autocast")
    fusion = build(name, n=n).eval()
    inp = inputs_for(name, n)
    with torch.no_grad():
        ref = score(fusion(inp))
        with torch.autocast("cpu", dtype=dtype):
            out = score(fusion(inp))
    assert out.shape == ref.shape and torch.isfinite(out).all()
    rel = (out - ref).norm() / ref.norm().clamp_min(1e-6)
    assert rel < 0.05, f"{name} under {dtype} autocast: relative error {rel:.3f}"


@pytest.mark.parametrize("n", ARITIES)
@pytest.mark.parametrize("name", NAMES)
def test_shuffled_pairs_change_the_output(name, n):
    """Pairing each row with another row's input of one modality changes every row's output; a
    unimodal baseline is unchanged by shuffling a modality it ignores."""
    fusion = build(name, n=n).eval()
    inp = inputs_for(name, n)
    perm = torch.roll(torch.arange(B), 1)
    with torch.no_grad():
        ref = score(fusion(inp))
        for m, x in inp.items():
            out = score(fusion({**inp, m: rows(x, perm)}))
            row_changed = ~torch.isclose(out, ref, atol=1e-6).all(dim=1)
            if m in fusion.uses:
                assert row_changed.all(), f"{name}: rows {(~row_changed).nonzero().flatten().tolist()} ignore {m}"
            else:
                assert not row_changed.any()
    assert (name in BASELINES) == (len(fusion.uses) == 1)


@pytest.mark.parametrize("name", NAMES)
def test_composes_through_the_real_config_and_trains_one_step(make_cfg, name):
    if config(name).get("modality") in ("video", "audio"):  # the default run has image + text only
        with pytest.raises(Exception, match=f"fusion.modality='{config(name)['modality']}': this run has no"):
            build_module(make_cfg(f"fusion={name}"))
        return
    module = build_module(make_cfg(f"fusion={name}"))
    model = module.model
    assert type(model.fusion) is fusion_class(name)
    model.text_encoder.tokenizer.fit(["a red circle to the left of a blue square", "a green cross above a cat"])
    tokens = model.text_encoder.tokenizer(["a red circle to the left of a blue square", "a green cross"])
    images = model.image_encoder.transform(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    batch = {"image": images, **tokens, "label": torch.tensor([1.0, 0.0])}
    loss, outputs = module.task.step(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and outputs["logits"].shape == (2,)
    loss.backward()
    assert all(p.grad is not None for p in model.fusion.parameters())


VARIANTS = [
    ("cross_attention", {"direction": "image_to_text"}),
    ("cross_attention", {"direction": "both", "self_attention": False}),
    ("cross_attention", {"global_token": True, "layers": 3}),
    ("cross_attention", {"readout": "bilinear", "direction": "both"}),
    ("mult", {"self_layers": 0}),
    ("mfh", {"order": 3}),
]


@pytest.mark.parametrize(("name", "override"), VARIANTS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in VARIANTS])
def test_options_keep_the_contract(name, override):
    """Non-default options: parameter formula, gradients, padding invariance, both modalities used."""
    for n in ARITIES:
        fusion = build(name, n=n, **override)
        assert sum(p.numel() for p in fusion.parameters()) == expected_params(
            name, dims_of(modalities(name, n)), **{**options(name), **override})
        inp = inputs_for(name, n)
        out = fusion(inp)
        out.sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.parameters())
        fusion.eval()
        perm = torch.roll(torch.arange(B), 1)
        with torch.no_grad():
            ref = fusion(inp)
            assert torch.allclose(fusion({m: pad(x, 3 + i) for i, (m, x) in enumerate(inp.items())}), ref,
                                  atol=1e-5, rtol=1e-4)
            for m, x in inp.items():
                assert not torch.isclose(fusion({**inp, m: rows(x, perm)}), ref).all(1).any(), (name, n, m)


def test_the_multibench_python_list_bug_is_caught_by_the_parameter_count():
    """MultiBench's LMF kept its factors in a Python list: never registered, never trained. The same
    fusion built that way has fewer parameters than its formula, so the count test fails for it."""
    from mmfuse.fusion.tensor import LowRankFusion

    class ListLMF(LowRankFusion):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.factors = [torch.nn.Parameter(self.factor_image.data), torch.nn.Parameter(self.factor_text.data)]
            del self.factor_image, self.factor_text

    buggy = ListLMF({"image": DX, "text": DY}, dim=8, rank=2)
    assert sum(p.numel() for p in buggy.parameters()) < LowRankFusion.expected_params({"image": DX, "text": DY},
                                                                                    dim=8, rank=2)


# -- formulas, checked by recomputation ---------------------------------------------------------------

def test_mfb_is_sum_pooled_product_then_signed_sqrt_and_l2():
    f = build("mfb", dim=3, factor=2)
    image, text = inputs().values()
    e = f.proj_image(image.pooled) * f.proj_text(text.pooled)
    z = e[:, 0::2] + e[:, 1::2]
    z = z.sign() * z.abs().sqrt()
    assert torch.allclose(f({"image": image, "text": text}), z / z.norm(dim=-1, keepdim=True), atol=1e-5)


def test_tfn_product_holds_unimodal_terms_and_pairwise_products():
    f = build("tfn", hidden=3, dim=4, activation="identity")
    image, text = inputs().values()
    a, b = f.proj_image(image.pooled), f.proj_text(text.pooled)
    t = torch.cat([a, torch.ones(B, 1)], 1).unsqueeze(2) * torch.cat([b, torch.ones(B, 1)], 1).unsqueeze(1)
    assert torch.allclose(f({"image": image, "text": text}), f.out(t.flatten(1)), atol=1e-5)
    assert torch.allclose(t[:, :3, 3], a) and torch.allclose(t[:, 3, :3], b)


def test_lmf_equals_the_full_tensor_fusion_it_factorises():
    """``Σ_r λ_r (W_x^r [x;1]) ⊙ (W_y^r [y;1]) = W ×1 [x;1] ×2 [y;1]`` with ``W = Σ_r λ_r W_x^r ∘ W_y^r``."""
    f = build("lmf", rank=3, dim=4)
    image, text = inputs().values()
    x1 = torch.cat([image.pooled, torch.ones(B, 1)], 1)
    y1 = torch.cat([text.pooled, torch.ones(B, 1)], 1)
    full = torch.einsum("r,rid,rjd->ijd", f.rank_weights, f.factor_image, f.factor_text)
    expected = torch.einsum("bi,ijd,bj->bd", x1, full, y1) + f.bias
    assert torch.allclose(f({"image": image, "text": text}), expected, atol=1e-4)


def test_mcb_is_the_count_sketch_of_the_outer_product():
    """``IFFT(FFT(Ψ_x x) ⊙ FFT(Ψ_y y))`` equals sketching ``x ⊗ y`` with hash ``h_x(i) + h_y(j) mod d``
    and sign ``s_x(i) s_y(j)``: exactly, not approximately."""
    f = build("mcb", sketch_dim=16, dim=4)
    image, text = inputs().values()
    hx, sx = f.sketch_image.abs().argmax(1), f.sketch_image.sum(1)
    hy, sy = f.sketch_text.abs().argmax(1), f.sketch_text.sum(1)
    outer = torch.einsum("bi,bj->bij", image.pooled * sx, text.pooled * sy)
    target = (hx.unsqueeze(1) + hy.unsqueeze(0)) % 16
    direct = torch.zeros(B, 16).index_add_(1, target.flatten(), outer.flatten(1))
    direct = direct.sign() * direct.abs().sqrt()
    direct = direct / direct.norm(dim=-1, keepdim=True)
    assert torch.allclose(f({"image": image, "text": text}), f.out(direct), atol=1e-4)


def test_gated_unit_interpolates_between_the_modalities():
    f = build("gated", dim=4)
    image, text = inputs().values()
    g = torch.sigmoid(f.gate(torch.cat([image.pooled, text.pooled], 1)))
    expected = g * torch.tanh(f.proj_image(image.pooled)) + (1 - g) * torch.tanh(f.proj_text(text.pooled))
    assert torch.allclose(f({"image": image, "text": text}), expected, atol=1e-6)


def test_mi_matrix_form_is_a_text_generated_linear_map():
    f = build("mi", dim=3)
    image, text = inputs().values()
    w = f.weight_gen(text.pooled).view(B, 3, DX)
    expected = (w @ image.pooled.unsqueeze(-1)).squeeze(-1) + f.bias_gen(text.pooled)
    assert torch.allclose(f({"image": image, "text": text}), expected, atol=1e-5)


def test_cross_attention_to_a_single_image_token_copies_its_value():
    """With one image token the attention weight is 1: each layer adds ``FFN``(query + ``W_o W_v LN(x)``)."""
    f = build("cross_attention", layers=1, self_attention=False, global_token=False).eval()
    image, text = inputs().values()
    one = EncoderOutput(image.pooled, image.tokens[:, :1], image.mask[:, :1])
    block = f.stacks["text_to_image"][0]
    x = block.norm_kv(f.proj_image(one.tokens))
    w_v = block.attn.in_proj_weight[2 * f.dim:]
    b_v = block.attn.in_proj_bias[2 * f.dim:]
    value = block.attn.out_proj(x @ w_v.T + b_v)
    q = f.proj_text(text.tokens) + value
    q = q + block.ffn(block.norm2(q))
    mask = text.mask.unsqueeze(-1)
    expected = (f.norms["text_to_image"](q) * mask).sum(1) / mask.sum(1)
    with torch.no_grad():
        assert torch.allclose(f({"image": one, "text": text}), expected, atol=1e-5)


@pytest.mark.parametrize(("name", "override", "message"), [
    ("cross_attention", {"dim": 30, "heads": 4}, "divisible by fusion.heads"),
    ("cross_attention", {"direction": "sideways"}, "fusion.direction"),
    ("block", {"mm_dim": 30, "chunks": 8}, "divisible by fusion.chunks"),
    ("mi", {"form": "tensor"}, "fusion.form"),
    ("cross_attention", {"readout": "max"}, "fusion.readout"),
    ("mfb", {"factor": 0}, "fusion.factor=0"),
    ("single_stream", {"pooling": "max"}, "fusion.pooling='max' .* Fix: cls, mean or text"),
])
def test_bad_options_fail_with_a_message_naming_the_field(name, override, message):
    with pytest.raises(MMFuseError, match=message):
        fusion_class(name)({"image": DX, "text": DY}, **{**options(name), **override})


def test_readme_table_lists_every_fusion_with_its_stage_input_and_parameters():
    """README's "### Fusions" table: one row per config; stage, input, the parameter count at the
    default encoders' width (64-d image and text features) and the arity must match the code."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Fusions", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 7 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    assert sorted(rows) == NAMES
    for name, cells in rows.items():
        fusion = build(name, widths={m: 64 for m in WIDTHS})
        kind = "one" if name in BASELINES else fusion_class(name).arity.replace("n", "N")
        assert cells[6] == kind, name  # the modalities column: N-ary, pair (context rule) or one
        assert cells[1] == fusion.stage, name
        assert cells[2] == ("tokens" if fusion.needs_tokens else "pooled"), name
        assert int(cells[5].replace(",", "")) == sum(p.numel() for p in fusion.parameters()), name


def test_signed_sqrt_has_finite_gradient_at_zero():
    from mmfuse.fusion.bilinear import signed_sqrt_l2

    z = torch.tensor([[0.0, 1.0, -4.0]], requires_grad=True)
    signed_sqrt_l2(z).sum().backward()
    assert torch.isfinite(z.grad).all()
    assert torch.allclose(signed_sqrt_l2(z.detach()), torch.tensor([[0.0, 1.0, -2.0]]) / math.sqrt(5), atol=1e-3)


def test_fusion_dir_is_what_the_tests_iterate():
    assert Path(FUSION_DIR).is_dir() and len(NAMES) >= 24


def test_single_stream_mean_pooling_is_the_masked_mean_of_the_normed_tokens():
    """``pooling=mean``: z = mean over real tokens of LN(H^L), padding excluded; cls: LN(H^L)_0."""
    image, text = inputs().values()
    mean_fusion = build("single_stream", pooling="mean").eval()
    cls_fusion = build("single_stream", pooling="cls").eval()  # same seed: same weights
    captured = {}
    hook = mean_fusion.norm.register_forward_hook(lambda mod, args, out: captured.update(normed=out))
    with torch.no_grad():
        z = mean_fusion({"image": image, "text": text})
        hook.remove()
        z_cls = cls_fusion({"image": image, "text": text})
        padded = mean_fusion({"image": pad(image, 3), "text": pad(text, 5)})
    normed = captured["normed"]
    mask = torch.cat([torch.ones(B, 1, dtype=torch.bool), text.mask, image.mask], 1)
    expected = torch.stack([normed[b][mask[b]].mean(0) for b in range(B)])
    assert torch.allclose(z, expected, atol=1e-6)
    assert torch.allclose(padded, z, atol=1e-5)
    assert torch.allclose(z_cls, normed[:, 0], atol=1e-6)  # the [CLS] row of the same H^L
    assert not torch.allclose(z, z_cls, atol=1e-3)

