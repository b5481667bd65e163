"""decoder=hf_cross and decoder=prefix_lm: tiny random BERT / GPT-2 / Llama configs (``pretrained: false`` +
``config``) with the MiniLM tokenizer from ../shared, plus the real all-MiniLM-L6-v2 weights for hf_cross."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from mmfuse.decoders.base import GenerationOptions  # noqa: E402
from mmfuse.decoders.hf_cross import HFCrossDecoder  # noqa: E402
from mmfuse.decoders.hf_tokenizer import HFCaptionTokenizer  # noqa: E402
from mmfuse.decoders.prefix_lm import PrefixLMDecoder  # noqa: E402
from mmfuse.errors import MMFuseError  # noqa: E402

MINILM = Path(__file__).resolve().parents[2] / "shared" / "weights" / "all-MiniLM-L6-v2"
pytestmark = pytest.mark.skipif(not MINILM.is_dir(), reason="needs ../shared/weights/all-MiniLM-L6-v2")

D = 16  # memory width
BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
GPT2 = dict(model_type="gpt2", n_layer=2, n_embd=32, n_head=2, n_positions=64, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2)
LLAMA = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, initializer_range=0.2)
KINDS = ("hf_cross", "mlp", "transformer", "projector")
CAPTIONS = ["a red circle", "two blue squares", "a green triangle left of a star"]


def make(kind: str, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "hf_cross":
        return HFCrossDecoder(D, name_or_path=str(MINILM), pretrained=False, config=BERT, **kw)
    opts = dict(prefix_length=3, mapper_layers=1, mapper_heads=2)
    return PrefixLMDecoder(D, name_or_path="gpt2", tokenizer=str(MINILM), pretrained=False,
                           config=kw.pop("config", GPT2), mapper=kind, **{**opts, **kw})


def memory(seed: int = 1, b: int = 3, m: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mem = torch.randn(b, m, D, generator=g)
    mask = torch.ones(b, m, dtype=torch.bool)
    mask[1, 3] = mask[2, 2:] = False
    return mem, mask


def caption_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """base.py's loss: cross-entropy of logits[:, :-1] against ids[:, 1:] where mask[:, 1:]."""
    keep = mask[:, 1:]
    return torch.nn.functional.cross_entropy(logits[:, :-1][keep], ids[:, 1:][keep])


def greedy(dec, mem, mask, max_length: int) -> list[list[int]]:
    """Greedy decoding written on forward(): argmax at each step, stop at eos."""
    out = []
    for i in range(mem.shape[0]):
        ids = [dec.tokenizer.bos_id]
        for _ in range(max_length):
            x = torch.tensor([ids])
            t = int(dec(mem[i:i + 1], mask[i:i + 1], x, torch.ones_like(x, dtype=torch.bool))[0, -1].argmax())
            if t == dec.tokenizer.eos_id:
                break
            ids.append(t)
        out.append(ids[1:])
    return out


def beam_score(dec, mem, mask, tokens: list[int], max_length: int, length_penalty: float = 1.0) -> float:
    """HF's score of a hypothesis: sum log p / length ** length_penalty, eos counted when it ended by eos."""
    seq = tokens + ([dec.tokenizer.eos_id] if len(tokens) < max_length else [])
    x = torch.tensor([[dec.tokenizer.bos_id, *seq]])
    logp = dec(mem, mask, x, torch.ones_like(x, dtype=torch.bool))[0, :-1].log_softmax(-1)
    return logp[torch.arange(len(seq)), torch.tensor(seq)].sum().item() / len(seq) ** length_penalty


_TRAINED: dict = {}


def fit(dec, mem, mask, steps: int, lr: float) -> list[float]:
    """``steps`` Adam steps on the caption loss of CAPTIONS; the losses before each step."""
    ids, tmask = dec.tokenizer.encode(CAPTIONS, 16)
    opt = torch.optim.Adam([p for p in dec.parameters() if p.requires_grad], lr=lr)
    dec.train()
    losses = []
    for _ in range(steps):
        loss = caption_loss(dec(mem, mask, ids, tmask), ids, tmask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    dec.eval()
    return losses


def trained(kind: str) -> tuple:
    """The decoder after 30 Adam steps (lr 1e-2) on three (memory, caption) pairs, and its losses (cached)."""
    if kind not in _TRAINED:
        dec = make(kind)
        _TRAINED[kind] = (dec, fit(dec, *memory(), steps=30, lr=1e-2))
    return _TRAINED[kind]


def test_tokenizer_minilm_ids_cut_pad_decode():
    from transformers import AutoTokenizer

    tok = HFCaptionTokenizer(AutoTokenizer.from_pretrained(str(MINILM)))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size, tok.fitted) == (101, 102, 0, 30522, True)
    ids, mask = tok.encode(["A red circle", "two"], 16)
    assert ids.tolist() == [[101, 1037, 2417, 4418, 102], [101, 2048, 102, 0, 0]]
    assert mask.tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    ids, _ = tok.encode(["a red circle"], 4)  # cut: keeps its eos
    assert ids.tolist() == [[101, 1037, 2417, 102]]
    assert tok.decode([101, 1037, 2417, 4418, 102, 0]) == "a red circle"


def test_tokenizer_fallbacks_gpt2_style():
    class Stub:  # GPT-2: bos = eos = <|endoftext|>, no pad, no cls / sep
        bos_token_id, eos_token_id, pad_token_id, cls_token_id, sep_token_id = 50256, 50256, None, None, None

        def __len__(self):
            return 50257

    tok = HFCaptionTokenizer(Stub())
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (50256, 50256, 50256, 50257)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_falls_and_captions_memorised(kind):
    dec, losses = trained(kind)
    assert losses[0] > 9.0  # ~ log(30522) = 10.3 at random init
    assert losses[-1] < losses[0] / 20, losses  # measured: 9.95 -> 0.225 (hf_cross), 10.7 -> 0.008 (mlp)
    mem, mask = memory()
    got = [dec.tokenizer.decode(ids) for ids in dec.generate(mem, mask, GenerationOptions(max_length=12))]
    assert got == CAPTIONS


@pytest.mark.parametrize("kind", KINDS)
def test_max_and_min_length(kind):
    dec, _ = trained(kind)
    mem, mask = memory()
    natural = [len(x) for x in dec.generate(mem, mask, GenerationOptions(max_length=12))]
    assert natural == [3, 3, 7]
    for beams in (1, 3):
        short = dec.generate(mem, mask, GenerationOptions(num_beams=beams, max_length=2))
        assert [len(x) for x in short] == [2, 2, 2]
        long = dec.generate(mem, mask, GenerationOptions(num_beams=beams, max_length=12, min_length=9))
        assert all(9 <= len(x) <= 12 for x in long), long
        assert all(dec.tokenizer.eos_id not in x for x in long)


@pytest.mark.parametrize("kind", KINDS)
def test_causality(kind):
    dec = make(kind).eval()
    mem, mask = memory()
    ids, tmask = dec.tokenizer.encode(CAPTIONS, 16)
    t = 2
    changed = ids.clone()
    changed[:, t + 1] = 2000
    a, b = dec(mem, mask, ids, tmask), dec(mem, mask, changed, tmask)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


@pytest.mark.parametrize("kind", KINDS)
def test_memory_padding_changes_nothing(kind):
    dec = make(kind).eval()
    mem, mask = memory()
    ids, tmask = dec.tokenizer.encode(CAPTIONS, 16)
    garbage = torch.randn(3, 2, D, generator=torch.Generator().manual_seed(5)) * 100
    pad = torch.zeros(3, 2, dtype=torch.bool)
    end_mem, end_mask = torch.cat([mem, garbage], 1), torch.cat([mask, pad], 1)  # appended padding
    front_mem, front_mask = torch.cat([garbage, mem], 1), torch.cat([pad, mask], 1)  # padding side: left
    ref = dec(mem, mask, ids, tmask)
    for m, mm in ((end_mem, end_mask), (front_mem, front_mask)):
        assert torch.allclose(dec(m, mm, ids, tmask), ref, atol=1e-5)
    opts = GenerationOptions(num_beams=2, max_length=6)
    assert dec.generate(end_mem, end_mask, opts) == dec.generate(front_mem, front_mask, opts) \
        == dec.generate(mem, mask, opts)
    other = mem.clone()
    other[0, 0] += 1.0  # a real position does matter
    assert not torch.allclose(dec(other, mask, ids, tmask)[0], ref[0], atol=1e-4)


def test_prefix_padding_llama_rope():
    """Positions come from the mask (cumsum), so a RoPE LM is as indifferent to prefix padding as GPT-2."""
    dec = make("projector", config=LLAMA).eval()
    mem, mask = memory()
    ids, tmask = dec.tokenizer.encode(CAPTIONS, 16)
    garbage = torch.full((3, 2, D), 7.0)
    pad = torch.zeros(3, 2, dtype=torch.bool)
    padded = dec(torch.cat([mem, garbage], 1), torch.cat([mask, pad], 1), ids, tmask)
    assert torch.allclose(padded, dec(mem, mask, ids, tmask), atol=1e-5)
    opts = GenerationOptions(max_length=5)
    assert dec.generate(mem, mask, opts) == greedy(dec, mem, mask, 5)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_greedy_equals_forward_loop_and_beam_scores_higher(kind):
    dec = make(kind, seed=3).eval()
    mem, mask = memory(seed=4)
    hf = dec.generate(mem, mask, GenerationOptions(num_beams=1, max_length=6))
    assert hf == greedy(dec, mem, mask, 6)
    beams = dec.generate(mem, mask, GenerationOptions(num_beams=3, max_length=6))
    gains = [beam_score(dec, mem[i:i + 1], mask[i:i + 1], beams[i], 6)
             - beam_score(dec, mem[i:i + 1], mask[i:i + 1], hf[i], 6) for i in range(3)]
    assert min(gains) >= -1e-5 and max(gains) > 1e-3, gains  # never worse, and better somewhere


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_hf_cross_freeze_trains_cross_attention_and_projection_only():
    dec = make("hf_cross", freeze=True)
    # per layer: q, k, v, out dense 4 x (32*32 + 32) + LayerNorm 2*32 = 4288; 2 layers; projection 16*32 + 32
    assert trainable(dec) == 2 * 4288 + 544 == 9120
    assert all(".crossattention." in n for n, p in dec.lm.named_parameters() if p.requires_grad)
    dec.train()
    assert not dec.lm.bert.encoder.layer[0].attention.training
    assert dec.lm.bert.encoder.layer[0].crossattention.training and dec.proj.training


def test_prefix_lm_freeze_and_trainable_last_counts():
    dec = make("mlp", freeze=True)
    mapper = (16 * 48 + 48) + (48 * 96 + 96)  # ClipCap MLP: 16 -> 32*3/2 -> 32*3
    assert trainable(dec) == trainable(dec.mapper) == mapper == 5520
    dec = make("mlp", freeze=True, trainable_last=1)
    # a GPT-2 block, width 32: ln_1 64, c_attn 32*96+96, attn c_proj 32*32+32, ln_2 64, c_fc 32*128+128, c_proj 128*32+32
    assert trainable(dec) == mapper + 64 + 3168 + 1056 + 64 + 4224 + 4128 == 18224
    assert {n.split(".")[2] for n, p in dec.lm.named_parameters() if p.requires_grad} == {"1"}
    dec.train()
    assert not dec.lm.transformer.h[0].training and dec.lm.transformer.h[1].training and dec.mapper.training
    assert trainable(make("mlp")) == sum(p.numel() for p in make("mlp").parameters())
    with pytest.raises(MMFuseError, match="decoder.trainable_last=1 needs decoder.freeze=true"):
        make("mlp", trainable_last=1)
    with pytest.raises(MMFuseError, match="decoder.mapper_heads=3"):
        make("transformer", mapper_heads=3)
    with pytest.raises(MMFuseError, match="decoder.mapper='qformer'"):
        make("qformer")


def test_hf_cross_refuses_a_family_without_cross_attention():
    with pytest.raises(MMFuseError, match="decoder.name_or_path=.*decoder=prefix_lm"):
        HFCrossDecoder(D, name_or_path=str(MINILM), pretrained=False, config=LLAMA)


@pytest.mark.parametrize("cls", [HFCrossDecoder, PrefixLMDecoder])
def test_offline_error_is_one_line_and_fast(cls):
    start = time.monotonic()
    with pytest.raises(MMFuseError) as err:
        cls(D, name_or_path="nobody-here/no-such-model")
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert "\n" not in msg and "decoder.name_or_path=<a local folder" in msg and "no-such-model" in msg
    with pytest.raises(MMFuseError, match="decoder.name_or_path='/no/such/folder' looks like a folder"):
        cls(D, name_or_path="/no/such/folder")
    with pytest.raises(MMFuseError, match="decoder.tokenizer='nobody-here/no-tokenizer'"):
        cls(D, name_or_path=str(MINILM), tokenizer="nobody-here/no-tokenizer", pretrained=False,
            config=GPT2 if cls is PrefixLMDecoder else BERT)


def test_hf_cross_real_minilm():
    """The real all-MiniLM-L6-v2 (a BertModel checkpoint) as a cross-attention decoder."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    dec = HFCrossDecoder(D, name_or_path=str(MINILM), freeze=True)
    new = {n.replace("bert.encoder.layer.0.", "L.") for n in dec.new_weights if "layer." not in n or ".0." in n}
    assert new == {
        "L.crossattention.self.query.weight", "L.crossattention.self.query.bias",
        "L.crossattention.self.key.weight", "L.crossattention.self.key.bias",
        "L.crossattention.self.value.weight", "L.crossattention.self.value.bias",
        "L.crossattention.output.dense.weight", "L.crossattention.output.dense.bias",
        "L.crossattention.output.LayerNorm.weight", "L.crossattention.output.LayerNorm.bias",
        "cls.predictions.bias", "cls.predictions.decoder.bias",
        "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
    }
    assert len(dec.new_weights) == 6 * 10 + 6
    saved = load_file(str(MINILM / "model.safetensors"))
    key = next(k for k in saved if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert torch.equal(dec.lm.bert.encoder.layer[0].attention.self.query.weight, saved[key])  # pretrained
    # trainable: 6 x cross-attention (4 x (384*384 + 384) + 2*384) + projection 16*384 + 384
    #            + the new LM head transform (384*384 + 384 + 2*384) and output bias 30522
    assert trainable(dec) == 6 * 592128 + 6528 + 148608 + 30522 == 3738426
    assert sum(p.numel() for p in dec.parameters()) == 26297274 + 6528
    mem, mask = memory()
    losses = fit(dec, mem, mask, steps=10, lr=1e-3)
    assert losses[-1] < losses[0] / 2, losses
    assert dec.generate(mem, mask, GenerationOptions(max_length=4)) == greedy(dec, mem, mask, 4)
    assert math.isfinite(losses[-1])


def test_left_pack_moves_padding_first_keeping_order():
    from mmfuse.decoders.prefix_lm import left_pack, positions

    x = torch.arange(5.0).view(1, 5, 1)
    mask = torch.tensor([[True, False, True, True, False]])
    packed, pmask = left_pack(x, mask)
    assert packed.flatten().tolist() == [1.0, 4.0, 0.0, 2.0, 3.0]
    assert pmask.tolist() == [[False, False, True, True, True]]
    assert positions(mask.long()).tolist() == [[0, 1, 1, 2, 1]]


@pytest.mark.parametrize("name", ["hf_cross", "prefix_lm"])
def test_configs_instantiate_as_the_builder_does(name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "decoder" / f"{name}.yaml")
    assert cfg.name_or_path == {"hf_cross": "bert-base-uncased", "prefix_lm": "gpt2"}[name]
    cfg.merge_with({"name_or_path": str(MINILM), "pretrained": False,
                    "config": BERT if name == "hf_cross" else GPT2,
                    **({"tokenizer": str(MINILM), "mapper": "transformer", "mapper_heads": 2,
                        "mapper_layers": 1} if name == "prefix_lm" else {})})
    dec = instantiate(cfg, memory_dim=D).eval()
    mem, mask = memory()
    ids, tmask = dec.tokenizer.encode(CAPTIONS, dec.max_length)
    assert dec(mem, mask, ids, tmask).shape == (3, 9, 30522)


def test_hf_cross_gpt2_family():
    """GPT-2 with add_cross_attention: the same contract; freeze keeps cross-attention + its LayerNorm."""
    torch.manual_seed(0)
    dec = HFCrossDecoder(D, name_or_path="gpt2", tokenizer=str(MINILM), pretrained=False, config=GPT2,
                         freeze=True).eval()
    # per layer: q_attn 32*32+32, c_attn (k, v) 32*64+64, c_proj 32*32+32, ln_cross_attn 64; projection 544
    assert trainable(dec) == 2 * (1056 + 2112 + 1056 + 64) + 544 == 9120
    mem, mask = memory()
    assert dec.generate(mem, mask, GenerationOptions(max_length=5)) == greedy(dec, mem, mask, 5)
