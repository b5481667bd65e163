"""What the entry points do around ``train`` / ``evaluate``: clear one-line errors, sweep-safe failures."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from mmfuse.errors import MMFuseError
from mmfuse.runinfo import is_multirun

log = logging.getLogger("mmfuse")


def run_entry(fn: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run ``fn(cfg)`` and return the value of ``cfg.optimized_metric`` (for sweepers).

    A user error (``MMFuseError``) ends a single run with one line on stderr and exit code 2. In a
    multirun, a failing job is recorded as failed in its ``results.json`` and the sweep goes on.
    """
    try:
        results = fn(cfg)
    except MMFuseError as e:
        if is_multirun():
            log.error("job failed: %s", e)
            return None
        print(f"mmfuse: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        if is_multirun():
            log.exception("job failed")
            return None
        raise
    value = results.get("metrics", {}).get(cfg.get("optimized_metric"))
    return float(value) if value is not None else None
