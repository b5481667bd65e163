"""The GPU fast path, checked on the CPU: trainer=gpu composes, its speed options reach the model
(channels_last, torch.compile, pinned memory), a run with them trains, and JPEGs decoded through the
device path equal the CPU decoder's output."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from conftest import FAST, assert_recalls_add_up, needs_shared
from mmfuse.builder import SPEED_KEYS, apply_speed_options, build_module, build_trainer
from mmfuse.data.images import ImageFiles
from mmfuse.datamodule import MMFuseDataModule
from mmfuse.errors import MMFuseError
from mmfuse.features.encode import image_batches
from mmfuse.model import FusionModel
from mmfuse.train import train
from mmfuse.types import EncoderOutput

ON_CPU = ("trainer=gpu", "trainer.accelerator=cpu")


@pytest.fixture(autouse=True)
def restore_matmul_precision():
    """trainer=gpu sets torch's global float32 matmul precision; later tests must not inherit it."""
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_gpu_trainer_has_the_fast_path_and_its_options_are_not_trainer_arguments(make_cfg):
    cfg = make_cfg("trainer=gpu")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.benchmark is True
    assert cfg.trainer.channels_last is True and cfg.trainer.compile is False
    assert cfg.data.pin_memory == "auto"
    cfg = make_cfg(*ON_CPU)
    module = build_module(cfg)
    trainer = build_trainer(cfg, module.task)  # would raise on an unknown Trainer argument
    assert trainer.precision == "bf16-mixed" and not set(SPEED_KEYS) & set(vars(trainer))


def test_channels_last_applies_to_convolutional_image_encoders_only(make_cfg):
    cfg = make_cfg(*ON_CPU, "encoder.image=resnet18", "encoder.image.pretrained=false")
    model = build_module(cfg).model
    conv = model.image_encoder.body[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.shape == (64, 3, 7, 7)
    assert model.image_memory_format is torch.channels_last
    seen = []
    model.image_encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.encode_image({"image": torch.zeros(2, 3, 32, 32)})
    assert seen[0].is_contiguous(memory_format=torch.channels_last)

    cfg = make_cfg(*ON_CPU, "encoder.image=vit_b_16", "encoder.image.pretrained=false", subdir="vit")
    assert build_module(cfg).model.image_memory_format is torch.contiguous_format


@pytest.mark.slow
def test_a_run_on_the_fast_path_trains_and_its_checkpoint_keeps_plain_keys(make_cfg):
    cfg = make_cfg(*FAST, *ON_CPU, "trainer.compile={backend:eager}", "encoder.image=resnet18",
                   "encoder.image.pretrained=false", "data.image_size=32", "test=false")
    results = train(cfg)
    assert results["status"] == "completed" and results["steps"] == 8  # 512 pairs / 64
    assert math.isfinite(results["metrics"]["val/loss"])
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    plain = build_module(cfg)  # compiled too, but nn.Module.compile keeps the state dict keys
    # the weights the run started from (same seed): training moved every parameter (none left out by compile),
    # by a few percent in 8 steps (another initialisation would differ by ~140 %)
    unchanged = [name for name, p in plain.named_parameters() if torch.equal(p.detach(), ckpt["state_dict"][name])]
    assert not unchanged, unchanged
    for name in ("model.fusion.proj_image.weight", "model.image_encoder.body.0.weight"):
        start = dict(plain.named_parameters())[name].detach()
        assert 0 < float((ckpt["state_dict"][name] - start).norm() / start.norm()) < 0.5, name
    assert plain.model.fusion._compiled_call_impl is not None
    assert set(ckpt["state_dict"]) == set(plain.state_dict()) and not any("_orig_mod" in k for k in ckpt["state_dict"])
    assert ckpt["state_dict"]["model.image_encoder.body.0.weight"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.shared
@pytest.mark.parametrize("fusion", ["mul", "cross_attention"])
def test_end_of_epoch_retrieval_scores_in_bf16_autocast(make_cfg, fusion):
    """On COCO the ITM task scores every image x caption of the validation split when the epoch ends,
    outside the steps; under bf16-mixed its stored bf16 features must meet the model inside autocast
    too (before the fix: "mat1 and mat2 must have the same dtype")."""
    root = needs_shared("data", "coco_mini")
    cfg = make_cfg(*ON_CPU, "data=coco_captions", f"data.root={root}", "data.num_train=16", "data.num_val=12",
                   "data.num_workers=0", "data.batch_size=8", "data.image_size=32", "encoder.image.freeze=true",
                   "encoder.text.freeze=true", "cache=off", "trainer.max_epochs=1", "test=false",
                   "callbacks.progress_bar=null", f"fusion={fusion}", subdir=fusion)
    results = train(cfg)
    metrics = results["metrics"]
    assert results["status"] == "completed"
    assert (results["data"]["val"]["images"], results["data"]["val"]["captions"]) == (12, 60)
    assert_recalls_add_up(metrics, images=12, texts=60)


def test_the_feature_cache_encodes_many_batches_in_bf16_autocast(make_cfg, tmp_path):
    """trainer=gpu with frozen encoders: the cache encodes inside Lightning's autocast context, one
    context for all batches (before the fix the second batch failed: the context cannot be re-entered)."""
    cfg = make_cfg(*FAST, *ON_CPU, "encoder.image.freeze=true", "encoder.text.freeze=true", "cache.batch_size=48",
                   f"cache.dir={tmp_path / 'features'}", "test=false")
    results = train(cfg)
    assert results["status"] == "completed"
    built = {f"{split}/{side}": info["status"] for split, sides in results["feature_cache"].items()
             for side, info in sides.items()}
    assert built == {f"{split}/{side}": "built" for split in ("train", "val", "test") for side in ("image", "text")}
    assert results["encoded_samples"]["image"] == 256 + 128 + 128  # debug=fast's three splits, each > 48


def test_the_image_transform_runs_on_the_device_of_its_input():
    """GPU JPEG decoding hands the transform images already on the GPU: its mean and std must follow
    (the meta device stands in for a GPU here: any device but the CPU)."""
    from mmfuse.encoders.transforms import ImageTransform
    from mmfuse.features.encode import decode_on

    transform = ImageTransform(16, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2])
    out = transform(torch.zeros(3, 8, 8, dtype=torch.uint8, device="meta"))
    assert out.device.type == "meta" and out.shape == (3, 16, 16)
    assert decode_on(torch.device("meta"), transform)
    assert torch.allclose(transform(torch.full((3, 16, 16), 255, dtype=torch.uint8))[:, 0, 0],
                          torch.tensor([2.5, 3.0, 3.5]))


@pytest.mark.parametrize("compile_arg, graphs_after", [("{backend:eager}", "same"), ("{backend:eager,dynamic:false}", "more")])
def test_compiled_encoders_compile_once_for_every_batch_size_and_text_length(make_cfg, compile_arg, graphs_after):
    """Text batches are as long as their longest caption and an epoch's last batch is smaller: with
    trainer.compile the batch and length dimensions are marked dynamic, so new shapes reuse the first
    graphs (image encoder, text encoder, fusion); a compile mapping that sets ``dynamic`` turns the marks
    off, and each new shape then recompiles (the check that the count can fail)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = make_cfg(*ON_CPU, f"trainer.compile={compile_arg}", "encoder.image=resnet18", "encoder.image.pretrained=false",
                   "fusion=cross_attention")
    model = build_module(cfg).model
    assert model.dynamic_shapes is (graphs_after == "same")
    graphs = []
    for batch, length in [(8, 5), (8, 9), (8, 12), (5, 7), (3, 4)]:
        out = model({"image": torch.randn(batch, 3, 32, 32), "input_ids": torch.randint(1, 40, (batch, length)),
                     "attention_mask": torch.ones(batch, length, dtype=torch.long)})
        out.pow(2).mean().backward()
        assert out.shape[0] == batch
        graphs.append(counters["stats"]["unique_graphs"])
    torch._dynamo.reset()
    assert graphs[0] == 3  # image encoder, text encoder, fusion
    assert (graphs[-1] == graphs[0]) is (graphs_after == "same") and graphs == sorted(graphs)


@pytest.mark.shared
def test_compiled_text_is_padded_to_a_multiple_of_8_inside_the_text_encoder_only(make_cfg):
    """With trainer.compile, the text encoder gets masked padding up to a multiple of 8 tokens (GPU
    kernels compiled for 8-aligned lengths recompiled for the others); what it returns is cut back to
    the batch's length, and a BERT-architecture encoder (MiniLM) gives the same vectors as unpadded."""
    minilm = needs_shared("weights", "all-MiniLM-L6-v2")
    cfg = make_cfg(*ON_CPU, "trainer.compile={backend:eager}", "encoder.text=minilm",
                   f"encoder.text.name_or_path={minilm}", "encoder.text.pretrained=false")
    model = build_module(cfg).model.eval()
    batch = model.text_encoder.tokenizer(["a dog on a red skateboard", "two cats"])
    length = batch["input_ids"].shape[1]
    assert length % 8 != 0
    seen = []
    model.text_encoder.register_forward_pre_hook(lambda m, args: seen.append(args))
    with torch.no_grad():
        model.dynamic_shapes = False
        plain = model.encode_text(batch)
        model.dynamic_shapes = True
        padded = model.encode_text(batch)
    assert [a[0].shape[1] for a in seen] == [length, -(-length // 8) * 8]
    ids, mask = seen[1]
    assert (ids[:, length:] == model.text_encoder.tokenizer.tokenizer.pad_token_id).all() and not mask[:, length:].any()
    assert padded.tokens.shape[1] == padded.mask.shape[1] == length and torch.equal(padded.mask, plain.mask)
    torch.testing.assert_close(padded.pooled, plain.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.tokens[plain.mask], plain.tokens[plain.mask], atol=1e-5, rtol=1e-5)


def test_compile_padding_stops_at_the_tokenizers_max_length():
    tokenizer = SimpleNamespace(max_length=20)
    model = FusionModel(torch.nn.Identity(), SimpleNamespace(tokenizer=tokenizer), torch.nn.Identity())
    assert model.text_pad_id == 0
    assert model._pad_text(torch.ones(2, 13, dtype=torch.long), torch.ones(2, 13))[0].shape == (2, 16)
    assert model._pad_text(torch.ones(2, 19, dtype=torch.long), torch.ones(2, 19))[0].shape == (2, 20)  # not 24
    assert model._pad_text(torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16))[0].shape == (2, 16)


def test_a_compiled_run_builds_the_feature_cache_of_frozen_encoders(make_cfg, tmp_path):
    """Frozen encoders with trainer.compile: the cache sizes its token arrays from the longest text; the
    compile padding must not make a batch longer than that (before the fix: "gave 8 tokens for a
    batch, more than the 7 of the first batch")."""
    cfg = make_cfg(*FAST, *ON_CPU, "trainer.compile={backend:eager}", "encoder.image.freeze=true",
                   "encoder.text.freeze=true", "fusion=cross_attention", f"cache.dir={tmp_path / 'features'}",
                   "test=false")
    results = train(cfg)
    assert results["status"] == "completed"
    assert {info["status"] for sides in results["feature_cache"].values() for info in sides.values()} == {"built"}


def test_bad_speed_options_name_the_field(make_cfg):
    module = build_module(make_cfg(*FAST))
    with pytest.raises(MMFuseError, match="trainer.compile='fastest'"):
        apply_speed_options(module, {"compile": "fastest"})
    with pytest.raises(MMFuseError, match="trainer.channels_last='yes'"):
        apply_speed_options(module, {"channels_last": "yes"})


def test_pin_memory_auto_pins_only_for_a_cuda_trainer():
    dm = MMFuseDataModule(pin_memory="auto")
    assert dm._pin() is False  # no trainer
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    assert dm._pin() is True
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    assert dm._pin() is False
    assert MMFuseDataModule(pin_memory=True)._pin() is True
    with pytest.raises(MMFuseError, match="data.pin_memory='yes'"):
        MMFuseDataModule(pin_memory="yes")


def test_cached_float16_features_reach_the_fusion_as_float32():
    model = FusionModel(torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity())
    out = model.encode_image({"image_features": EncoderOutput(torch.ones(2, 3, dtype=torch.float16),
                                                              torch.ones(2, 1, 3, dtype=torch.float16),
                                                              torch.ones(2, 1, dtype=torch.bool))})
    assert out.pooled.dtype == out.tokens.dtype == torch.float32 and out.mask.dtype == torch.bool
    assert model.encoded_samples == {"image": 0, "text": 0}


def test_the_device_decode_path_gives_the_cpu_decoders_pixels(tmp_path):
    """Through 2 DataLoader workers, JPEGs and a PNG (decoded by the workers) among them; what the
    workers send holds no tensors (many small shared tensors broke the loader on a GPU machine)."""
    from PIL import Image

    from mmfuse.features.encode import _Encoded

    folder = needs_shared("data", "coco_mini", "val2017")
    files = sorted(folder.glob("*.jpg"))[:6]
    Image.open(files[2]).convert("RGB").save(tmp_path / "third.png")
    store = ImageFiles([*files[:2], tmp_path / "third.png", *files[3:]])
    items = [_Encoded(store)[i] for i in range(len(store))]
    assert [kind for kind, _ in items] == ["jpeg", "jpeg", "pixels", "jpeg", "jpeg", "jpeg"]
    assert not any(isinstance(data, torch.Tensor) for _, data in items)

    def transform(x: torch.Tensor) -> torch.Tensor:  # works on any device, fixed output size
        return torch.nn.functional.interpolate(x[None].float(), size=(48, 48), mode="bilinear")[0] / 255

    device = [(rows, x) for rows, x in image_batches(store, transform, 4, 2, torch.device("cpu"), True)]
    cpu = [(rows, x) for rows, x in image_batches(store, transform, 4, 0, torch.device("cpu"), False)]
    assert [r.tolist() for r, _ in device] == [[0, 1, 2, 3], [4, 5]]
    for (_, a), (_, b) in zip(device, cpu):
        assert a.shape == b.shape and torch.equal(a, b)
    assert np.isfinite(torch.cat([x for _, x in device]).numpy()).all()
