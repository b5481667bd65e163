"""Logger factories that need more than a ``_target_`` (W&B's automatic offline mode)."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    """An API key in ``WANDB_API_KEY`` or a ``~/.netrc`` entry for the W&B host (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(project: str, save_dir: str, entity: str | None = None, mode: str = "auto",
                 tags: list[str] | None = None, **kwargs: Any) -> Any:
    """A Lightning ``WandbLogger``; ``mode=auto`` logs online with credentials and offline without.

    Offline runs are written under ``<save_dir>/wandb/``; the log says how to upload them.
    """
    from lightning.pytorch.loggers import WandbLogger

    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode={mode!r}: expected auto, online, offline or disabled")
    if mode == "auto":
        mode = "online" if wandb_credentials_present() else "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline":
        log.warning("wandb: no credentials found, logging offline to %s/wandb; upload later with: "
                    "wandb sync %s/wandb/offline-run-*", save_dir, save_dir)
    return WandbLogger(project=project, entity=entity, save_dir=save_dir, mode=mode, tags=list(tags or []),
                       **kwargs)
