"""Pretrained encoders through the real loading code: torchvision weights from a TORCH_HOME folder,
a Hugging Face folder, offline failures, partial fine-tuning, and the ResNet-50 / ViT-B/16 / BERT-base
architectures with random weights (no such weights can be had offline)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import needs_shared
from mmfuse.encoders.hf_text import HFTextEncoder
from mmfuse.encoders.torchvision_image import TorchvisionImageEncoder, host_reachable
from mmfuse.errors import MMFuseError

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
# COCO val2017 photos that ImageNet MobileNetV2 recognises with confidence, and the class it must name
PHOTOS = {"000000217285.jpg": "ballplayer", "000000011813.jpg": "tripod", "000000062554.jpg": "broccoli",
          "000000406129.jpg": "racket", "000000328683.jpg": "parking meter"}


@pytest.fixture
def torch_home(monkeypatch) -> Path:
    home = needs_shared("weights", "torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_mobilenet_v2_imagenet_weights_from_torch_home_classify_real_photos(torch_home):
    enc = TorchvisionImageEncoder("mobilenet_v2", pretrained="IMAGENET1K_V1", freeze=True)
    state = torch.load(torch_home / "hub" / "checkpoints" / MOBILENET_FILE, weights_only=True)
    assert torch.equal(enc.body[0][0].weight, state["features.0.0.weight"])
    assert isinstance(enc.transform, torchvision.transforms._presets.ImageClassification)
    assert enc.transform.crop_size == [224] and enc.transform.resize_size == [256]
    assert enc.out_dim == 1280 and enc.fully_frozen and not enc.training
    # the pooled feature is what the ImageNet classifier reads: it must name the photo's object
    classifier = torchvision.models.mobilenet_v2(weights=None).classifier.eval()
    classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")})
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    from mmfuse.data.images import decode_file

    folder = needs_shared("data", "coco_mini", "val2017")
    images = torch.stack([enc.transform(decode_file(folder / name)) for name in PHOTOS])
    with torch.no_grad():
        out = enc(images)
        top1 = classifier(out.pooled).argmax(1)
    assert [categories[i] for i in top1] == list(PHOTOS.values())
    assert out.tokens.shape == (5, 49, 1280) and out.mask.all()  # the 7x7 grid of the last conv layer
    assert torch.allclose(out.tokens.mean(1), out.pooled, atol=1e-6)


@pytest.mark.timeout(120)  # a download that waits for the network would hang here
def test_pretrained_true_is_the_default_weights_and_fails_fast_offline_naming_the_fixes(torch_home):
    """torchvision's default for mobilenet_v2 is IMAGENET1K_V2, which is not in ../shared: offline, the
    real loading code must give up at once and say why and how to fix it."""
    weights = torchvision.models.MobileNet_V2_Weights.DEFAULT
    if host_reachable(weights.url):
        pytest.skip("download.pytorch.org is reachable here: the offline path cannot be exercised")
    with pytest.raises(MMFuseError) as err:
        TorchvisionImageEncoder("mobilenet_v2", pretrained=True)
    msg = str(err.value)
    assert "MobileNet_V2_Weights.IMAGENET1K_V2" in msg and str(torch_home / "hub" / "checkpoints") in msg
    assert "encoder.image.pretrained=false" in msg and "encoder.image.pretrained=<path" in msg


def test_offline_failure_does_not_wait_for_a_silent_network(tmp_path, monkeypatch):
    """A network that drops packets: the reachability probe has a 3 s timeout, and nothing retries."""
    calls = []

    def blackhole(address, timeout=None, *args, **kwargs):
        calls.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", blackhole)
    with pytest.raises(MMFuseError, match="unreachable"):
        TorchvisionImageEncoder("resnet18", pretrained=True, weights_dir=str(tmp_path))
    assert calls == [3.0]  # one probe with the 3 s timeout, no retry, no download attempt


def test_weights_from_a_local_state_dict_and_bad_names(tmp_path, torch_home):
    reference = TorchvisionImageEncoder("mobilenet_v2", pretrained="IMAGENET1K_V1")
    net = torchvision.models.mobilenet_v2(weights=None)
    net.load_state_dict(torch.load(torch_home / "hub" / "checkpoints" / MOBILENET_FILE, weights_only=True))
    torch.save(net.state_dict(), tmp_path / "mine.pt")
    local = TorchvisionImageEncoder("mobilenet_v2", pretrained=str(tmp_path / "mine.pt"), preprocess="IMAGENET1K_V1")
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), local.state_dict().values()))
    assert repr(local.transform) == repr(reference.transform)  # a local copy of V1 with V1's preprocessing
    default = TorchvisionImageEncoder("mobilenet_v2", pretrained=str(tmp_path / "mine.pt"), load_weights=False)
    assert default.transform.resize_size == [232]  # auto: the default weights' (V2) recipe
    with pytest.raises(MMFuseError, match="preprocess='IMAGENET1K_V7' is not a weights name"):
        TorchvisionImageEncoder("mobilenet_v2", preprocess="IMAGENET1K_V7")
    resized = TorchvisionImageEncoder("mobilenet_v2", pretrained=str(tmp_path / "mine.pt"), preprocess="resize",
                                      image_size=96)
    assert resized.transform(torch.zeros(3, 50, 70, dtype=torch.uint8)).shape == (3, 96, 96)
    with pytest.raises(MMFuseError, match="not a weights name of mobilenet_v2"):
        TorchvisionImageEncoder("mobilenet_v2", pretrained="IMAGENET1K_V9")
    with pytest.raises(MMFuseError, match="is not a file"):
        TorchvisionImageEncoder("mobilenet_v2", pretrained=str(tmp_path / "missing.pt"))
    broken = tmp_path / "cache" / MOBILENET_FILE
    broken.parent.mkdir()
    broken.write_bytes(b"half a file")
    with pytest.raises(MMFuseError, match="cannot read .*delete it"):
        TorchvisionImageEncoder("mobilenet_v2", pretrained="IMAGENET1K_V1", weights_dir=str(broken.parent))
    no_weights = TorchvisionImageEncoder("mobilenet_v2", pretrained="IMAGENET1K_V1", load_weights=False)
    assert not torch.equal(no_weights.body[0][0].weight, reference.body[0][0].weight)  # a checkpoint will fill it


def test_partial_fine_tuning_keeps_frozen_blocks_fixed(torch_home):
    enc = TorchvisionImageEncoder("mobilenet_v2", pretrained="IMAGENET1K_V1", freeze=True, trainable_last=2)
    blocks = enc.blocks()
    assert len(blocks) == 19
    trainable = [any(p.requires_grad for p in b.parameters()) for b in blocks]
    assert trainable == [False] * 17 + [True] * 2
    enc.train()
    assert blocks[-1].training and not blocks[0].training  # frozen BatchNorm keeps its statistics
    before = blocks[3].conv[0][1].running_mean.clone()
    enc(torch.randn(2, 3, 64, 64)).pooled.sum().backward()
    assert torch.equal(before, blocks[3].conv[0][1].running_mean)
    assert blocks[-1][0].weight.grad is not None and blocks[0][0].weight.grad is None


def test_resnet50_and_vit_b_16_architectures_with_random_weights():
    resnet = TorchvisionImageEncoder("resnet50", pretrained=False, freeze=True, trainable_last=1, image_size=224)
    out = resnet(resnet.transform(torch.zeros(1, 3, 240, 320, dtype=torch.uint8)))
    assert resnet.out_dim == 2048 and out.tokens.shape == (1, 49, 2048)
    assert {n.split(".")[1] for n, p in resnet.named_parameters() if p.requires_grad} == {"7"}  # layer4
    vit = TorchvisionImageEncoder("vit_b_16", pretrained=False, trainable_last=1, freeze=True, image_size=224)
    out = vit(torch.randn(1, 3, 224, 224))
    assert vit.out_dim == 768 and out.tokens.shape == (1, 196, 768) and out.pooled.shape == (1, 768)
    trainable = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert trainable and all("encoder_layer_11" in n or "encoder.ln" in n for n in trainable)
    with pytest.raises(MMFuseError, match="multiple of the patch size"):
        TorchvisionImageEncoder("vit_b_16", image_size=100)


# -- text -------------------------------------------------------------------------------------------------


def test_minilm_from_a_local_folder_embeds_captions_by_meaning():
    folder = needs_shared("weights", "all-MiniLM-L6-v2")
    enc = HFTextEncoder(str(folder), pooling="mean", freeze=True, max_length=32)
    assert enc.out_dim == 384 and enc.model.pooler is None and len(enc.blocks()) == 6
    texts = ["A man riding a wave on top of a surfboard.", "A surfer rides a large ocean wave.",
             "A plate of broccoli and rice on a table."]
    batch = enc.tokenizer(texts)
    with torch.no_grad():
        out = enc(batch["input_ids"], batch["attention_mask"])
    u = torch.nn.functional.normalize(out.pooled, dim=-1)
    assert u[0] @ u[1] > 0.6 > 0.2 > u[0] @ u[2]
    # padding does not change a caption's embedding (mean over the real tokens only)
    alone = enc.tokenizer(texts[:1])
    with torch.no_grad():
        single = enc(alone["input_ids"], alone["attention_mask"]).pooled
    assert torch.allclose(single[0], out.pooled[0], atol=1e-5)
    assert enc.tokenizer(["word " * 100])["input_ids"].shape[1] == 32  # max_length


def bert_base_folder(tmp_path: Path) -> Path:
    from transformers import BertConfig

    minilm = needs_shared("weights", "all-MiniLM-L6-v2")
    folder = tmp_path / "bert-base-random"
    folder.mkdir()
    BertConfig().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    return folder


def test_bert_base_architecture_partial_fine_tuning(tmp_path):
    enc = HFTextEncoder(str(bert_base_folder(tmp_path)), pretrained=False, freeze=True, trainable_last=2)
    assert enc.out_dim == 768 and len(enc.blocks()) == 12
    trainable = {n.split(".")[3] for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"10", "11"}
    batch = enc.tokenizer(["a dog on a beach"])
    out = enc(batch["input_ids"], batch["attention_mask"])
    assert out.tokens.shape == (1, batch["input_ids"].shape[1], 768)


@pytest.mark.timeout(120)  # a hub lookup that waits for the network would hang here
def test_hub_id_offline_fails_at_once_naming_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(MMFuseError) as err:
        HFTextEncoder("bert-base-uncased")
    msg = str(err.value)
    assert "'bert-base-uncased'" in msg and str(tmp_path / "hf" / "hub") in msg and "name_or_path=<a local" in msg
    with pytest.raises(MMFuseError, match="looks like a folder"):
        HFTextEncoder("../no/such/folder")


def test_the_reachability_probe_goes_through_the_https_proxy(monkeypatch):
    from mmfuse.encoders.network import reachable

    seen = []

    def record(address, timeout=None, *args, **kwargs):
        seen.append((address, timeout))
        raise OSError("refused")

    monkeypatch.setattr(socket, "create_connection", record)
    for var in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert not reachable("https://download.pytorch.org/models/x.pth")
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert not reachable("https://download.pytorch.org/models/x.pth")
    monkeypatch.setenv("no_proxy", "huggingface.co")
    assert not reachable("https://huggingface.co")
    assert seen == [(("download.pytorch.org", 443), 3.0), (("proxy.example", 3128), 3.0), (("huggingface.co", 443), 3.0)]
