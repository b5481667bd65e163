"""The diagnostic options of the shapes data: ``data=shapes_diagnostic`` and the negative curriculum."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from conftest import FAST
from mmfuse.data.shapes.datamodule import ShapesDataModule
from mmfuse.errors import MMFuseError
from mmfuse.train import train
from mmfuse.types import PAIR_TYPES

EASY = {"other": 1.0, "color": 1.0, "shape": 1.0}
HARD = {"relation": 1.0, "binding": 1.0}


def types_of(dm: ShapesDataModule, split: str, stage: int | None = None) -> set[str]:
    return {PAIR_TYPES[t] for t in dm.pairs(split, stage)[2]} - {"positive"}


def test_diagnostic_config_draws_all_five_negative_types_equally(make_cfg):
    cfg = make_cfg("data=shapes_diagnostic", "data.num_val=2000")
    assert dict(cfg.data.negatives) == {t: 1.0 for t in ("other", "color", "shape", "relation", "binding")}
    dm = instantiate(cfg.data, cache_dir=None, num_train=0, num_test=0)
    assert isinstance(dm, ShapesDataModule)
    counts = dm.describe()["val"]["pair_types"]
    assert counts["positive"] == 2000
    for t in ("other", "color", "shape", "relation", "binding"):
        assert 400 - 60 < counts[t] < 400 + 60, counts  # 2000 negatives, 1/5 each


def test_curriculum_stages_pick_the_training_mix_by_epoch_and_leave_val_alone():
    dm = ShapesDataModule(num_train=300, num_val=200, num_test=0, negatives=HARD,
                          curriculum=[{"epochs": 2, "negatives": EASY}, {"epochs": 1, "negatives": {"binding": 1}}])
    assert [dm.stage_at(e) for e in range(5)] == [0, 0, 1, 2, 2]
    assert types_of(dm, "train", 0) == set(EASY)
    assert types_of(dm, "train", 1) == {"binding"}
    assert types_of(dm, "train", 2) == set(HARD) == types_of(dm, "train")
    assert types_of(dm, "val", 0) == set(HARD), "validation always uses data.negatives"
    assert dm.describe()["curriculum"][0] == {"epochs": 2, "negatives": EASY}


@pytest.mark.parametrize(("curriculum", "message"), [
    ([{"epochs": 0, "negatives": EASY}], r"data.curriculum\[0\].epochs=0"),
    ([{"epochs": 2, "negatives": {"colour": 1.0}}], r"data.curriculum\[0\].negatives: .*unknown types \['colour'\]"),
    ([{"epochs": 2}], r"data.curriculum\[0\]=.*expected \{epochs"),
])
def test_bad_curriculum_names_the_stage_and_field(curriculum, message):
    with pytest.raises(MMFuseError, match=message):
        ShapesDataModule(num_train=10, curriculum=curriculum)


def test_a_run_with_a_curriculum_trains_each_epoch_on_its_stage(make_cfg, monkeypatch):
    seen = []
    original = ShapesDataModule.train_dataloader

    def spy(self):
        loader = original(self)
        seen.append(types_of_dataset(loader.dataset))
        return loader

    def types_of_dataset(ds):
        return {PAIR_TYPES[t] for t in ds.fields["pair_type"].tolist()} - {"positive"}

    monkeypatch.setattr(ShapesDataModule, "train_dataloader", spy)
    cfg = make_cfg(*FAST, "data.negatives.relation=1", "data.negatives.binding=1", "trainer.max_epochs=3",
                   "data.curriculum=[{epochs: 1, negatives: {color: 1}}, {epochs: 1, negatives: {shape: 1}}]",
                   "+trainer.reload_dataloaders_every_n_epochs=1", "test=false")
    results = train(cfg)
    assert results["status"] == "completed"
    # the first call only sizes the schedule; then one loader per epoch
    assert seen[-3:] == [{"color"}, {"shape"}, {"other", "color", "shape", "relation", "binding"}]
    assert results["data"]["curriculum"][1] == {"epochs": 1, "negatives": {"shape": 1}}


def test_a_curriculum_without_reloading_loaders_fails_with_the_fix(make_cfg):
    cfg = make_cfg(*FAST, "data.curriculum=[{epochs: 1, negatives: {color: 1}}]", "test=false")
    with pytest.raises(MMFuseError, match="trainer.reload_dataloaders_every_n_epochs=1"):
        train(cfg)
