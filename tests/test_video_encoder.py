"""encoder.video: a frame encoder over T frames, then mean / max / transformer over time."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmfuse.encoders.tiny_cnn import TinyCNN
from mmfuse.encoders.torchvision_image import TorchvisionImageEncoder
from mmfuse.encoders.video import VideoEncoder
from mmfuse.errors import MMFuseError
from mmfuse.types import EncoderOutput

D, SIZE, CELLS = 16, 16, 16  # tiny_cnn width, image size, grid cells ((16 / 4)²)


def video_encoder(temporal: str = "mean", grid: bool = False, frame_freeze: bool = False, seed: int = 0,
                  **kwargs) -> VideoEncoder:
    torch.manual_seed(seed)
    frame = TinyCNN(width=D, image_size=SIZE, freeze=frame_freeze)
    return VideoEncoder(frame, temporal=temporal, grid=grid, max_frames=8, **kwargs)


def clips(b: int = 2, t: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temporal", ["mean", "max", "transformer"])
@pytest.mark.parametrize("grid", [False, True])
def test_shapes_and_masks(temporal, grid):
    enc = video_encoder(temporal, grid).eval()
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = enc(clips(), mask)
    tokens = 3 * CELLS if grid else 3
    assert enc.out_dim == D
    assert out.pooled.shape == (2, D) and out.tokens.shape == (2, tokens, D) and out.mask.shape == (2, tokens)
    expected = mask.repeat_interleave(CELLS, dim=1) if grid else mask
    assert torch.equal(out.mask, expected)
    assert torch.equal(enc(clips()).mask, torch.ones(2, tokens, dtype=torch.bool))  # no mask: all frames real


@pytest.mark.parametrize("temporal", ["mean", "max", "transformer"])
@pytest.mark.parametrize("grid", [False, True])
def test_padded_frames_change_nothing(temporal, grid):
    """Clips of 2 and 4 frames padded to 6 with junk give what each clip gives alone."""
    enc = video_encoder(temporal, grid).eval()
    short, long = clips(1, 2, seed=2), clips(1, 4, seed=3)
    junk = 100 * torch.randn(1, 4, 3, SIZE, SIZE)
    batch = torch.cat([torch.cat([short, junk], 1), torch.cat([long, junk[:, :2]], 1)])
    mask = torch.tensor([[True] * 2 + [False] * 4, [True] * 4 + [False] * 2])
    out = enc(batch, mask)
    for i, (clip, n) in enumerate([(short, 2), (long, 4)]):
        alone = enc(clip)
        real = n * CELLS if grid else n
        torch.testing.assert_close(out.pooled[i], alone.pooled[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(out.tokens[i, :real], alone.tokens[0], atol=1e-6, rtol=0)
        assert out.mask[i].sum() == real and out.mask[i, :real].all()


def test_padded_frames_change_nothing_in_training():
    """Padded frames are not encoded: in train mode they do not even enter BatchNorm's batch statistics."""
    enc = video_encoder("mean").train()
    video, mask = clips(2, 4), torch.tensor([[True, True, False, False], [True, True, True, False]])
    other = video.clone()
    other[~mask] = 50 * torch.randn(3, 3, SIZE, SIZE)
    torch.testing.assert_close(enc(video, mask).pooled, enc(other, mask).pooled, atol=1e-6, rtol=0)


def test_a_clip_without_real_frames_pools_to_zero():
    for temporal in ("mean", "max", "transformer"):
        out = video_encoder(temporal).eval()(clips(2, 3), torch.tensor([[False] * 3, [True] * 3]))
        assert torch.equal(out.pooled[0], torch.zeros(D)) and out.pooled[1].abs().sum() > 0, temporal


def test_mean_and_max_are_the_frames_mean_and_max_and_ignore_order():
    video = clips(2, 5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    for temporal, reduce in (("mean", lambda v: v.mean(1)), ("max", lambda v: v.amax(1))):
        enc = video_encoder(temporal).eval()
        per_frame = torch.stack([enc.frame(video[:, t]).pooled for t in range(5)], 1)  # [B, T, D]
        pooled = enc(video).pooled
        torch.testing.assert_close(pooled, reduce(per_frame), atol=1e-6, rtol=0)
        torch.testing.assert_close(enc(video[:, perm]).pooled, pooled, atol=1e-6, rtol=0)
        assert list(enc.parameters()) == list(enc.frame.parameters())  # no time positions, no parameters


def test_temporal_forward_pools_real_frames_only_by_the_formulas():
    """Negative frame vectors (a ViT's can be): padding's zeros must not win the max."""
    v = -1 - torch.rand(2, 4, D, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    frames = EncoderOutput(v * mask[..., None], torch.zeros(2, 4, 1, D), mask[..., None])
    mean, most = video_encoder("mean").temporal_forward(frames, mask), video_encoder("max").temporal_forward(frames, mask)
    torch.testing.assert_close(mean.pooled, torch.stack([v[0, :3].mean(0), v[1, 0]]), atol=1e-6, rtol=0)
    assert torch.equal(most.pooled, torch.stack([v[0, :3].amax(0), v[1, 0]]))
    assert torch.equal(mean.tokens, frames.pooled) and torch.equal(mean.mask, mask)


def test_grid_tokens_are_the_frame_tokens_with_time_positions_for_the_transformer():
    video = clips(2, 3)
    for temporal in ("mean", "transformer"):
        enc = video_encoder(temporal, grid=True).eval()
        frames = torch.stack([enc.frame(video[:, t]).tokens for t in range(3)], 1)  # [B, T, N, D]
        if temporal == "transformer":
            frames = frames + enc.position.weight[:3, None]
        torch.testing.assert_close(enc(video).tokens, frames.flatten(1, 2), atol=1e-6, rtol=0)


def test_transformer_knows_frame_order():
    enc = video_encoder("transformer").eval()
    video = clips(2, 5)
    moved = (enc(video[:, torch.tensor([3, 0, 4, 1, 2])]).pooled - enc(video).pooled).abs().amax()
    assert moved > 1e-3


def test_the_two_stages_give_forward():
    enc = video_encoder("transformer", grid=True).eval()
    video, mask = clips(2, 4), torch.tensor([[True] * 4, [True, True, False, False]])
    frames = enc.encode_frames(video, mask)
    assert frames.pooled.shape == (2, 4, D) and frames.tokens.shape == (2, 4, CELLS, D)
    assert torch.equal(frames.pooled[1, 2:], torch.zeros(2, D)) and not frames.mask[1, 2:].any()
    for a, b in zip(enc.temporal_forward(frames, mask), enc(video, mask), strict=True):
        assert torch.equal(a, b)


def test_frozen_frame_encoder_gets_no_gradient_the_transformer_does():
    enc = video_encoder("transformer", frame_freeze=True).train()
    enc(clips()).pooled.square().sum().backward()
    assert all(p.grad is None for p in enc.frame.parameters())
    temporal = [(n, p) for n, p in enc.named_parameters() if not n.startswith("frame.")]
    assert len(temporal) == 1 + 14  # time positions + (12 tensors per layer) + final LayerNorm's 2
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in temporal), \
        [n for n, p in temporal if p.grad is None or p.grad.abs().sum() == 0]
    assert not enc.frame.training and not enc.fully_frozen


def test_fully_frozen():
    assert video_encoder("mean", frame_freeze=True).fully_frozen  # what the feature cache needs
    assert video_encoder("max", frame_freeze=True).fully_frozen
    assert not video_encoder("mean").fully_frozen
    assert not video_encoder("transformer", frame_freeze=True).fully_frozen
    enc = video_encoder("transformer", freeze=True).train()
    assert enc.fully_frozen and not enc.temporal_model.training and not enc.frame.training


def test_trainable_last_counts_from_the_transformer_back_into_the_frame_encoder():
    frame_blocks = 3  # tiny_cnn's three conv stages
    enc = video_encoder("transformer", layers=2, freeze=True, trainable_last=1)
    assert len(enc.blocks()) == frame_blocks + 2
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in enc.named_parameters() if n.startswith(("temporal_model.layers.1.",
                                                                                "temporal_model.norm."))}
    enc = video_encoder("transformer", layers=2, freeze=True, trainable_last=3)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"frame.stages", "temporal_model.layers", "temporal_model.norm", "position.weight"}
    assert [p.requires_grad for p in enc.frame.stages.parameters()] == [False] * 6 + [True] * 3


@pytest.mark.parametrize("layers", [1, 2])
def test_parameter_count_is_the_frame_encoders_plus_the_closed_form(layers):
    frame_params = sum(p.numel() for p in TinyCNN(width=D, image_size=SIZE).parameters())
    for temporal in ("mean", "max"):
        assert sum(p.numel() for p in video_encoder(temporal).parameters()) == frame_params
    enc = video_encoder("transformer", layers=layers)
    # max_frames·D + layers·(12D² + 13D) + 2D, max_frames = 8, D = 16
    own = sum(p.numel() for p in enc.parameters()) - frame_params
    assert own == 8 * 16 + layers * (12 * 16**2 + 13 * 16) + 2 * 16 == {1: 3440, 2: 6720}[layers]


def test_errors_name_the_key_and_the_fix():
    with pytest.raises(MMFuseError, match=r"encoder.video.temporal='lstm': expected one of mean, max, transformer"):
        video_encoder("lstm")
    with pytest.raises(MMFuseError, match=r"encoder.video.heads=3 does not divide the frame encoder's width 16"):
        video_encoder("transformer", heads=3)
    with pytest.raises(MMFuseError, match=r"max_frames=8 but a clip has 9 frames; raise encoder.video.max_frames"):
        video_encoder("transformer")(clips(1, 9))
    with pytest.raises(MMFuseError, match=r"expects video \[B, T, 3, H, W\]; got \(2, 3, 16, 16\)"):
        video_encoder()(torch.zeros(2, 3, SIZE, SIZE))
    with pytest.raises(MMFuseError, match=r"frame mask is \(2, 2\), the video \(2, 3, 3, 16, 16\)"):
        video_encoder()(clips(), torch.ones(2, 2, dtype=torch.bool))


def test_transform_is_the_frame_transform_frame_by_frame():
    frames = torch.randint(0, 256, (3, 3, 20, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tiny = video_encoder()
    out = tiny.transform(frames)
    assert out.shape == (3, 3, SIZE, SIZE) and out.dtype == torch.float32
    assert torch.equal(out, torch.stack([tiny.frame.transform(f) for f in frames]))
    frame = TorchvisionImageEncoder("mobilenet_v2", preprocess="IMAGENET1K_V1")  # resize 256, crop 224
    enc = VideoEncoder(frame)
    out = enc.transform(frames)
    assert out.shape == (3, 3, 224, 224)
    assert torch.equal(out, torch.stack([frame.transform(f) for f in frames]))
    assert repr(enc.transform).startswith("FrameTransform(ImageClassification(")
    with pytest.raises(MMFuseError, match=r"a clip's frames must be \[T, 3, H, W\]; got \(3, 20, 24\)"):
        enc.transform(frames[0])


def video_group(option: str) -> str:
    """``encoder.video=<option>`` (conf/train.yaml lists the group, default none)."""
    return f"encoder.video={option}"


def test_config_composes_and_instantiates(make_cfg):
    cfg = make_cfg(video_group("tiny_cnn"), "encoder.video.temporal=transformer", "encoder.video.frame.freeze=true",
                   "data.image_size=16")
    assert cfg.encoder.video.frame.image_size == 16  # ${data.image_size} resolves inside the frame config
    assert cfg.encoder.video.frame._target_ == cfg.encoder.image._target_ == "mmfuse.encoders.tiny_cnn.TinyCNN"
    enc = instantiate(cfg.encoder.video)
    assert isinstance(enc, VideoEncoder) and isinstance(enc.frame, TinyCNN)
    assert enc.temporal == "transformer" and enc.max_frames == 32 and enc.out_dim == 64
    assert enc.frame.fully_frozen and not enc.fully_frozen and not cfg.encoder.image.freeze
    assert enc(torch.zeros(2, 3, 3, 16, 16)).pooled.shape == (2, 64)


@pytest.mark.parametrize("option, arch", [("mobilenet_v2", "mobilenet_v2"), ("resnet50", "resnet50")])
def test_torchvision_video_configs_compose(make_cfg, option, arch):
    cfg = make_cfg(video_group(option), "encoder.image=resnet18")
    frame = cfg.encoder.video.frame
    assert frame.arch == arch and frame.image_size == cfg.data.image_size == 32 and frame.pretrained is False
    assert cfg.encoder.image.arch == "resnet18"  # the image encoder and the frame encoder are chosen apart
    assert make_cfg(video_group(option), "encoder.image@encoder.video.frame=tiny_cnn").encoder.video.frame._target_ \
        == "mmfuse.encoders.tiny_cnn.TinyCNN"


def test_mobilenet_video_config_instantiates(make_cfg):
    cfg = make_cfg(video_group("mobilenet_v2"), "encoder.video.temporal=max")
    enc = instantiate(cfg.encoder.video)
    assert isinstance(enc.frame, TorchvisionImageEncoder) and enc.frame.arch == "mobilenet_v2" and enc.out_dim == 1280


def test_none_means_no_video_encoder(make_cfg):
    assert OmegaConf.to_container(make_cfg(video_group("none")).encoder.video) == {"_target_": None}
