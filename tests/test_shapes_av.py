"""data=shapes_av: the label's interaction structure exactly, the soundtrack's pitch and timing, the batches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from scipy.optimize import linprog

from conftest import FAST
from mmfuse.data.shapes_av.clips import caption, render_audio, render_split
from mmfuse.data.shapes_av.datamodule import ShapesAVDataModule
from mmfuse.data.shapes_av.labels import (
    BITS,
    CELLS,
    CLASS_NAMES,
    INTERACTION_TYPES,
    NUM_CLASSES,
    RULE_GROUPS,
    RULE_PHRASES,
    RULES,
    balanced_cells,
    bits_of,
    interaction_type,
    label,
)
from mmfuse.data.shapes_av.soundtrack import HIGH_HZ, LOW_HZ, NOISE_STD, Tone, soundtrack
from mmfuse.data.shapes_video.clip import default_step
from mmfuse.encoders.word_tokenizer import WordTokenizer
from mmfuse.errors import MMFuseError

RATE = 16000
HOP = 160  # 10 ms at 16 kHz
GRID = bits_of(np.arange(8))  # every bits combination, [8, 3]


def named(rule: int) -> list[int]:
    return [BITS.index(m) for m in RULES[rule]]


# -- the label -----------------------------------------------------------------------------------------
def test_rules_classes_and_interaction_types():
    assert [len(r) for r in RULES] == [1, 1, 1, 2, 2, 2, 3]
    assert interaction_type(np.arange(len(RULES))).tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert INTERACTION_TYPES == ("unimodal", "bimodal", "trimodal") and NUM_CLASSES == 14 == len(CLASS_NAMES)
    assert CLASS_NAMES[:2] == ("the video: even", "the video: odd") and CLASS_NAMES[-1] == "all three: odd"
    # label = 2 r + parity of the named bits
    assert label(0, [1, 0, 0]) == 1 and label(0, [0, 1, 1]) == 0
    assert label(3, [1, 1, 0]) == 6 and label(3, [1, 0, 1]) == 7
    assert label(5, [0, 1, 1]) == 10 and label(6, [1, 1, 1]) == 13 and label(6, [1, 1, 0]) == 12
    assert GRID.tolist()[5] == [1, 0, 1], "video is the high bit of a cell code"


@pytest.mark.parametrize("rule", range(len(RULES)))
def test_label_is_independent_of_every_proper_subset_of_the_named_bits_and_determined_by_all(rule):
    """Counted over the whole grid of bits: given any proper subset P of the rule's bits together with
    every bit the rule does not name, the label is each of the rule's two classes exactly equally often;
    given the named bits, it is one class."""
    labels = label(np.full(8, rule), GRID)
    assert set(labels.tolist()) == {2 * rule, 2 * rule + 1}
    s = named(rule)
    others = [j for j in range(3) if j not in s]
    for size in range(len(s)):
        for p in itertools.combinations(s, size):
            seen = list(p) + others
            for values in itertools.product((0, 1), repeat=len(seen)):
                rows = (GRID[:, seen] == values).all(1) if seen else np.ones(8, bool)
                counts = np.bincount(labels[rows] - 2 * rule, minlength=2).tolist()
                assert counts[0] == counts[1] == rows.sum() // 2, (RULES[rule], p, values, counts)
    for values in itertools.product((0, 1), repeat=len(s)):
        rows = (GRID[:, s] == values).all(1)
        assert len(set(labels[rows].tolist())) == 1, (RULES[rule], values)


def sign_representable(rule: int, max_order: int) -> bool:
    """Is there ``w`` with ``y (w · φ(b)) >= 1`` on the whole grid, ``y = ±1`` the rule's parity and ``φ`` the
    Walsh monomials ``prod_{j in J} (2 b_j - 1)`` of order ``|J| <= max_order`` (a linear head on a fusion
    with interactions up to that order)? An exact linear feasibility problem."""
    signs = 2 * GRID - 1
    subsets = [j for k in range(max_order + 1) for j in itertools.combinations(range(3), k)]
    phi = np.stack([signs[:, list(j)].prod(1) for j in subsets], axis=1).astype(float)
    y = 2 * (label(np.full(8, rule), GRID) % 2) - 1
    res = linprog(np.zeros(len(subsets)), A_ub=-(y[:, None] * phi), b_ub=-np.ones(8), bounds=(None, None))
    return res.status == 0


@pytest.mark.parametrize("rule", range(len(RULES)))
def test_each_rule_needs_interactions_of_exactly_its_order(rule):
    """The module's claim: a rule over k modalities is solved by terms of order k and not by any sum of
    terms of lower order (unimodal: additive fusion; pairs: a pair product; all three: a three-way one)."""
    k = len(RULES[rule])
    assert sign_representable(rule, k)
    assert not sign_representable(rule, k - 1)


def test_cells_are_balanced_exactly():
    rules, bits = balanced_cells(6000, np.random.default_rng(0))
    codes = bits @ np.array([4, 2, 1])
    cells = np.bincount(rules + len(RULES) * codes, minlength=CELLS)  # cell k = rule k % 7, code k // 7
    assert cells.tolist() == [108] * 8 + [107] * 48  # 6000 = 56 · 107 + 8
    labels = np.bincount(label(rules, bits), minlength=NUM_CLASSES).tolist()
    assert labels == [430, 428] + [429, 428] * 6
    assert np.bincount(interaction_type(rules)).tolist() == [2572, 2571, 857]
    assert np.bincount(rules).tolist() == [858] + [857] * 6
    # bit = 1 in 4 of the 8 codes: 4 · 7 · 107 = 2996, plus the 8th extra cell (rule 0, code 1: text bit 1)
    assert [int(b.sum()) for b in bits.T] == [2996, 2996, 2997]
    again, _ = balanced_cells(6000, np.random.default_rng(0))
    other, _ = balanced_cells(6000, np.random.default_rng(1))
    assert np.array_equal(rules, again) and not np.array_equal(rules, other)


# -- the soundtrack ------------------------------------------------------------------------------------
def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def onset_s(wave: np.ndarray, rate: int, threshold: float = 0.1) -> float:
    """Start of the first 10 ms hop whose RMS exceeds ``threshold``."""
    hops = wave[: len(wave) // HOP * HOP].reshape(-1, HOP)
    loud = np.sqrt((hops.astype(np.float64) ** 2).mean(1)) > threshold
    return float(np.argmax(loud) * HOP / rate)


@pytest.mark.parametrize(("hz", "start"), [(LOW_HZ, 0.0), (HIGH_HZ, 0.5), (LOW_HZ, 0.5), (HIGH_HZ, 0.0)])
def test_tone_pitch_is_the_fft_peak_and_its_onset_the_event_start(hz, start):
    wave = soundtrack(Tone(hz, start, start + 0.5, phase=1.0), 1.0, RATE, np.random.default_rng(0))
    assert wave.shape == (16000,) and wave.dtype == np.float32
    assert peak_hz(wave, RATE) == hz  # 1 Hz bins over 1 s
    assert abs(onset_s(wave, RATE) - start) <= HOP / RATE
    silent = wave[8000:] if start == 0.0 else wave[:8000]
    assert silent.std() == pytest.approx(NOISE_STD, rel=0.05)  # outside the event: the noise alone
    loud = wave[int(start * RATE) + 100: int((start + 0.5) * RATE) - 100]  # past the 5 ms ramps
    assert loud.std() == pytest.approx(np.sqrt(0.5 ** 2 / 2 + NOISE_STD ** 2), rel=0.01)


def test_no_tone_is_noise_alone():
    wave = soundtrack(None, 0.5, 8000, np.random.default_rng(3))
    assert wave.shape == (4000,) and float(wave.std()) == pytest.approx(NOISE_STD, rel=0.05)


# -- the samples ---------------------------------------------------------------------------------------
def object_centre(frame: torch.Tensor) -> tuple[float, float]:
    """Centre (x, y) of the bright object pixels (the background is N(30, 8), every colour has a channel >= 150)."""
    ys, xs = torch.nonzero(frame.max(0).values > 120, as_tuple=True)
    return float(xs.float().mean()), float(ys.float().mean())


def test_video_bit_is_the_vertical_movers_direction_and_the_tone_sounds_during_its_event():
    s = render_split("val", 56, frames=8, image_size=32, seed=0)
    step = default_step(32)
    audio = render_audio(s, "val", np.arange(56), frames=8, sample_rate=RATE, seed=0).numpy()
    for i in range(56):
        v = int(s.vertical[i])
        for event in (0, 1):
            centres = [object_centre(f) for f in s.video[i, 4 * event: 4 * event + 4]]
            dx, dy = np.round(np.diff(np.array(centres), axis=0) / step, 6).T
            if event == v:  # up (bit 0) moves -step in y per frame, down (bit 1) +step
                assert dx.tolist() == [0.0] * 3 and dy.tolist() == [2 * int(s.bits[i, 0]) - 1] * 3, (i, centres)
            else:
                assert dy.tolist() == [0.0] * 3 and abs(dx[0]) == 1.0 and len(set(dx.tolist())) == 1, (i, centres)
        assert peak_hz(audio[i], RATE) == (HIGH_HZ if s.bits[i, 1] else LOW_HZ)
        assert abs(onset_s(audio[i], RATE) - 0.5 * v) <= HOP / RATE, i
        word = {0: "off", 1: "on"}[int(s.bits[i, 2])]
        assert s.texts[i] == f"use {RULE_PHRASES[s.rules[i]]}, key {word}"
    assert caption(3, 1) == "use the video and sound, key on" and caption(6, 0) == "use all three, key off"
    assert sorted(set(s.vertical.tolist())) == [0, 1]


def test_same_seed_same_samples_other_seed_or_split_other_samples():
    a, b = render_split("train", 30, 8, 32, seed=3), render_split("train", 30, 8, 32, seed=3)
    c, d = render_split("train", 30, 8, 32, seed=4), render_split("val", 30, 8, 32, seed=3)
    assert a.texts == b.texts and torch.equal(a.video, b.video) and np.array_equal(a.phase, b.phase)
    assert not torch.equal(a.video, c.video) and not torch.equal(a.video, d.video)
    wave = render_audio(a, "train", np.array([7]), 8, RATE, seed=3)
    assert torch.equal(wave, render_audio(b, "train", np.array([2, 7]), 8, RATE, seed=3)[1:])
    assert not torch.equal(wave, render_audio(a, "val", np.array([7]), 8, RATE, seed=3))


# -- the datamodule ------------------------------------------------------------------------------------
def halve_rate(wave: torch.Tensor, rate: int) -> torch.Tensor:
    assert rate == RATE
    return wave[::2]  # a stand-in "encoder" at 8 kHz


def attached(**kwargs) -> ShapesAVDataModule:
    dm = ShapesAVDataModule(**{"num_train": 60, "num_val": 56, "num_test": 0, "batch_size": 8, **kwargs})
    dm.transforms = {"video": lambda v: v.float() / 255, "audio": halve_rate}
    dm.tokenizer = WordTokenizer(64, 16)
    dm.prepare_tokenizer()
    dm.splits = {name: dm.build_split(name) for name in ("train", "val", "test")}
    return dm


def test_batches_keys_shapes_dtypes_and_values():
    dm = attached()
    assert dm.splits["test"] is None and len(dm.splits["train"]) == 60 and dm.num_classes == 14
    s = dm.rendered("train")
    batch = dm.splits["train"][torch.tensor([0, 5, 9])]
    assert set(batch) == {"video", "audio", "audio_mask", "input_ids", "attention_mask", "target", "rule",
                          "interaction_type", "sample_id"}
    assert batch["video"].shape == (3, 8, 3, 32, 32) and batch["video"].dtype == torch.float32
    assert torch.equal(batch["video"], s.video[[0, 5, 9]].float() / 255)
    assert batch["audio"].shape == (3, 8000) and batch["audio"].dtype == torch.float32
    assert batch["audio_mask"].dtype == torch.bool and bool(batch["audio_mask"].all())
    assert torch.equal(batch["audio"], render_audio(s, "train", np.array([0, 5, 9]), 8, RATE, 0)[:, ::2])
    for k in ("target", "rule", "interaction_type", "sample_id", "input_ids"):
        assert batch[k].dtype == torch.long, k
    assert batch["sample_id"].tolist() == [0, 5, 9]
    assert batch["target"].tolist() == label(s.rules[[0, 5, 9]], s.bits[[0, 5, 9]]).tolist()
    assert batch["rule"].tolist() == s.rules[[0, 5, 9]].tolist()
    assert batch["interaction_type"].tolist() == interaction_type(s.rules[[0, 5, 9]]).tolist()
    vocab = dm.tokenizer.vocab
    for row, i in enumerate([0, 5, 9]):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        words = [vocab[t] for t in ids if vocab[t] != "[CLS]"]
        assert " ".join(words) == s.texts[i].replace(",", ""), (words, s.texts[i])
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())  # trimmed to the longest
    one = dm.splits["train"][5]
    assert one["video"].shape == (8, 3, 32, 32) and int(one["target"]) == batch["target"][1]


def test_train_loader_gives_whole_batches_of_every_sample():
    dm = attached()
    batches = list(dm.train_dataloader())
    assert [len(b["target"]) for b in batches] == [8] * 7 + [4]
    assert sorted(torch.cat([b["sample_id"] for b in batches]).tolist()) == list(range(60))
    assert batches[0]["video"].shape == (8, 8, 3, 32, 32) and batches[0]["audio"].shape == (8, 8000)


def test_a_modality_without_a_transform_is_left_out():
    dm = attached()
    dm.transforms = {"video": lambda v: v.float()}
    batch = dm.build_split("val")[torch.tensor([1, 2])]
    assert "audio" not in batch and "audio_mask" not in batch and batch["video"].shape == (2, 8, 3, 32, 32)


def test_describe_counts_exactly():
    dm = attached()
    out = dm.describe()
    # 60 = 56 + 4: cells 0..3 (rules 0..3 with all bits 0, parity 0) hold two samples
    assert out["train"]["samples"] == 60
    assert out["train"]["interaction_types"] == {"unimodal": 27, "bimodal": 25, "trimodal": 8}
    assert list(out["train"]["classes"].values()) == [5, 4, 5, 4, 5, 4, 5, 4, 4, 4, 4, 4, 4, 4]
    assert out["val"]["classes"] == dict.fromkeys(CLASS_NAMES, 4)  # 56: one sample per cell
    assert out["val"]["interaction_types"] == {"unimodal": 24, "bimodal": 24, "trimodal": 8}


def test_clips_are_cached_and_a_damaged_or_planted_cache_file_is_handled(tmp_path):
    dm = ShapesAVDataModule(num_train=20, num_val=0, num_test=0, cache_dir=str(tmp_path))
    first, drawn = dm.rendered("train"), render_split("train", 20, 8, 32, seed=0)
    assert first.texts == drawn.texts and torch.equal(first.video, drawn.video)
    for k in ("rules", "bits", "vertical", "phase"):
        assert np.array_equal(getattr(first, k), getattr(drawn, k)), k
    files = list(tmp_path.glob("train-*.pt"))
    assert len(files) == 1
    again = ShapesAVDataModule(num_train=20, num_val=0, num_test=0, cache_dir=str(tmp_path)).rendered("train")
    assert torch.equal(again.video, first.video) and again.texts == first.texts
    assert np.array_equal(again.bits, first.bits) and np.array_equal(again.phase, first.phase)
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated: drawn again
    redrawn = ShapesAVDataModule(num_train=20, num_val=0, num_test=0, cache_dir=str(tmp_path)).rendered("train")
    assert torch.equal(redrawn.video, first.video)
    torch.save({"video": first.video, "evil": np.random.default_rng(0)}, files[0])  # not plain data
    with pytest.raises(MMFuseError, match="holds Python objects other than tensors.*Fix: delete it"):
        ShapesAVDataModule(num_train=20, num_val=0, num_test=0, cache_dir=str(tmp_path)).rendered("train")


def test_bad_settings_are_one_line_errors():
    with pytest.raises(MMFuseError, match=r"data.num_classes=10: shapes_av has 14 classes .* Fix: leave"):
        ShapesAVDataModule(num_classes=10)
    with pytest.raises(MMFuseError, match=r"data.sample_rate=1000: the high tone \(880 Hz\) needs a rate above 1760"):
        ShapesAVDataModule(sample_rate=1000)
    with pytest.raises(MMFuseError, match=r"data.num_val=-1: must be >= 0"):
        ShapesAVDataModule(num_val=-1)
    with pytest.raises(MMFuseError, match=r"data.frames=5: needs an even number"):
        ShapesAVDataModule(num_train=4, frames=5).rendered("train")


def test_config_composes_and_task_reads_the_number_of_classes(make_cfg):
    cfg = make_cfg("data=shapes_av", "task=classification")
    assert cfg.task.num_classes == 14 and cfg.data.num_train == 6000 and cfg.data.sample_rate == 16000
    targets = {m: cfg.encoder[m]._target_ for m in ("image", "video", "audio", "text")}
    assert targets == {"image": None, "video": "mmfuse.encoders.video.VideoEncoder",
                       "audio": "mmfuse.encoders.audio_logmel.LogMelEncoder",
                       "text": "mmfuse.encoders.tiny_text.TinyTextTransformer"}
    other = make_cfg("data=shapes_av", "encoder.audio=none", "encoder.video.temporal=transformer", subdir="other")
    assert other.encoder.audio._target_ is None and other.encoder.video.temporal == "transformer"
    cfg = make_cfg("data=shapes_av", "task=classification", subdir="again")
    with open_dict(cfg):
        cfg.data.num_train, cfg.data.num_val, cfg.data.num_test = 8, 0, 0
    dm = instantiate(cfg.data)
    assert isinstance(dm, ShapesAVDataModule) and dm.modalities == ("video", "audio", "text")
    assert dm.batch_size == 64 and dm.eval_batch_size == 256 and dm.cache_dir.name == "shapes_av"


def test_the_video_encoders_frame_transform_resizes_every_frame():
    from mmfuse.encoders.transforms import ImageTransform
    from mmfuse.encoders.video import FrameTransform

    dm = attached()
    dm.transforms = {"video": FrameTransform(ImageTransform(16, (0.5,) * 3, (0.25,) * 3)), "audio": halve_rate}
    batch = dm.build_split("val")[torch.tensor([0, 3])]
    clip = dm.rendered("val").video[3]
    assert batch["video"].shape == (2, 8, 3, 16, 16)
    assert torch.equal(batch["video"][1], ImageTransform(16, (0.5,) * 3, (0.25,) * 3)(clip))


def test_the_audio_encoders_transform_resamples_and_keeps_the_pitch():
    from mmfuse.encoders.audio_transform import AudioTransform

    dm = attached()
    dm.transforms = {"audio": AudioTransform(8000)}
    s, idx = dm.rendered("val"), torch.arange(6)
    batch = dm.build_split("val")[idx]
    assert batch["audio"].shape == (6, 8000) and batch["audio_mask"].shape == (6, 8000) and "video" not in batch
    for i in idx.tolist():
        assert peak_hz(batch["audio"][i].numpy(), 8000) == (HIGH_HZ if s.bits[i, 1] else LOW_HZ)
        assert abs(onset_s(batch["audio"][i].numpy(), 8000, threshold=0.1) - 0.5 * int(s.vertical[i])) <= 0.02


def test_three_modality_run_end_to_end(make_cfg):
    """``train.py data=shapes_av task=classification fusion=tfn`` in-process, shrunk: the data selects the
    video and audio encoders, TFN fuses the three, results.json records the run and the exact counts."""
    from mmfuse.train import train

    cfg = make_cfg("data=shapes_av", "task=classification", "fusion=tfn", *FAST, "data.num_train=56",
                   "data.num_val=56", "data.num_test=0", "data.batch_size=28")
    results = train(cfg)
    assert results["status"] == "completed"
    assert {k: results["choices"][f"encoder.{k}"] for k in ("image", "video", "audio", "text")} == {
        "image": "none", "video": "tiny_cnn_transformer", "audio": "logmel_cnn", "text": "tiny_text"}
    assert results["steps"] == 2
    acc = results["metrics"]["val/acc"]
    by_type = {t: results["metrics"][f"val/acc_{t}"] for t in ("unimodal", "bimodal", "trimodal")}
    counts = {"unimodal": 24, "bimodal": 24, "trimodal": 8}  # 56 samples, every (rule, bits) cell once
    assert all(v * counts[t] == pytest.approx(round(v * counts[t]), abs=1e-4) for t, v in by_type.items())
    assert sum(by_type[t] * counts[t] for t in counts) == pytest.approx(acc * 56, abs=1e-3)
    by_rule = {r: results["metrics"][f"val/acc_{r}"] for r in RULE_GROUPS}  # 8 samples per rule
    assert all(v * 8 == pytest.approx(round(v * 8), abs=1e-4) for v in by_rule.values())
    assert sum(by_rule.values()) * 8 == pytest.approx(acc * 56, abs=1e-3)
    assert by_type["trimodal"] == by_rule["rule_video_audio_text"]
    assert acc * 56 == pytest.approx(round(acc * 56), abs=1e-4)  # a whole number of the 56 samples
    assert results["data"]["val"]["classes"] == dict.fromkeys(CLASS_NAMES, 4)
