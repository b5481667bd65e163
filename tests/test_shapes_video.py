"""The embedded video benchmark: clips true to their captions, motion exact, negatives false, typed,
unrecognisable from one modality alone, and direction / order negatives unsolvable without time."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mmfuse.data.shapes.scene import COLORS, SHAPES
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
from mmfuse.data.shapes_video.negatives import NEGATIVE_TYPES, make_negative, negative_clip
from mmfuse.errors import MMFuseError

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
