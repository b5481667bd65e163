"""Facts about the current run: its Hydra overrides and choices, process rank, library versions."""

from __future__ import annotations

import os
import platform
from typing import Any

from omegaconf import DictConfig, OmegaConf


def hydra_runtime() -> Any | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun() -> bool:
    from hydra.types import RunMode

    hc = hydra_runtime()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def task_overrides() -> list[str]:
    hc = hydra_runtime()
    return list(hc.overrides.task) if hc is not None else []


def group_choices() -> dict[str, str]:
    hc = hydra_runtime()
    if hc is None:
        return {}
    return {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items()
            if v is not None and not k.startswith("hydra/")}


def global_rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var) not in (None, ""):
            return int(os.environ[var])
    return 0


def is_global_zero() -> bool:
    return global_rank() == 0


def host_info() -> dict[str, Any]:
    """Where the run ran: host name, the GPUs it was given (``CUDA_VISIBLE_DEVICES``), SLURM job id."""
    return {"hostname": platform.node(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def versions() -> dict[str, str]:
    import lightning
    import torch

    import mmfuse

    return {"mmfuse": mmfuse.__version__, "torch": torch.__version__, "lightning": lightning.__version__,
            "python": platform.python_version()}


def checkpoint_payload(cfg: DictConfig) -> dict[str, Any]:
    """What a checkpoint carries to rebuild its model: the resolved config, overrides and choices, and the
    config search path (``hydra.searchpath``: one's own config groups, for ``eval.py``'s recomposition)."""
    config = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
              for k, v in cfg.items() if k != "hydra"}
    hc = hydra_runtime()
    return {"config": config, "overrides": task_overrides(), "choices": group_choices(),
            "searchpath": list(hc.searchpath) if hc is not None else []}
