"""Issue 13, entry points and run lifecycle: signals, wrapped user errors, corrupt and in-progress
``results.json``, file modes, validation, start-up imports, ``train.log``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import CONF_DIR, FAST, ROOT
from mmfuse.data.atomic import atomic_torch_save, atomic_write_json
from mmfuse.errors import MMFuseError
from mmfuse.train import train
from mmfuse.validate import validate_train_config

# ---- file modes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_files_get_the_umasks_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json({"a": 1}, tmp_path / "results.json")
        atomic_torch_save({"a": 1}, tmp_path / "x.pt")
    finally:
        os.umask(old)
    assert oct((tmp_path / "results.json").stat().st_mode & 0o777) == oct(mode)
    assert oct((tmp_path / "x.pt").stat().st_mode & 0o777) == oct(mode)


# ---- validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (("fusion.dim=0",), "fusion.dim=0 must be >= 1, e.g. fusion.dim=256"),
    (("fusion=co_attention", "fusion.heads=0"), "fusion.heads=0 must be >= 1, e.g. fusion.heads=4"),
    (("fusion=block", "fusion.rank=2.5"), "fusion.rank=2.5 is not an integer: give an integer, e.g. fusion.rank=4"),
    (("fusion=mfh", "fusion.order=-1"), "fusion.order=-1 must be >= 1, e.g. fusion.order=2"),
    (("fusion=concat", "++fusion.hidden=[64,0]"),
     "fusion.hidden=[64, 0]: item 1 (0) is not a width >= 1, e.g. fusion.hidden=[32] (or [] for none)"),
    (("fusion=tfn", "fusion.hidden=0"), "fusion.hidden=0 must be >= 1, e.g. fusion.hidden=32"),
    (("fusion.dropout=1.5",), "fusion.dropout=1.5 must be <= 1, e.g. fusion.dropout=0.1"),
    (("optimizer.lr=nan",), "optimizer.lr=nan is not a finite number: give one, e.g. optimizer.lr=1e-3"),
    (("optimizer.lr=inf",), "optimizer.lr=inf is not a finite number: give one, e.g. optimizer.lr=1e-3"),
    (("optimizer.weight_decay=nan",),
     "optimizer.weight_decay=nan is not a finite number: give one, e.g. optimizer.weight_decay=0.01"),
    (("lr_mult.text_encoder=nan",), "lr_mult.text_encoder=nan is not a finite number: give one, e.g. lr_mult.text_encoder=0.1"),
    (("scheduler.warmup_fraction=2",), "scheduler.warmup_fraction=2 must be <= 1, e.g. scheduler.warmup_fraction=0.05"),
    (("trainer.max_epochs=-1",),
     "trainer.max_epochs=-1 (Lightning's 'no limit') gives the run no end, and the learning-rate schedule is laid out "
     "over its length. Fix: give a number of epochs, e.g. trainer.max_epochs=10, or of optimizer steps, e.g. "
     "+trainer.max_steps=1000"),
    (("+trainer.max_steps=-2",), "trainer.max_steps=-2 must be >= -1, e.g. trainer.max_steps=1000"),
])
def test_bad_values_are_refused_with_one_line(make_cfg, overrides, message):
    with pytest.raises(MMFuseError) as refused:
        validate_train_config(make_cfg(*overrides))
    assert str(refused.value) == message


@pytest.mark.parametrize("group", ["fusion", "experiment", "debug"])
def test_every_shipped_config_passes_validation(make_cfg, group):
    for option in sorted((CONF_DIR / group).glob("*.yaml")):
        validate_train_config(make_cfg(f"{group}={option.stem}"))


def test_no_epoch_limit_with_a_step_limit_trains_exactly_those_steps(make_cfg):
    results = train(make_cfg(*FAST, "trainer.max_epochs=-1", "+trainer.max_steps=3", "test=false"))
    assert (results["status"], results["steps"]) == ("completed", 3)


# ---- start-up: no torch or Lightning before a run starts ------------------------------------------------

def _imported(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    modules = {ln.rsplit("|", 1)[1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
    return proc, modules


@pytest.mark.parametrize("args, code, says", [
    (("train.py", "--help"), 0, "== Configuration groups =="),
    (("eval.py", "--help"), 0, "== Configuration groups =="),
    (("train.py", "fusion=atention"), 1, "Could not find 'fusion/atention'"),
])
def test_help_and_a_misspelt_option_import_neither_torch_nor_lightning(args, code, says):
    proc, modules = _imported(*args)
    assert proc.returncode == code and says in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert "omegaconf" in modules  # the import log was read
    assert not {m for m in modules if m.split(".")[0] in ("torch", "lightning", "transformers", "torchvision")}
