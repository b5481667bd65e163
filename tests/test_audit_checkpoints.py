"""Checkpoints (issue 13): no code runs on load, checksums, disk full, truncated files, frozen weights left out."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from mmfuse.checkpoint_file import load_checkpoint, load_initial_weights
from mmfuse.checkpoint_io import CheckpointIO, read_checkpoint, run_disk_usage, save_checkpoint_file
from mmfuse.data.shapes.datamodule import ShapesDataModule, render_split
from mmfuse.encoders.tiny_cnn import TinyCNN
from mmfuse.errors import MMFuseError
from mmfuse.evaluate import evaluate
from mmfuse.train import train

TINY = ("debug=fast", "data.num_train=48", "data.num_val=32", "data.num_test=16", "data.batch_size=16")
NO_OTHER_FIX = "Fix: delete it to start the run afresh (there is no best.ckpt beside it to resume from)"
OTHER_FIX = "Fix: give another checkpoint written by python train.py (e.g. best.ckpt beside it)"


class WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: a file that runs code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def crafted(tmp_path: Path, name: str = "evil.ckpt") -> tuple[Path, Path]:
    marker = tmp_path / "MARKER"
    path = tmp_path / name
    torch.save({"mmfuse_config": {}, "state_dict": {}, "payload": WritesMarker(marker)}, path)
    assert not marker.exists()
    return path, marker


def resume_fix(other: Path) -> str:
    return f"Fix: resume from the other checkpoint beside it (ckpt_path={other}), or delete it to start the run afresh"


def refused(field: str, path: Path, fix: str) -> str:
    return (f"{field}={path}: refused, it holds Python objects other than tensors and plain containers (it calls "
            f"io.open), which could run code when loaded; nothing of it was run. {fix}")


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def mark_unfinished(run_dir: Path) -> None:
    (run_dir / "results.json").write_text(json.dumps({**results(run_dir), "status": "running"}))


# --- 1. a checkpoint runs no code ---------------------------------------------------------------

def test_a_crafted_checkpoint_given_to_eval_or_init_from_runs_no_code(tmp_path):
    path, marker = crafted(tmp_path)
    with pytest.raises(MMFuseError) as e:
        load_checkpoint(str(path))
    assert str(e.value) == refused("ckpt_path", path, OTHER_FIX)
    module = torch.nn.Linear(2, 2)
    with pytest.raises(MMFuseError) as e:
        load_initial_weights(module, str(path))
    assert str(e.value) == refused("init_from", path, OTHER_FIX)
    assert not marker.exists()


def test_a_crafted_encoder_state_dict_runs_no_code(tmp_path):
    path, marker = crafted(tmp_path, "weights.pt")
    with pytest.raises(MMFuseError) as e:
        TinyCNN(width=8, image_size=32, pretrained=str(path))
    assert str(e.value) == refused("encoder.image=tiny_cnn: pretrained", path,
                                   "Fix: give a state dict saved with torch.save(model.state_dict(), path)")
    assert not marker.exists()


def test_a_crafted_shapes_cache_file_runs_no_code_and_a_real_one_loads_as_drawn(tmp_path):
    dm = ShapesDataModule(num_train=0, num_val=3, num_test=0, cache_dir=str(tmp_path / "cache"))
    drawn = dm.rendered("val")
    (cache_file,) = (tmp_path / "cache").glob("val-*.pt")
    scenes, captions, images = ShapesDataModule(num_train=0, num_val=3, num_test=0,
                                                cache_dir=str(tmp_path / "cache")).rendered("val")
    assert (scenes, captions) == (drawn[0], drawn[1]) == render_split("val", 3, 32, 0)[:2]
    assert torch.equal(images, drawn[2])

    marker = tmp_path / "MARKER"
    torch.save({"scenes": WritesMarker(marker), "captions": [], "images": torch.zeros(1)}, cache_file)
    with pytest.raises(MMFuseError) as e:
        ShapesDataModule(num_train=0, num_val=3, num_test=0, cache_dir=str(tmp_path / "cache")).rendered("val")
    assert str(e.value) == (f"data.cache_dir: {cache_file} holds Python objects other than tensors and plain "
                            "containers, which could run code when loaded; it was not loaded. Fix: delete it "
                            "(it is drawn again)")
    assert not marker.exists()


def test_resuming_from_a_crafted_checkpoint_runs_no_code(make_cfg, tmp_path):
    path, marker = crafted(tmp_path)
    with pytest.raises(MMFuseError) as e:
        CheckpointIO().load_checkpoint(path)  # what trainer.fit(ckpt_path=...) calls
    assert str(e.value) == refused("ckpt_path", path, NO_OTHER_FIX)
    with pytest.raises(MMFuseError) as e:
        train(make_cfg(*TINY, f"ckpt_path={path}"))
    assert str(e.value) == refused("ckpt_path", path, NO_OTHER_FIX)
    assert not marker.exists()


def test_the_project_s_own_checkpoints_load_with_weights_only(make_cfg):
    cfg = make_cfg(*TINY, "data.num_train=16", "test=false", "callbacks=resumable",
                   "callbacks.step_checkpoint.every_n_train_steps=1")
    train(cfg)
    for name in ("best", "last"):
        ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / f"{name}.ckpt", weights_only=True)
        assert ckpt["global_step"] == 2 and set(ckpt["callbacks"]) >= {"StepCheckpoint"}


# --- 2. checksums -------------------------------------------------------------------------------

def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_checksum_is_written_beside_each_checkpoint_and_a_flipped_byte_is_refused(tmp_path):
    path = tmp_path / "last.ckpt"
    save_checkpoint_file({"state_dict": {"w": torch.arange(1000.0)}}, path)
    record = json.loads((tmp_path / "last.ckpt.sha256.json").read_text())
    from mmfuse.features.keys import file_sha256
    assert record == {"file": "last.ckpt", "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.arange(1000.0))

    flip_byte(path, path.stat().st_size // 2)  # inside the tensor's bytes: torch.load would not notice
    with pytest.raises(MMFuseError) as e:
        read_checkpoint(path)
    assert str(e.value) == f"ckpt_path={path}: sha256 differs from last.ckpt.sha256.json (the file is corrupted). {OTHER_FIX}"


def test_a_checkpoint_without_checksum_file_loads_with_a_warning(tmp_path, caplog):
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, path)  # as written before checksums
    with caplog.at_level(logging.WARNING, logger="mmfuse.checkpoint_io"):
        assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert caplog.messages == [f"ckpt_path={path} has no checksum file old.ckpt.sha256.json (written before mmfuse "
                               "checksummed checkpoints): loaded unverified"]


def test_a_corrupted_or_truncated_checkpoint_is_one_line_on_resume_eval_and_init_from(make_cfg):
    cfg = make_cfg(*TINY)
    run_dir = Path(cfg.paths.output_dir)
    train(cfg)
    last = run_dir / "checkpoints" / "last.ckpt"
    whole = last.read_bytes()
    flip_byte(last, len(whole) // 2)
    differs = f"{last}: sha256 differs from last.ckpt.sha256.json (the file is corrupted)."
    resume = resume_fix(run_dir / "checkpoints" / "best.ckpt")
    with pytest.raises(MMFuseError) as e:
        load_checkpoint(str(last))
    assert str(e.value) == f"ckpt_path={differs} {OTHER_FIX}"
    with pytest.raises(MMFuseError) as e:
        load_initial_weights(torch.nn.Linear(2, 2), str(last))
    assert str(e.value) == f"init_from={differs} {OTHER_FIX}"

    mark_unfinished(run_dir)  # a re-run resumes from last.ckpt: refused before anything is built
    with pytest.raises(MMFuseError) as e:
        train(make_cfg(*TINY))
    assert str(e.value) == f"ckpt_path={differs} {resume}"
    assert results(run_dir)["status"] == "failed" and results(run_dir)["error"] == f"MMFuseError: {e.value}"

    # 4. truncated (a run killed while an older mmfuse wrote it in place)
    last.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MMFuseError) as e:
        train(make_cfg(*TINY))
    assert str(e.value) == (f"ckpt_path={last}: {len(whole) // 2} bytes, last.ckpt.sha256.json records {len(whole)} "
                            f"(truncated or overwritten). {resume}")
    (run_dir / "checkpoints" / "last.ckpt.sha256.json").unlink()  # as an older mmfuse left it
    with pytest.raises(MMFuseError) as e:
        train(make_cfg(*TINY))
    assert str(e.value) == f"ckpt_path={last}: not a whole checkpoint file, truncated or damaged (File is not a zip file). {resume}"
    with pytest.raises(MMFuseError) as e:
        load_checkpoint(str(last))
    assert str(e.value) == (f"ckpt_path={last}: cannot be read as a checkpoint, truncated or damaged (RuntimeError: "
                            "PytorchStreamReader failed reading zip archive: failed finding central directory. This "
                            f"is an internal miniz error. If you are seeing this error, there is a high). {OTHER_FIX}")


# --- 3. disk full -------------------------------------------------------------------------------

class FullDisk:
    """A file that takes ``room`` bytes, then fails like a full disk."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.f.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def fill_disk_after(monkeypatch, room: int, from_call: int = 1) -> None:
    """The ``from_call``-th checkpoint file written (by temporary name, ``mmfuse.data.atomic``) and later
    ones hit a full disk after ``room`` bytes; other files are written as usual."""
    import mmfuse.data.atomic as atomic

    real, calls = os.fdopen, [0]

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") or ".ckpt." not in os.readlink(
                f"/proc/self/fd/{fd}") or ".sha256" in os.readlink(f"/proc/self/fd/{fd}"):
            return f
        calls[0] += 1
        return FullDisk(f, room) if calls[0] >= from_call else f

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)


def test_disk_full_half_way_leaves_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "best.ckpt"
    save_checkpoint_file({"state_dict": {"w": torch.zeros(2**18)}}, path)  # 1 MB
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    fill_disk_after(monkeypatch, room=2**19)
    with pytest.raises(MMFuseError) as e:
        save_checkpoint_file({"state_dict": {"w": torch.ones(2**18)}}, path)
    assert str(e.value) == (f"no space left on {tmp_path} writing best.ckpt (needs about 1 MB; the earlier "
                            "best.ckpt, if any, is unchanged). Fix: free space there (or give the run another "
                            "hydra.run.dir) and re-run the same command to resume")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file left either
    assert sorted(before) == ["best.ckpt", "best.ckpt.sha256.json"]
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.zeros(2**18))


def test_disk_full_at_the_checksum_file_says_the_checkpoint_is_whole(tmp_path, monkeypatch):
    import mmfuse.checkpoint_io as checkpoint_io

    def no_space(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "atomic_write_json", no_space)
    path = tmp_path / "last.ckpt"
    with pytest.raises(MMFuseError) as e:
        save_checkpoint_file({"state_dict": {"w": torch.ones(4)}}, path)
    assert str(e.value) == (f"no space left on {tmp_path} writing last.ckpt.sha256.json (last.ckpt itself is whole, "
                            "but loads unverified). Fix: free space there (or give the run another hydra.run.dir) "
                            "and re-run the same command to resume")
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(4))


def test_disk_full_during_training_fails_the_run_and_keeps_the_epoch_before(make_cfg, monkeypatch):
    cfg = make_cfg(*TINY, "data.num_train=16", "trainer.max_epochs=2", "test=false")  # 2 steps an epoch
    run_dir = Path(cfg.paths.output_dir)
    # epoch 1 writes best.ckpt and last.ckpt; epoch 2 does not improve val/acc (seed 42), so last.ckpt is next
    fill_disk_after(monkeypatch, room=1000, from_call=3)
    with pytest.raises(MMFuseError) as e:
        train(cfg)
    monkeypatch.undo()
    assert str(e.value) == (f"no space left on {run_dir / 'checkpoints'} writing last.ckpt (needs about 6 MB; the "
                            "earlier last.ckpt, if any, is unchanged). Fix: free space there (or give the run "
                            "another hydra.run.dir) and re-run the same command to resume")
    assert results(run_dir)["status"] == "failed" and results(run_dir)["error"] == f"MMFuseError: {e.value}"
    for name in ("best", "last"):
        ckpt = read_checkpoint(run_dir / "checkpoints" / f"{name}.ckpt")  # checksum verified
        assert (ckpt["epoch"], ckpt["global_step"]) == (0, 2)
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["best.ckpt", "best.ckpt.sha256.json", "last.ckpt",
                                                           "last.ckpt.sha256.json"]


# --- 5. frozen pretrained encoders left out; what a run directory costs -------------------------

def test_frozen_pretrained_encoders_can_be_left_out_of_checkpoints_and_are_put_back_checked(make_cfg, tmp_path):
    from mmfuse.frozen_weights import _digest

    weights = tmp_path / "tiny_cnn.pt"
    torch.manual_seed(0)
    source = TinyCNN(width=64, image_size=32).state_dict()
    torch.save(source, weights)
    args = (*TINY, f"encoder.image.pretrained={weights}", "encoder.image.freeze=true", "test=false",
            "checkpoint_frozen_encoders=false")
    cfg = make_cfg(*args)
    run_dir = Path(cfg.paths.output_dir)
    first = train(cfg)
    last = run_dir / "checkpoints" / "last.ckpt"
    raw = torch.load(last, weights_only=True)
    assert [k for k in raw["state_dict"] if k.startswith("model.image_encoder.")] == []
    assert len([k for k in raw["state_dict"] if k.startswith("model.text_encoder.")]) > 0  # trained: kept
    assert raw["mmfuse_frozen"] == {"image": {"source": str(weights), "keys": len(source), "float_dtype": "torch.float32",
                                              "sha256": _digest(source, "torch.float32")}}

    ckpt = load_checkpoint(str(last))  # eval.py and init_from: rebuilt from the source
    assert "mmfuse_frozen" not in ckpt
    for k, v in source.items():
        assert torch.equal(ckpt["state_dict"][f"model.image_encoder.{k}"], v), k

    evaluated = evaluate(make_cfg(f"ckpt_path={last}", subdir="eval", config_name="eval"))
    assert evaluated["metrics"] == pytest.approx(first["metrics"], abs=1e-6)

    mark_unfinished(run_dir)  # resume: put back from the run's own encoder (strict loading)
    resumed = train(make_cfg(*args))
    assert resumed["resumed_from"] == "checkpoints/last.ckpt" and resumed["metrics"] == first["metrics"]

    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in source.items()}, weights)
    with pytest.raises(MMFuseError) as e:
        load_checkpoint(str(last))
    assert str(e.value) == (f"ckpt_path={last}: the frozen image encoder was left out of this checkpoint "
                            f"(checkpoint_frozen_encoders=false) and its source encoder.image '{weights}' now gives "
                            "other weights than the run was trained with (sha256 differs). Fix: restore the weights "
                            "that source had then")


def test_eval_rebuilds_a_left_out_frozen_encoder_from_the_weights_it_is_given(make_cfg, tmp_path):
    weights = tmp_path / "tiny_cnn.pt"
    torch.manual_seed(0)
    torch.save(TinyCNN(width=64, image_size=32).state_dict(), weights)
    cfg = make_cfg(*TINY, f"encoder.image.pretrained={weights}", "encoder.image.freeze=true", "test=false",
                   "checkpoint_frozen_encoders=false")
    first = train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    moved = tmp_path / "elsewhere" / "tiny_cnn.pt"
    moved.parent.mkdir()
    weights.rename(moved)  # the weights now live elsewhere (another machine's folder)
    evaluated = evaluate(make_cfg(f"ckpt_path={last}", f"encoder.image.pretrained={moved}", subdir="eval",
                                  config_name="eval"))
    assert evaluated["metrics"] == pytest.approx(first["metrics"], abs=1e-6)


def test_the_recorded_source_of_a_left_out_encoder_names_its_weights_and_folder():
    from mmfuse.frozen_weights import source
    assert source({"arch": "mobilenet_v2", "pretrained": True, "weights_dir": "/w"}) == "mobilenet_v2 default weights in /w"
    assert source({"arch": "resnet50", "pretrained": "IMAGENET1K_V2", "weights_dir": None}) == "IMAGENET1K_V2"
    assert source({"name_or_path": "/m/MiniLM", "pretrained": True}) == "/m/MiniLM"


def test_frozen_encoders_with_random_weights_stay_in_checkpoints(make_cfg):
    cfg = make_cfg(*TINY, "encoder.image.freeze=true", "checkpoint_frozen_encoders=false", "test=false")
    train(cfg)  # frozen but random (pretrained=false): cannot be rebuilt, so stored
    raw = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert "mmfuse_frozen" not in raw and "model.image_encoder.position" in raw["state_dict"]


def test_run_disk_usage_counts_checkpoints_and_the_rest(tmp_path):
    for rel, size in (("checkpoints/last.ckpt", 10), ("checkpoints/last.ckpt.sha256.json", 5),
                      ("results.json", 7), ("csv/metrics.csv", 3), (".hydra/config.yaml", 2)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * size)
    assert run_disk_usage(tmp_path) == {"checkpoints": 15, "other": 12}


# --- 6. review: the fix names the real other file; reading races; hashing once; temporaries; umask; log

def test_the_resume_fix_names_the_other_checkpoint_beside_the_damaged_one_or_none(tmp_path):
    from mmfuse.checkpoint_io import check_checkpoint_file
    last, best = tmp_path / "last.ckpt", tmp_path / "best.ckpt"
    for path in (last, best):
        save_checkpoint_file({"state_dict": {"w": torch.arange(1000.0)}}, path)
        flip_byte(path, path.stat().st_size // 2)

    def message(path: Path) -> str:
        with pytest.raises(MMFuseError) as e:
            check_checkpoint_file(path)
        return str(e.value)

    differs = "sha256 differs from {}.sha256.json (the file is corrupted)."
    assert message(last) == f"ckpt_path={last}: {differs.format('last.ckpt')} {resume_fix(best)}"
    assert message(best) == f"ckpt_path={best}: {differs.format('best.ckpt')} {resume_fix(last)}"
    best.unlink()
    assert message(last) == f"ckpt_path={last}: {differs.format('last.ckpt')} {NO_OTHER_FIX}"
    last.rename(best)
    best.with_name("last.ckpt.sha256.json").rename(best.with_name("best.ckpt.sha256.json"))
    assert message(best) == (f"ckpt_path={best}: {differs.format('best.ckpt')} Fix: delete it to start the run "
                             "afresh (there is no last.ckpt beside it to resume from)")


def test_a_checkpoint_replaced_between_its_check_and_its_load_loads_the_file_that_was_checked(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_checkpoint_file({"state_dict": {"w": torch.arange(1000.0)}}, path)
    real_load = torch.load

    def replaced_first(*args, **kwargs):  # a run still training saves last.ckpt anew meanwhile
        monkeypatch.setattr(torch, "load", real_load)
        save_checkpoint_file({"state_dict": {"w": torch.zeros(1000)}}, path)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", replaced_first)
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.arange(1000.0))
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.zeros(1000))  # the new one, checked


def test_a_checkpoint_replaced_after_it_was_opened_is_checked_again_on_the_new_file(tmp_path, monkeypatch):
    from mmfuse import checkpoint_io
    path = tmp_path / "last.ckpt"
    save_checkpoint_file({"state_dict": {"w": torch.arange(1000.0)}}, path)
    checkpoint_io._verified.clear()  # as in another process
    real_checksum_path = checkpoint_io.checksum_path

    def replaced_first(p):  # the old file is open, its checksum file not read yet: a run saves anew
        monkeypatch.setattr(checkpoint_io, "checksum_path", real_checksum_path)
        save_checkpoint_file({"state_dict": {"w": torch.zeros(1000)}}, path)
        checkpoint_io._verified.clear()
        return real_checksum_path(p)

    monkeypatch.setattr(checkpoint_io, "checksum_path", replaced_first)
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.zeros(1000))


class CountingSha256:
    """``hashlib.sha256`` that records how many bytes each hash was fed."""

    def __init__(self, real, fed: list[int]) -> None:
        self.real, self.fed = real, fed

    def __call__(self, *args, **kwargs):
        h, fed, i = self.real(*args, **kwargs), self.fed, len(self.fed)
        fed.append(0)

        class Counted:
            def update(self, data) -> None:
                fed[i] += len(memoryview(data).cast("B"))
                h.update(data)

            def hexdigest(self) -> str:
                return h.hexdigest()

        return Counted()


def test_a_checkpoint_is_hashed_once_when_written_and_once_per_process_when_resumed(tmp_path, monkeypatch):
    import hashlib

    from mmfuse import checkpoint_io
    from mmfuse.checkpoint_io import check_checkpoint_file
    fed: list[int] = []
    monkeypatch.setattr(hashlib, "sha256", CountingSha256(hashlib.sha256, fed))
    path = tmp_path / "last.ckpt"
    save_checkpoint_file({"state_dict": {"w": torch.arange(1000.0)}}, path)
    size = path.stat().st_size

    def resume() -> int:  # what a resume does: resume.py checks the file, then Lightning loads it
        fed.clear()
        check_checkpoint_file(path)
        CheckpointIO().load_checkpoint(path)
        return fed.count(size)

    assert fed.count(size) == 1  # while writing, not read back
    assert resume() == 0  # written by this process
    checkpoint_io._verified.clear()  # another process
    assert resume() == 1
    assert resume() == 0


def test_a_resumed_run_removes_the_temporary_files_of_killed_saves_and_does_not_count_them(make_cfg):
    cfg = make_cfg(*TINY, "test=false")
    run_dir = Path(cfg.paths.output_dir)
    train(cfg)
    checkpoints = run_dir / "checkpoints"
    whole = run_disk_usage(run_dir)["checkpoints"]
    stale = [checkpoints / ".last.ckpt.k3x_9a0b.tmp", checkpoints / ".last.ckpt.sha256.json.0abcdefg.tmp"]
    kept = [checkpoints / ".notes.tmp", checkpoints / "mine.tmp", run_dir / ".last.ckpt.k3x_9a0b.tmp"]
    for p in stale + kept:
        p.write_bytes(b"x" * 1000)
    assert run_disk_usage(run_dir)["checkpoints"] == whole + 2000  # the two other files of checkpoints/
    mark_unfinished(run_dir)
    train(make_cfg(*TINY, "test=false"))
    assert [p.exists() for p in stale + kept] == [False, False, True, True, True]


def test_run_disk_usage_counts_temporary_checkpoint_files_as_other(tmp_path):
    for rel, size in (("checkpoints/last.ckpt", 10), ("checkpoints/.last.ckpt.ab12cd34.tmp", 4),
                      ("results.json", 7)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * size)
    assert run_disk_usage(tmp_path) == {"checkpoints": 10, "other": 11}


def test_the_file_mode_is_found_without_setting_the_umask(tmp_path, monkeypatch):
    from mmfuse.data import atomic

    old = os.umask(0o027)
    try:
        def no_umask(mask):
            raise AssertionError("os.umask called: a file another thread creates meanwhile gets mode 0666")
        monkeypatch.setattr(os, "umask", no_umask)
        assert oct(atomic.new_file_mode()) == oct(0o640)
        atomic.atomic_write_json({"a": 1}, tmp_path / "x.json")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert oct((tmp_path / "x.json").stat().st_mode & 0o777) == oct(0o640)


def test_checkpoint_saves_say_what_they_save_and_lightning_logs_no_default(make_cfg, caplog):
    cfg = make_cfg(*TINY, "test=false", "callbacks=resumable", "callbacks.step_checkpoint.every_n_train_steps=1",
                   "+trainer.max_steps=2")
    with caplog.at_level(logging.INFO):
        results = train(cfg)
    assert (results["status"], results["steps"]) == ("completed", 2)
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in caplog.messages  # Lightning's INFO records are here
    assert [m for m in caplog.messages if "weights_only" in m] == []
