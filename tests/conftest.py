"""Shared fixtures: compose the real config (like lightning-hydra-template) and shrink it for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SHARED = ROOT.parent / "shared"

FAST = ("debug=fast",)


def compose_config(tmp_path: Path, overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The real composed config, with outputs under ``tmp_path`` and Hydra's runtime info set."""
    GlobalHydra.instance().clear()
    initialize_config_dir(str(CONF_DIR), version_base="1.3")  # stays initialised: eval composes again
    cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
        cfg.paths.cache_dir = str(tmp_path / "cache")
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str, subdir: str = "run", config_name: str = "train") -> DictConfig:
        out = tmp_path / subdir
        out.mkdir(parents=True, exist_ok=True)
        return compose_config(out, overrides, config_name)

    yield make
    GlobalHydra.instance().clear()


def run_cli(script: str, *args: str, outputs: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python <script> args`` from the repository root with outputs under ``outputs``."""
    full_env = {**os.environ, "MMFUSE_OUTPUTS": str(outputs), "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


class Items(torch.utils.data.Dataset):
    """A dataset whose sample ``i`` is ``i`` (for samplers and loaders)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def needs_shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test asset {path} is absent (../shared sits beside the clone in CI)")
    return path
