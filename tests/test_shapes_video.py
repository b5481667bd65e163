"""The embedded video benchmark: clips true to their captions, motion exact, negatives false, typed,
unrecognisable from one modality alone, and direction / order negatives unsolvable without time."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmfuse.data.shapes.scene import COLORS, SHAPES
from mmfuse.data.shapes_video import datamodule as datamodule_module
from mmfuse.data.shapes_video.clip import (
    DIRECTIONS,
    MOTION,
    REVERSED,
    Clip,
    ClipCaption,
    Event,
    caption_is_true,
    check_geometry,
    default_step,
    describe,
    draw_clip,
    positions,
    sample_clip,
    start_range,
)
from mmfuse.data.shapes_video.datamodule import (
    ShapesVideoDataModule,
    frame_orders,
    make_pairs,
    negative_weights,
    render_split,
)
from mmfuse.data.shapes_video.negatives import NEGATIVE_TYPES, make_negative, negative_clip
from mmfuse.encoders.word_tokenizer import WordTokenizer
from mmfuse.errors import MMFuseError
from mmfuse.types import PAIR_TYPES

ROOT = Path(__file__).resolve().parents[1]

SIZE, FRAMES = 32, 8
STEP = default_step(SIZE)


def object_pixels(frame: np.ndarray) -> set[tuple[int, int]]:
    """``(x, y)`` of the pixels of the (one) object in a ``[3, H, W]`` frame: the background is N(30, 8),
    every colour has a channel far above 110."""
    ys, xs = np.nonzero(frame.max(0) > 110)
    return set(zip(xs.tolist(), ys.tolist(), strict=True))


def nearest_color(rgb: np.ndarray) -> str:
    return min(COLORS, key=lambda n: np.abs(rgb - np.array(COLORS[n])).sum())


def test_caption_text_and_a_fixed_clip():
    caption = ClipCaption("red", "circle", "left", "blue", "square", "up")
    assert caption.text() == "the red circle moves left, then the blue square moves up"
    clip = sample_clip(np.random.default_rng(0), SIZE, FRAMES)
    assert describe(clip).text() == "the purple square moves left, then the yellow circle moves left"
    assert (clip.events[0].x, clip.events[0].y, clip.events[1].x, clip.events[1].y) == (14.5, 22.5, 19.5, 18.5)
    assert caption_is_true(clip, describe(clip))
    assert STEP == 2 and start_range(SIZE) == (6, 25)


def test_each_object_moves_step_pixels_per_frame_during_its_own_half_only():
    rng = np.random.default_rng(1)
    for _ in range(100):
        clip = sample_clip(rng, SIZE, FRAMES)
        video = draw_clip(clip, SIZE, FRAMES, rng)
        assert video.shape == (FRAMES, 3, SIZE, SIZE) and video.dtype == np.uint8
        half = FRAMES // 2
        for i, event in enumerate(clip.events):
            dx, dy = MOTION[event.direction]
            frames = video[i * half:(i + 1) * half]
            pixels = [object_pixels(f) for f in frames]
            assert len(pixels[0]) >= 12, "the object is visible"
            for f, p in zip(frames, pixels, strict=True):
                assert nearest_color(f[:, [y for _, y in p], [x for x, _ in p]].T.mean(0)) == event.color
            for k in range(half - 1):  # the drawn shape is translated exactly, never cut by the border
                assert {(x + STEP * dx, y + STEP * dy) for x, y in pixels[k]} == pixels[k + 1]
            for x, y in positions(event, half, STEP):
                lo, hi = start_range(SIZE)
                assert lo + 0.5 <= x <= hi + 0.5 and lo + 0.5 <= y <= hi + 0.5
        assert len(np.unique(video[:half].reshape(half, -1), axis=0)) == half, "every frame of an event differs"


def test_motion_centre_exact_for_a_symmetric_shape():
    clip = Clip((Event("red", "square", "right", 10.5, 12.5, 4.5), Event("blue", "circle", "up", 20.5, 24.5, 4.5)))
    video = draw_clip(clip, SIZE, FRAMES, np.random.default_rng(0))
    centres = [np.mean(sorted(object_pixels(f)), axis=0) + 0.5 for f in video]
    assert [tuple(c) for c in centres] == [(10.5, 12.5), (12.5, 12.5), (14.5, 12.5), (16.5, 12.5),
                                           (20.5, 24.5), (20.5, 22.5), (20.5, 20.5), (20.5, 18.5)]


def test_clips_need_even_frames_that_fit():
    with pytest.raises(MMFuseError, match=r"data.frames=7: needs an even number >= 4"):
        check_geometry(7, SIZE, STEP)
    with pytest.raises(MMFuseError, match=r"data.frames=2: needs an even number >= 4"):
        check_geometry(2, SIZE, STEP)
    check_geometry(20, SIZE, STEP)  # 9 steps of 2 px = 18 px within [6, 25]
    with pytest.raises(MMFuseError, match=r"data.frames=22 at data.image_size=32: an object moving 2 px per "
                                          r"frame for 11 frames leaves the frame\. Fix: fewer frames"):
        check_geometry(22, SIZE, STEP)


@pytest.mark.parametrize("kind", ["direction", "order"])
def test_time_negatives_describe_a_clip_with_the_same_multiset_of_frames(kind):
    """A model blind to frame order sees the same input for the true and the negative caption."""
    rng = np.random.default_rng(2)
    for seed in range(100):
        clip = sample_clip(rng, SIZE, FRAMES)
        negative = make_negative(kind, clip, describe(clip), [], rng)
        other = negative_clip(clip, negative, FRAMES, STEP)
        assert other is not None and caption_is_true(other, negative) and not caption_is_true(clip, negative)
        video = draw_clip(clip, SIZE, FRAMES, np.random.default_rng(seed))
        video_neg = draw_clip(other, SIZE, FRAMES, np.random.default_rng(seed))
        assert sorted(f.tobytes() for f in video) == sorted(f.tobytes() for f in video_neg)
        assert not np.array_equal(video, video_neg)
        half = FRAMES // 2
        if kind == "order":
            assert np.array_equal(video_neg, np.concatenate([video[half:], video[:half]]))
        else:
            which = 0 if negative.direction_a != clip.events[0].direction else 1
            flipped = video[which * half:(which + 1) * half][::-1]
            expected = np.concatenate([flipped, video[half:]] if which == 0 else [video[:half], flipped])
            assert np.array_equal(video_neg, expected)


def captions_and_negatives(kind: str, n: int, seed: int = 0) -> tuple[list[Clip], list[ClipCaption], list[ClipCaption]]:
    rng = np.random.default_rng(seed)
    clips = [sample_clip(rng, SIZE, FRAMES) for _ in range(n)]
    captions = [describe(c) for c in clips]
    return clips, captions, [make_negative(kind, c, t, captions, rng) for c, t in zip(clips, captions, strict=True)]


@pytest.mark.parametrize("kind", NEGATIVE_TYPES)
def test_negatives_are_false_and_of_their_type(kind):
    clips, captions, negatives = captions_and_negatives(kind, 500)
    edited = Counter()
    for clip, caption, neg in zip(clips, captions, negatives, strict=True):
        assert not caption_is_true(clip, neg), (kind, caption.text(), neg.text())
        assert neg.color_a != neg.color_b and neg.shape_a != neg.shape_b, "a repeated word gives the label away"
        diff = [f for f in ClipCaption.__dataclass_fields__ if getattr(neg, f) != getattr(caption, f)]
        assert (negative_clip(clip, neg, FRAMES, STEP) is None) == (kind not in ("direction", "order"))
        if kind == "color":
            assert len(diff) == 1 and diff[0] in ("color_a", "color_b")
            assert getattr(neg, diff[0]) not in {caption.color_a, caption.color_b}
        elif kind == "shape":
            assert len(diff) == 1 and diff[0] in ("shape_a", "shape_b")
            assert getattr(neg, diff[0]) not in {caption.shape_a, caption.shape_b}
        elif kind == "direction":
            assert len(diff) == 1 and diff[0] in ("direction_a", "direction_b")
            assert getattr(neg, diff[0]) == REVERSED[getattr(caption, diff[0])]
        elif kind == "order":
            assert neg == ClipCaption(caption.color_b, caption.shape_b, caption.direction_b,
                                      caption.color_a, caption.shape_a, caption.direction_a)
        else:
            assert neg in captions
        if kind in ("color", "shape", "direction"):
            edited[diff[0][-1]] += 1
    if edited:  # both events are edited, about equally often
        assert abs(edited["a"] - 250) < 45 and edited["a"] + edited["b"] == 500


def words(caption: ClipCaption) -> list[str]:
    return caption.text().replace(",", "").split()


@pytest.mark.parametrize("kind", NEGATIVE_TYPES)
def test_negative_captions_are_distributed_like_positives(kind):
    """At every word position, each word is as frequent in negatives as in positives (within 4.5 sigma of
    the difference of two frequencies over n draws each): text alone cannot tell them apart."""
    n = 3000
    _, captions, negatives = captions_and_negatives(kind, n, seed=3)
    pos = [words(c) for c in captions]
    neg = [words(c) for c in negatives]
    assert {len(w) for w in pos + neg} == {11}
    assert all(w[0] == w[6] == "the" and w[3] == w[9] == "moves" and w[5] == "then"
               and w[4] in DIRECTIONS and w[10] in DIRECTIONS for w in pos + neg)
    for position in range(11):
        p_counts = Counter(w[position] for w in pos)
        n_counts = Counter(w[position] for w in neg)
        assert set(n_counts) <= set(p_counts), (position, set(n_counts) - set(p_counts))
        for word in p_counts:
            p, q = p_counts[word] / n, n_counts[word] / n
            pooled = (p + q) / 2
            sigma = np.sqrt(pooled * (1 - pooled) * 2 / n)
            assert abs(p - q) <= 4.5 * sigma + 1e-12, (kind, position, word, p, q)
    # the words themselves: uniform colours and shapes, as positives have them
    assert {w[1] for w in neg} == set(COLORS) and {w[2] for w in neg} == set(SHAPES)


# -- the datamodule -------------------------------------------------------------------------------------


def small_dm(**kwargs) -> ShapesVideoDataModule:
    """Attached as the builder would: a video transform (uint8 [T, 3, H, W] -> float) and a tokenizer."""
    dm = ShapesVideoDataModule(**{"num_train": 40, "num_val": 20, "num_test": 0, **kwargs})
    dm.transforms = {"video": lambda v: v.float() / 255}
    dm.tokenizer = WordTokenizer(64, 16)
    dm.tokenizer.fit(dm.train_texts())
    return dm


def test_same_seed_same_clips_other_seed_other_clips():
    c1, v1 = render_split("train", 30, FRAMES, SIZE, STEP, seed=3)
    c2, v2 = render_split("train", 30, FRAMES, SIZE, STEP, seed=3)
    c3, v3 = render_split("train", 30, FRAMES, SIZE, STEP, seed=4)
    assert c1 == c2 and torch.equal(v1, v2)
    assert c1 != c3 and not torch.equal(v1, v3)
    assert not torch.equal(v1, render_split("val", 30, FRAMES, SIZE, STEP, seed=3)[1]), "splits must differ"
    assert v1.shape == (30, FRAMES, 3, SIZE, SIZE) and v1.dtype == torch.uint8
    for clip, video in zip(c1, v1, strict=True):  # the stored videos are the clips' drawings
        assert object_pixels(video[0].numpy()) == object_pixels(draw_clip(clip, SIZE, FRAMES, np.random.default_rng(0))[0])
    assert describe(ShapesVideoDataModule(num_train=3, seed=0).rendered("train")[0][0]).text() == (
        "the blue square moves up, then the purple cross moves right")


def test_each_clip_once_true_once_false_and_every_negative_false():
    """Video alone cannot tell: every clip is shown with its caption and with one negative."""
    rng = np.random.default_rng(0)
    clips = [sample_clip(rng, SIZE, FRAMES) for _ in range(3000)]
    weights = negative_weights({"other": 1, "color": 1, "shape": 1, "direction": 2, "order": 3})
    video_index, texts, types = make_pairs(clips, weights, seed=0, split="train")
    assert video_index[0::2] == video_index[1::2] == list(range(3000))
    assert set(types[0::2]) == {PAIR_TYPES.index("positive")}
    assert texts[0::2] == [describe(c).text() for c in clips]
    assert all(neg != describe(c).text() for neg, c in zip(texts[1::2], clips, strict=True))
    counts = Counter(PAIR_TYPES[t] for t in types[1::2])
    assert set(counts) == set(NEGATIVE_TYPES)
    assert counts["order"] / 3000 == pytest.approx(3 / 8, abs=0.03)
    assert counts["direction"] / 3000 == pytest.approx(2 / 8, abs=0.03)
    assert counts["color"] / 3000 == pytest.approx(1 / 8, abs=0.03)


def test_batches_carry_video_text_labels_and_types():
    dm = small_dm()
    dataset = dm.build_split("train")
    batch = dataset[torch.arange(6)]
    assert set(batch) == {"video", "input_ids", "attention_mask", "label", "pair_type", "video_id", "image_id", "text_id"}
    assert torch.equal(batch["image_id"], batch["video_id"])  # the item index ITM / retrieval read
    videos = dm.rendered("train")[1]
    assert batch["video"].dtype == torch.float32 and batch["video"].shape == (6, FRAMES, 3, SIZE, SIZE)
    assert torch.equal(batch["video_id"], torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(batch["video"], videos[batch["video_id"]].float() / 255)
    assert batch["label"].tolist() == [1.0, 0.0] * 3
    assert batch["pair_type"][0::2].tolist() == [0, 0, 0]
    _, texts, types = dm.pairs("train")
    assert batch["pair_type"].tolist() == types[:6]
    first = dm.tokenizer([texts[0]])
    assert torch.equal(batch["input_ids"][0, :first["input_ids"].shape[1]], first["input_ids"][0])
    assert len(dataset) == 80 and dm.build_split("test") is None
    assert ShapesVideoDataModule.modalities == ("video", "text")


def test_the_loaders_give_whole_video_batches():
    dm = small_dm(batch_size=16, eval_batch_size=32)
    dm.splits = {name: dm.build_split(name) for name in ("train", "val", "test")}
    train = list(dm.train_dataloader())
    assert [len(b["label"]) for b in train] == [16] * 5
    assert sorted(torch.cat([b["video_id"] * 2 + (1 - b["label"].long()) for b in train]).tolist()) == list(range(80))
    val = list(dm.val_dataloader())  # 20 clips, 40 pairs, in order
    assert [b["video"].shape for b in val] == [(32, FRAMES, 3, SIZE, SIZE), (8, FRAMES, 3, SIZE, SIZE)]
    assert torch.cat([b["video_id"] for b in val]).tolist() == [i // 2 for i in range(40)]
    assert dm.test_dataloader() is None


def test_describe_counts_clips_pairs_and_types():
    dm = ShapesVideoDataModule(num_train=40, num_val=20, num_test=0, negatives={"direction": 1, "order": 1})
    out = dm.describe()
    assert {k: out[k] for k in ("negatives", "frames", "image_size", "step", "shuffle_frames")} == {
        "negatives": {"direction": 1, "order": 1}, "frames": 8, "image_size": 32, "step": 2, "shuffle_frames": False}
    assert set(out) == {"negatives", "frames", "image_size", "step", "shuffle_frames", "train", "val"}
    types = dm.pairs("train")[2]
    assert out["train"] == {"clips": 40, "pairs": 80, "pair_types": {
        "positive": 40, "direction": types.count(PAIR_TYPES.index("direction")),
        "order": types.count(PAIR_TYPES.index("order"))}}
    assert out["train"]["pair_types"]["direction"] + out["train"]["pair_types"]["order"] == 40


def test_shuffle_frames_permutes_val_and_test_frames_the_same_way_every_time():
    plain = ShapesVideoDataModule(num_train=10, num_val=30, num_test=30)
    shuffled = ShapesVideoDataModule(num_train=10, num_val=30, num_test=30, shuffle_frames=True)
    again = ShapesVideoDataModule(num_train=10, num_val=30, num_test=30, shuffle_frames=True)
    assert torch.equal(shuffled.videos("train"), plain.videos("train")), "training clips keep their order"
    for split in ("val", "test"):
        ordered, mixed = plain.videos(split), shuffled.videos(split)
        assert torch.equal(mixed, again.videos(split))
        for a, b in zip(ordered, mixed, strict=True):
            assert sorted(f.numpy().tobytes() for f in a) == sorted(f.numpy().tobytes() for f in b)
            assert not torch.equal(a, b)
        assert plain.pairs(split) == shuffled.pairs(split), "same pairs, only the frame order differs"
    assert not torch.equal(shuffled.videos("val")[:, 0], plain.videos("val")[:, 0])
    orders = frame_orders("val", 200, FRAMES, seed=0)
    assert all(sorted(o.tolist()) == list(range(FRAMES)) and o.tolist() != list(range(FRAMES)) for o in orders)


def test_rendered_clips_are_cached_and_a_damaged_cache_is_redrawn(tmp_path, monkeypatch):
    dm = ShapesVideoDataModule(num_train=12, num_val=0, num_test=0, cache_dir=str(tmp_path))
    clips, videos = dm.rendered("train")
    files = list(tmp_path.glob("train-*.pt"))
    assert len(files) == 1
    saved = torch.load(files[0], weights_only=True)
    assert set(saved) == {"clips", "videos"} and torch.equal(saved["videos"], videos)

    def no_drawing(*args):
        raise AssertionError("drawn again instead of read from the cache")

    with monkeypatch.context() as m:
        m.setattr(datamodule_module, "render_split", no_drawing)
        cached = ShapesVideoDataModule(num_train=12, num_val=0, num_test=0, cache_dir=str(tmp_path)).rendered("train")
    assert cached[0] == clips and torch.equal(cached[1], videos)
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated: drawn again
    again = ShapesVideoDataModule(num_train=12, num_val=0, num_test=0, cache_dir=str(tmp_path))
    assert again.rendered("train")[0] == clips and torch.equal(again.rendered("train")[1], videos)


class Planted:
    """A pickle that runs code when loaded without weights_only (here a harmless print)."""

    def __reduce__(self):
        return print, ("planted code ran",)


def test_a_cache_file_holding_python_objects_is_refused(tmp_path, capsys):
    dm = ShapesVideoDataModule(num_train=4, num_val=0, num_test=0, cache_dir=str(tmp_path))
    dm.rendered("train")
    (path,) = tmp_path.glob("train-*.pt")
    torch.save({"clips": [Planted()], "videos": torch.zeros(1)}, path)
    fresh = ShapesVideoDataModule(num_train=4, num_val=0, num_test=0, cache_dir=str(tmp_path))
    with pytest.raises(MMFuseError, match=rf"data.cache_dir: {path} holds Python objects other than tensors "
                                          r"and plain containers, .*Fix: delete it"):
        fresh.rendered("train")
    assert "planted code ran" not in capsys.readouterr().out


def test_bad_settings_are_one_line_errors():
    with pytest.raises(MMFuseError, match=r"data.negatives has unknown types \['colour'\]"):
        ShapesVideoDataModule(negatives={"colour": 1})
    with pytest.raises(MMFuseError, match="positive sum"):
        ShapesVideoDataModule(negatives={"order": 0})
    with pytest.raises(MMFuseError, match=r"data.frames=9: needs an even number >= 4"):
        ShapesVideoDataModule(frames=9)
    with pytest.raises(MMFuseError, match=r"data.step=0: pixels per frame must be >= 1"):
        ShapesVideoDataModule(step=0)
    assert ShapesVideoDataModule(frames=16, step=1).step == 1


def test_config_instantiates_the_datamodule_with_its_defaults():
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "shapes_video.yaml")
    cfg.cache_dir = None  # ${paths.cache_dir}/shapes_video in a composed run
    assert [str(d) for d in cfg.pop("defaults")] == [  # the encoders it selects (a Hydra defaults list)
        "{'override /encoder.image@_global_.encoder.image': 'none'}",
        "{'override /encoder.video@_global_.encoder.video': 'tiny_cnn'}"]
    dm = instantiate(cfg)
    assert isinstance(dm, ShapesVideoDataModule)
    assert (dm.sizes, dm.frames, dm.image_size, dm.step, dm.negatives, dm.shuffle_frames, dm.seed) == (
        {"train": 4000, "val": 500, "test": 500}, 8, 32, 2, dict.fromkeys(NEGATIVE_TYPES, 1.0), False, 0)
    assert (dm.batch_size, dm.eval_batch_size, dm.num_workers) == (128, 512, 0)
