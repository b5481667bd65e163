"""Fusions against the implementations they cite (issue 13), recomputed by hand from the parameters.

- the cited variants as options: ``mutan input_activation=identity`` (block.bootstrap / MMF ``Mutan``),
  ``nl_gate form=multibench`` (MultiBench ``NLgate``'s formula per token), ``concat hidden=[..]
  output_activation=false`` (MMF ``concat_mlp``), ``mul activation=relu`` (MMF ``mlb``), each next to
  its default formula, and built and trained one step from the overrides the README's table gives;
- bad option values: one line naming the field, the expected type and an example;
- ``mcb`` in float64 (``.double()`` and a float64 default dtype), exact to 1e-12;
- reference computations that a planted bug fails: TFN with its real activations, ``co_attention``
  (both streams of a layer from the previous layer) and ``mult`` (keys and values from ``X⁰`` / ``Y⁰``),
  with the attention blocks written out from their weights (no module of mmfuse called).
"""

from __future__ import annotations

import math
import shlex

import pytest
import torch
import torch.nn.functional as F
from test_fusions import DX, DY, N_IMG, B, build, fusion_class, inputs, options, pad
from test_readme_guide import section, ticked

from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput

ATOL = 1e-5


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1)


# -- the cited variants, and the defaults next to them ---------------------------------------------------

@pytest.mark.parametrize(("override", "act"), [({}, torch.tanh), ({"input_activation": "identity"}, lambda t: t)],
                         ids=["default-tanh", "block_bootstrap-identity"])
def test_mutan_is_the_rank_r_sum_with_or_without_tanh(override, act):
    """``z = W_o Σ_r (M_r σ(W_x x)) ⊙ (N_r σ(W_y y))``; block.bootstrap's ``Mutan`` is ``σ = identity``."""
    f = build("mutan", dim=3, mm_dim=4, rank=2, **override)
    image, text = inputs().values()
    x, y = act(linear(f.proj_image, image.pooled)), act(linear(f.proj_text, text.pooled))
    m0, m1 = linear(f.merge_image, x), linear(f.merge_text, y)      # [B, R m], rank-major as in Mutan
    core = m0[:, :4] * m1[:, :4] + m0[:, 4:] * m1[:, 4:]
    assert torch.allclose(f({"image": image, "text": text}), linear(f.out, core), atol=ATOL)


@pytest.mark.parametrize(("override", "act"), [({}, torch.tanh), ({"activation": "relu"}, torch.relu)],
                         ids=["default-tanh", "mmf_mlb-relu"])
def test_mul_is_the_product_of_the_activated_projections(override, act):
    f = build("mul", dim=4, **override)
    image, text = inputs().values()
    expected = act(linear(f.proj_image, image.pooled)) * act(linear(f.proj_text, text.pooled))
    assert torch.allclose(f({"image": image, "text": text}), expected, atol=1e-6)


def test_concat_default_is_one_activated_layer():
    f = build("concat", dim=4)
    image, text = inputs().values()
    h = torch.cat([image.pooled, text.pooled], 1)
    assert torch.allclose(f({"image": image, "text": text}), torch.relu(linear(f.proj, h)), atol=1e-6)


def test_concat_with_hidden_layers_is_mmf_concat_mlp():
    """MMF ``ConcatMLP``: ReLU after each hidden layer, none after the output layer."""
    f = build("concat", dim=4, hidden=[7, 5], output_activation=False)
    assert [(lay.in_features, lay.out_features) for lay in (*f.hidden, f.proj)] == [(DX + DY, 7), (7, 5), (5, 4)]
    image, text = inputs().values()
    h = torch.cat([image.pooled, text.pooled], 1)
    h = torch.relu(linear(f.hidden[1], torch.relu(linear(f.hidden[0], h))))
    assert torch.allclose(f({"image": image, "text": text}), linear(f.proj, h), atol=1e-6)
    with_act = build("concat", dim=4, hidden=[7, 5])   # same seed, same weights; σ on the output too
    assert torch.allclose(with_act({"image": image, "text": text}), torch.relu(linear(f.proj, h)), atol=1e-6)


@pytest.mark.parametrize("output_activation", [False, True])
def test_concat_dropout_follows_each_hidden_layer_and_the_output_only_with_its_activation(output_activation):
    """Train mode, ``dropout=0.5``: ``h_i = drop(relu(W_i h_{i−1}))``; then ``z = W h_2`` (MMF's MLP: no
    dropout after the last layer) or ``z = drop(relu(W h_2))``. The same dropout masks are drawn by
    seeding the generator the same before the module and before the reference."""
    f = build("concat", dim=4, hidden=[7, 5], output_activation=output_activation, dropout=0.5).train()
    image, text = inputs().values()
    torch.manual_seed(11)
    out = f({"image": image, "text": text})
    torch.manual_seed(11)
    h = torch.cat([image.pooled, text.pooled], 1)
    for layer in f.hidden:
        h = F.dropout(torch.relu(linear(layer, h)), 0.5, training=True)
    z = linear(f.proj, h)
    expected = F.dropout(torch.relu(z), 0.5, training=True) if output_activation else z
    assert torch.allclose(out, expected, atol=1e-6)


def test_nl_gate_default_is_the_scaled_gate_mean_pooled():
    """``form=gate``: ``z = mean_n a_n ⊙ Σ_s softmax_s(q_n·k_s / √d) v_s``, ``a = W_x x``, ``q = W_q a``."""
    f = build("nl_gate", dim=4)
    image, text = inputs().values()
    a = linear(f.proj_image, image.tokens)
    q, k, v = linear(f.query, a), linear(f.key, text.tokens), linear(f.value, text.tokens)
    w = torch.softmax((q @ k.transpose(1, 2) / 2.0).masked_fill(~text.mask.unsqueeze(1), -math.inf), -1)
    assert torch.allclose(f({"image": image, "text": text}), masked_mean(a * (w @ v), image.mask), atol=ATOL)


def per_token_nlgate(f, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
    """MultiBench ``NLgate.forward``'s formula ``flatten(qin + softmax(qin @ kin) @ vin)`` with per-token
    projections ``qin = W_q X``, ``kin = (W_k Y)ᵀ``, ``vin = W_v Y`` (masked keys added, since MultiBench
    has no masks). MultiBench's module itself projects the whole input vector and reshapes the result,
    and takes ``kin`` as that reshape without a transpose: not these numbers."""
    qin = linear(f.query, image.tokens)
    kin = linear(f.key, text.tokens).transpose(1, 2)
    vin = linear(f.value, text.tokens)
    scores = torch.matmul(qin, kin).masked_fill(~text.mask.unsqueeze(1), -math.inf)
    return torch.flatten(qin + torch.matmul(torch.softmax(scores, dim=2), vin), 1)


def test_nl_gate_multibench_form_is_the_per_token_nlgate():
    f = build("nl_gate", dim=4, form="multibench", image_tokens=N_IMG)
    assert f.out_dim == N_IMG * 4
    assert sum(p.numel() for p in f.parameters()) == (DX + 1) * 4 + 2 * (DY + 1) * 4
    image, text = inputs().values()
    expected = per_token_nlgate(f, image, text)
    assert torch.allclose(f({"image": image, "text": text}), expected, atol=ATOL)
    assert torch.allclose(f({"image": pad(image, 3), "text": text}), expected, atol=ATOL)


def test_nl_gate_multibench_form_gives_zeros_at_padded_image_positions_below_n():
    """``mask`` False at positions 1 and 3 of row 0 and 0 of row 2 (junk of size 100 there): those slots
    of ``z`` are zeros, every other slot is the per-token formula's."""
    f = build("nl_gate", dim=4, form="multibench", image_tokens=N_IMG)
    image, text = inputs().values()
    mask = image.mask.clone()
    mask[0, [1, 3]] = mask[2, 0] = False
    tokens = torch.where(mask.unsqueeze(-1), image.tokens, 100 * torch.randn(image.tokens.shape))
    out = f({"image": EncoderOutput(image.pooled, tokens, mask), "text": text}).view(B, N_IMG, 4)
    expected = per_token_nlgate(f, EncoderOutput(image.pooled, tokens, mask), text).view(B, N_IMG, 4)
    assert torch.equal(out[~mask], torch.zeros(3, 4))
    assert torch.allclose(out[mask], expected[mask], atol=ATOL)


def test_nl_gate_multibench_form_needs_the_image_token_count():
    with pytest.raises(MMFuseError, match=r"^fusion.image_tokens is unset \(nl_gate form=multibench"):
        fusion_class("nl_gate")({"image": DX, "text": DY}, dim=4, form="multibench")
    with pytest.raises(MMFuseError, match=r"fusion.form='nonlocal' \(nl_gate\): expected one of"):
        fusion_class("nl_gate")({"image": DX, "text": DY}, dim=4, form="nonlocal")
    f = build("nl_gate", dim=4, form="multibench", image_tokens=N_IMG - 2)
    with pytest.raises(MMFuseError, match=rf"^fusion.image_tokens={N_IMG - 2} \(nl_gate form=multibench\) but the "
                                          rf"image encoder gives up to {N_IMG} real tokens: set fusion.image_tokens"):
        f(inputs())


def test_nl_gate_multibench_form_refuses_fewer_image_tokens_than_n():
    """Four tokens for ``image_tokens=6``: an error, not two slots of zeros."""
    f = build("nl_gate", dim=4, form="multibench", image_tokens=N_IMG)
    image, text = inputs().values()
    short = EncoderOutput(image.pooled, image.tokens[:, :4], image.mask[:, :4])
    with pytest.raises(MMFuseError) as err:
        f({"image": short, "text": text})
    assert str(err.value) == (f"fusion.image_tokens={N_IMG} (nl_gate form=multibench) but the image encoder "
                              "gives 4 tokens: set fusion.image_tokens=4")


BAD_VALUES = [
    ("concat", {"hidden": 500},
     "fusion.hidden=500 for concat: must be a list of widths (positive integers), "
     "e.g. 'fusion.hidden=[500,500]' (or [] for none)"),
    ("concat", {"hidden": "500"},
     "fusion.hidden='500' for concat: must be a list of widths (positive integers), "
     "e.g. 'fusion.hidden=[500,500]' (or [] for none)"),
    ("concat", {"hidden": [3, 0]},
     "fusion.hidden[1]=0 for concat: must be a positive integer, e.g. fusion.hidden[1]=64"),
    ("concat", {"hidden": [2.5]},
     "fusion.hidden[0]=2.5 for concat: must be a positive integer, e.g. fusion.hidden[0]=64"),
    ("nl_gate", {"form": "multibench", "image_tokens": 2.5},
     "fusion.image_tokens=2.5 for nl_gate form=multibench: must be a positive integer, e.g. fusion.image_tokens=64"),
    ("nl_gate", {"form": "multibench", "image_tokens": True},
     "fusion.image_tokens=True for nl_gate form=multibench: must be a positive integer, e.g. fusion.image_tokens=64"),
    ("nl_gate", {"image_tokens": 64},
     "fusion.image_tokens=64 is read only by nl_gate form=multibench (form=gate mean-pools the tokens): "
     "remove it (fusion.image_tokens=null) or set fusion.form=multibench"),
    ("mutan", {"rank": 2.0}, "fusion.rank=2.0 for mutan: must be a positive integer, e.g. fusion.rank=4"),
    ("mul", {"dim": 0}, "fusion.dim=0 for MulFusion: must be a positive integer, e.g. fusion.dim=256"),
    ("mutan", {"input_activation": "sigmoid"},
     "fusion.input_activation='sigmoid': expected one of ['gelu', 'identity', 'relu', 'tanh'], "
     "e.g. fusion.input_activation=relu"),
    ("mul", {"activation": "sigmoid"},
     "fusion.activation='sigmoid': expected one of ['gelu', 'identity', 'relu', 'tanh'], e.g. fusion.activation=relu"),
]


@pytest.mark.parametrize(("name", "override", "message"), BAD_VALUES,
                         ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o, _ in BAD_VALUES])
def test_bad_option_values_are_one_line_naming_the_field_the_type_and_an_example(name, override, message):
    """No bare ``TypeError``, no ``int(2.5) = 2``, no option silently ignored."""
    with pytest.raises(MMFuseError) as err:
        fusion_class(name)({"image": DX, "text": DY}, **{**options(name), **override})
    assert str(err.value) == message


OPTIONS = [
    ("mutan", {"input_activation": "identity"}),
    ("mul", {"activation": "relu"}),
    ("concat", {"hidden": [7, 5], "output_activation": False}),
    ("nl_gate", {"form": "multibench", "image_tokens": N_IMG}),
]


@pytest.mark.parametrize(("name", "override"), OPTIONS, ids=[n for n, _ in OPTIONS])
def test_the_cited_variants_keep_the_contract(name, override):
    """Parameter formula for two sizes, a gradient for every parameter, padding and a batch of one."""
    for image_dim, text_dim in ((DX, DY), (40, 8)):
        fusion = build(name, image_dim, text_dim, **override)
        assert sum(p.numel() for p in fusion.parameters()) == fusion_class(name).expected_params(
            {"image": image_dim, "text": text_dim}, **{**options(name), **override})
    fusion = build(name, **override).train()
    image, text = inputs().values()
    out = fusion({"image": image, "text": text})
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    no_grad = [n for n, p in fusion.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad
    fusion.eval()
    with torch.no_grad():
        ref = fusion({"image": image, "text": text})
        assert torch.allclose(fusion({"image": pad(image, 3), "text": pad(text, 4)}), ref, atol=ATOL, rtol=1e-4)
        one = fusion({"image": EncoderOutput(*(t[1:2] for t in image)), "text": EncoderOutput(*(t[1:2] for t in text))})
        assert torch.allclose(one[0], ref[1], atol=ATOL, rtol=1e-4)


# -- mcb in float64 ---------------------------------------------------------------------------------------

def mcb_reference(f, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The count sketch of ``x ⊗ y`` (hash ``h_x(i) + h_y(j) mod d``, sign ``s_x(i) s_y(j)``), signed
    square root, L2, then ``W_o``: in the dtype of ``x``."""
    d = f.sketch_dim
    hx, sx = f.sketch_image.abs().argmax(1), f.sketch_image.sum(1).to(x.dtype)
    hy, sy = f.sketch_text.abs().argmax(1), f.sketch_text.sum(1).to(x.dtype)
    outer = torch.einsum("bi,bj->bij", x * sx, y * sy)
    c = torch.zeros(x.shape[0], d, dtype=x.dtype).index_add_(1, ((hx[:, None] + hy[None]) % d).flatten(), outer.flatten(1))
    c = c.sign() * (c.abs() + 1e-8).sqrt()   # signed_sqrt_l2's eps
    return linear(f.out, c / c.norm(dim=-1, keepdim=True))


def float64_inputs() -> tuple[EncoderOutput, EncoderOutput]:
    return tuple(EncoderOutput(*(t.double() if t.is_floating_point() else t for t in e)) for e in inputs().values())


def test_mcb_runs_in_float64_after_double():
    f = build("mcb", sketch_dim=16, dim=4).double()
    image, text = float64_inputs()
    out = f({"image": image, "text": text})
    assert out.dtype == torch.float64
    assert torch.allclose(out, mcb_reference(f, image.pooled, text.pooled), rtol=0, atol=1e-12)


def test_mcb_runs_with_a_float64_default_dtype():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        f = build("mcb", sketch_dim=16, dim=4)
        image, text = float64_inputs()
        out = f({"image": image, "text": text})
        assert f.sketch_image.dtype == f.out.weight.dtype == out.dtype == torch.float64
        assert torch.allclose(out, mcb_reference(f, image.pooled, text.pooled), rtol=0, atol=1e-12)
    finally:
        torch.set_default_dtype(before)


def test_mcb_float32_inputs_into_a_double_module_give_float64():
    f = build("mcb", sketch_dim=16, dim=4).double()
    image, text = inputs().values()
    out = f({"image": image, "text": text})
    assert out.dtype == torch.float64
    assert torch.allclose(out, mcb_reference(f, image.pooled.double(), text.pooled.double()), atol=1e-6)


# -- TFN with its real activations ------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_tfn_formula_with_its_real_activation(activation):
    """``z = σ(W vec([σ(A x); 1] ⊗ [σ(B y); 1]) + b)``, the product laid out ``t[i (h+1) + j] = a_i b_j``.
    ``tanh`` as well, since ``relu(1) = 1`` hides an activation applied after appending the 1."""
    act = {"relu": torch.relu, "tanh": torch.tanh}[activation]
    f = build("tfn", hidden=3, dim=4, activation=activation)
    image, text = inputs().values()
    a = torch.cat([act(linear(f.proj_image, image.pooled)), torch.ones(B, 1)], 1)
    b = torch.cat([act(linear(f.proj_text, text.pooled)), torch.ones(B, 1)], 1)
    t = torch.stack([a[:, i] * b[:, j] for i in range(4) for j in range(4)], 1)
    assert torch.allclose(f({"image": image, "text": text}), act(linear(f.out, t)), atol=1e-6)


# -- the token fusions, written out from their weights ----------------------------------------------------

def layer_norm(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def attention(mha: torch.nn.MultiheadAttention, q: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """``W_o concat_h softmax_s(Q_h K_hᵀ / √(d/h)) V_h + b_o`` over the keys with ``key_mask`` True."""
    d, h = mha.embed_dim, mha.num_heads
    w, bias = mha.in_proj_weight, mha.in_proj_bias
    heads = [(t @ w[i * d:(i + 1) * d].T + bias[i * d:(i + 1) * d]).unflatten(-1, (h, d // h))
             for i, t in enumerate((q, kv, kv))]
    scores = torch.einsum("bthe,bshe->bhts", heads[0], heads[1]) / math.sqrt(d // h)
    weights = torch.softmax(scores.masked_fill(~key_mask[:, None, None, :], -math.inf), -1)
    return linear(mha.out_proj, torch.einsum("bhts,bshe->bthe", weights, heads[2]).flatten(2))


def feed_forward(ffn: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    return linear(ffn[3], F.gelu(linear(ffn[0], x)))


def cross(block, q: torch.Tensor, c: torch.Tensor, c_mask: torch.Tensor) -> torch.Tensor:
    """Pre-norm cross block: ``q += Attn(LN_q q, LN_kv c)``, ``q += FFN(LN q)``."""
    kv = layer_norm(block.norm_kv, c)
    q = q + attention(block.attn, layer_norm(block.norm_q, q), kv, c_mask)
    return q + feed_forward(block.ffn, layer_norm(block.norm2, q))


def self_layer(block, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    h = layer_norm(block.norm1, x)
    x = x + attention(block.attn, h, h, mask)
    return x + feed_forward(block.ffn, layer_norm(block.norm2, x))


@pytest.mark.parametrize("layers", [1, 2])
def test_co_attention_layer_takes_both_streams_from_the_previous_layer(layers):
    """``X̂ = Cross_x(X, Y)``, ``Ŷ = Cross_y(Y, X)`` from the same previous ``X, Y``, then ``Self`` each;
    ``z = mean LN(X) ⊙ mean LN(Y)``. Feeding the updated ``X̂`` into ``Cross_y`` fails this."""
    f = build("co_attention", dim=8, heads=2, layers=layers).eval()
    image, text = inputs().values()
    x, y = linear(f.proj_image, image.tokens), linear(f.proj_text, text.tokens)
    for i in range(layers):
        x_hat = cross(f.cross_image[i], x, y, text.mask)
        y_hat = cross(f.cross_text[i], y, x, image.mask)
        x, y = self_layer(f.self_image[i], x_hat, image.mask), self_layer(f.self_text[i], y_hat, text.mask)
    expected = masked_mean(layer_norm(f.norm_image, x), image.mask) * masked_mean(layer_norm(f.norm_text, y), text.mask)
    with torch.no_grad():
        assert torch.allclose(f({"image": image, "text": text}), expected, atol=ATOL)


def positions(n: int, d: int) -> torch.Tensor:
    """``PE[t, 2i] = sin(t / 10000^(2i/d))``, ``PE[t, 2i+1] = cos(t / 10000^(2i/d))``."""
    pe = torch.zeros(n, d)
    for t in range(n):
        for i in range(0, d, 2):
            pe[t, i] = math.sin(t / 10000 ** (i / d))
            pe[t, i + 1] = math.cos(t / 10000 ** (i / d))
    return pe


@pytest.mark.parametrize("layers", [1, 2])
def test_mult_keys_and_values_always_come_from_the_sources_first_layer(layers):
    """``Y^l = Cross(Y^{l−1}, X⁰)``, ``X^l = Cross(X^{l−1}, Y⁰)``, then ``Self``; ``z = [mean LN(Y); mean LN(X)]``.
    Two layers: at the first one ``X^{l−1} = X⁰``, so only the second tells keys from ``X⁰`` from keys
    from the other stream's previous layer."""
    f = build("mult", dim=8, heads=2, layers=layers, self_layers=1).eval()
    image, text = inputs().values()
    x0 = linear(f.proj_image, image.tokens) + positions(N_IMG, 8)
    y0 = linear(f.proj_text, text.tokens) + positions(text.tokens.shape[1], 8)
    ty, tx = y0, x0
    for i in range(layers):
        ty = cross(f.to_text[i], ty, x0, image.mask)
        tx = cross(f.to_image[i], tx, y0, text.mask)
    ty, tx = self_layer(f.self_text[0], ty, text.mask), self_layer(f.self_image[0], tx, image.mask)
    expected = torch.cat([masked_mean(layer_norm(f.norm_text, ty), text.mask),
                          masked_mean(layer_norm(f.norm_image, tx), image.mask)], -1)
    with torch.no_grad():
        assert torch.allclose(f({"image": image, "text": text}), expected, atol=ATOL)


def readme_overrides() -> dict[str, list[str]]:
    """``{fusion: [fusion.X=..., ...]}``: the overrides in the formula cells of README's "### Fusions"
    table (each code span with ``fusion.`` split as a shell would; ``N`` = 64, tiny_cnn's tokens at 32 px)."""
    found = {}
    for line in section("### Fusions").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 6:
            words = [w for span in ticked(cells[3]) if "fusion." in span for w in shlex.split(span)]
            if words:
                found[cells[0].strip("`")] = [w.replace("=N", "=64") for w in words if w.startswith("fusion.")]
    return found


BUILT_AS_SAID = {
    "mul": lambda f: isinstance(f.act, torch.nn.ReLU),
    "concat": lambda f: [m.out_features for m in f.hidden] == [500, 500] and not f.output_activation,
    "mutan": lambda f: isinstance(f.input_act, torch.nn.Identity),
    "nl_gate": lambda f: f.form == "multibench" and f.out_dim == 64 * 64,
    "qformer": lambda f: f.uses == ("image",),
}
# the key bias adds q_n·b_k to every score of query n, which the softmax over s cancels: its gradient is
# zero up to rounding (~1e-7), too small to move a float32 weight of ~0.1 at lr 0.1
SHIFT_INVARIANT = {"nl_gate": {"key.bias"}}


def test_the_readme_table_gives_these_overrides():
    assert readme_overrides() == {
        "mul": ["fusion.activation=relu"],
        "concat": ["fusion.hidden=[500,500]", "fusion.output_activation=false"],
        "mutan": ["fusion.input_activation=identity"],
        "nl_gate": ["fusion.form=multibench", "fusion.image_tokens=64"],
        "qformer": ["fusion.text_in_self_attention=false"],
        "single_stream": ["fusion.pooling=text"],
    }


@pytest.mark.parametrize("name", sorted(BUILT_AS_SAID))
def test_the_readme_overrides_build_and_train_one_step(make_cfg, name):
    """The overrides read from README's fusion table, through the real config and the default encoders
    (tiny_cnn at 32 px: 64 image tokens): the loss of a batch is finite, and one backward pass and SGD
    step change every trainable parameter of the fusion (but ``SHIFT_INVARIANT``'s)."""
    from mmfuse.builder import build_module

    torch.manual_seed(0)
    module = build_module(make_cfg(f"fusion={name}", *readme_overrides()[name]))
    fusion = module.model.fusion
    assert BUILT_AS_SAID[name](fusion)
    text = ["a red circle to the left of a blue square", "a green cross"]
    module.model.text_encoder.tokenizer.fit(text)
    images = module.model.image_encoder.transform(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    assert module.model.image_encoder(images).tokens.shape[1] == 64
    batch = {"image": images, **module.model.text_encoder.tokenizer(text), "label": torch.tensor([1.0, 0.0])}
    before = {n: p.detach().clone() for n, p in fusion.named_parameters()
              if p.requires_grad and n not in SHIFT_INVARIANT.get(name, ())}
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    loss, outputs = module.task.step(module.model, batch)
    assert outputs["logits"].shape == (2,) and torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    unchanged = [n for n, p in fusion.named_parameters() if n in before and torch.equal(p.detach(), before[n])]
    assert before and unchanged == []
