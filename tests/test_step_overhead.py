"""What keeps mmfuse's per-step cost near a hand-written loop, checked for behaviour (the timing itself is
in experiments/benchmarks/overhead.py): batches as index tensors, the batch mover, logging only on the
steps the loggers write, no progress bar when none is configured, the garbage collector kept off the
setup objects during training."""

from __future__ import annotations

import csv
import gc
import weakref
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import FAST, Items
from mmfuse.builder import build_datamodule, build_module, build_trainer
from mmfuse.data.samplers import ResumableLoader, TrainBatches, TrainOrder
from mmfuse.datamodule import collate, move_to
from mmfuse.errors import MMFuseError
from mmfuse.module import MMFuseModule
from mmfuse.train import setup_objects_frozen, train
from mmfuse.types import EncoderOutput


@pytest.mark.parametrize("n,world,b", [(40, 1, 8), (43, 1, 8), (43, 2, 8), (7, 3, 2), (1, 2, 4)])
def test_train_batches_are_the_train_order_cut_into_batches(n, world, b):
    for rank in range(world):
        order = TrainOrder(Items(n), batch_size=b, world=world, rank=rank, seed=5)
        batches = TrainBatches(Items(n), batch_size=b, world=world, rank=rank, seed=5)
        for epoch in (0, 2):
            order.set_epoch(epoch)
            batches.set_epoch(epoch)
            samples = list(order)
            got = list(batches)
            assert all(t.dtype == torch.long and t.ndim == 1 for t in got)
            assert [t.tolist() for t in got] == [samples[k:k + b] for k in range(0, len(samples), b)]
            assert len(batches) == len(got)


def test_a_resumed_loader_of_train_batches_continues_the_epoch():
    data = Items(30)

    def loader() -> ResumableLoader:
        return ResumableLoader(data, batch_size=None, sampler=TrainBatches(data, 4, seed=3))

    full = loader()
    full.sampler.set_epoch(1)
    every = [t.tolist() for t in full]
    it = iter(full)
    seen = [next(it).tolist() for _ in range(3)]
    fresh = loader()
    fresh.load_state_dict(full.state_dict())
    assert seen + [t.tolist() for t in fresh] == every
    assert len(fresh) == len(every) == 8


def test_the_train_loader_gives_the_batches_of_the_sample_by_sample_loader(make_cfg):
    cfg = make_cfg(*FAST, "data.batch_size=24")
    datamodule = build_datamodule(cfg, build_module(cfg))
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert isinstance(loader.sampler, TrainBatches) and loader.batch_size is None
    dataset = datamodule.splits["train"]
    order = TrainOrder(dataset, 24, seed=loader.sampler.seed)
    by_sample = DataLoader(dataset, batch_size=24, sampler=order, collate_fn=collate)
    ours, theirs = list(loader), list(by_sample)
    assert len(ours) == len(theirs) == len(loader) == -(-len(dataset) // 24)
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_move_to_moves_every_tensor_and_keeps_the_containers():
    features = EncoderOutput(torch.ones(2, 3), torch.zeros(2, 1, 3), torch.ones(2, 1, dtype=torch.bool))
    batch = {"label": torch.tensor([1, 0]), "image_features": features, "parts": [torch.ones(1), (torch.ones(2),)],
             "name": "x", "count": 2}
    same = move_to(batch, torch.device("cpu"))
    assert same["label"] is batch["label"] and same["image_features"].pooled is features.pooled  # no copies
    meta = move_to(batch, torch.device("meta"))
    assert type(meta["image_features"]) is EncoderOutput
    assert all(t.device.type == "meta" for t in meta["image_features"])
    assert meta["label"].device.type == "meta" and meta["parts"][0].device.type == "meta"
    assert isinstance(meta["parts"][1], tuple) and meta["parts"][1][0].device.type == "meta"
    assert meta["name"] == "x" and meta["count"] == 2


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_the_loss_is_logged_on_exactly_the_steps_the_loggers_write(make_cfg, monkeypatch):
    every = make_cfg(*FAST, "trainer.log_every_n_steps=1", subdir="every")
    train(every)
    all_steps = _losses(Path(every.paths.output_dir))  # read now: output_dir follows the latest config
    third = make_cfg(*FAST, "trainer.log_every_n_steps=3", subdir="third")
    calls = []
    log = MMFuseModule.log
    monkeypatch.setattr(MMFuseModule, "log", lambda self, name, *a, **k: (calls.append(name), log(self, name, *a, **k)))
    train(third)
    assert calls.count("train/loss") == 2  # self.log is not called on the steps nothing is written
    logged = _losses(Path(third.paths.output_dir))
    assert len(all_steps) == 8  # 512 pairs / 64
    assert sorted(logged) == [s for s in sorted(all_steps) if (s + 1) % 3 == 0] == [2, 5]
    assert all(logged[s] == all_steps[s] for s in logged)  # this step's loss, not an earlier one


def test_no_progress_bar_callback_means_no_progress_bar(make_cfg):
    cfg = make_cfg(*FAST)  # debug=fast sets callbacks.progress_bar=null
    module = build_module(cfg)
    assert build_trainer(cfg, module.task).progress_bar_callback is None
    cfg = make_cfg(*FAST, "++trainer.enable_progress_bar=true", subdir="asked")
    assert build_trainer(cfg, module.task).progress_bar_callback is not None
    cfg = make_cfg(subdir="default")  # the configured one is kept
    bar = build_trainer(cfg, module.task).progress_bar_callback
    assert type(bar).__name__ == "TQDMProgressBar" and bar.refresh_rate == 20


class FreezeProbe(L.Callback):
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.frozen_counts: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.frozen_counts.append(gc.get_freeze_count())
        if self.fail:
            raise RuntimeError("probe failure")


def test_setup_objects_are_frozen_while_training_and_handed_back_after(make_cfg, monkeypatch):
    assert gc.get_freeze_count() == 0
    with setup_objects_frozen():
        assert gc.get_freeze_count() > 100_000  # torch, Lightning, Hydra ... are in the heap by now
    assert gc.get_freeze_count() == 0
    for fail in (False, True):
        probe = FreezeProbe(fail)
        monkeypatch.setattr("mmfuse.train.build_trainer",
                            lambda cfg, task, probe=probe: _with_callback(build_trainer(cfg, task), probe))
        cfg = make_cfg(*FAST, "test=false", subdir=f"fail{fail}")
        if fail:
            with pytest.raises(RuntimeError, match="probe failure"):
                train(cfg)
        else:
            train(cfg)
        assert probe.frozen_counts and min(probe.frozen_counts) > 100_000
        assert gc.get_freeze_count() == 0


def _with_callback(trainer: L.Trainer, callback: L.Callback) -> L.Trainer:
    trainer.callbacks.append(callback)
    return trainer


def test_garbage_from_before_training_is_collected_not_frozen():
    """An earlier run's trainer and module (a reference cycle) must not be frozen into the permanent
    generation by the next run: in a sweep run in one process they would never be freed."""
    class Run:
        pass

    earlier = Run()
    earlier.me = earlier  # a cycle: only the cyclic collector frees it
    alive = weakref.ref(earlier)
    del earlier
    with setup_objects_frozen():
        gc.collect()
        assert alive() is None


def test_the_loss_is_logged_every_step_when_a_callback_monitors_it(make_cfg, monkeypatch, tmp_path):
    cfg = make_cfg(*FAST, "trainer.log_every_n_steps=3", "test=false",
                   "+callbacks.watch._target_=lightning.pytorch.callbacks.ModelCheckpoint",
                   "+callbacks.watch.monitor=train/loss", "+callbacks.watch.every_n_train_steps=2",
                   f"+callbacks.watch.dirpath={tmp_path / 'watch'}")
    calls = []
    log = MMFuseModule.log
    monkeypatch.setattr(MMFuseModule, "log", lambda self, name, *a, **k: (calls.append(name), log(self, name, *a, **k)))
    train(cfg)
    assert calls.count("train/loss") == 8  # every step of 512 pairs / 64


def test_overfit_batches_is_refused_with_the_fix(make_cfg):
    with pytest.raises(MMFuseError, match=r"trainer.overfit_batches=2: not supported .* Fix: .*data.num_train"):
        train(make_cfg(*FAST, "+trainer.overfit_batches=2"))
