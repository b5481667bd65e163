"""The same runs read back from the W&B API (``--wandb ENTITY/PROJECT``), for runs logged online.

mmfuse's W&B runs carry, in their config under ``mmfuse``, the overrides and group choices, and in their
summary the final metrics, ``status`` and ``wall_time_s`` (see ``mmfuse.loggers``).
"""

from __future__ import annotations

from typing import Any

from mmfuse.compare.runs import Run, parse_overrides
from mmfuse.errors import MMFuseError
from mmfuse.loggers import wandb_credentials_present

STATES = {"finished": "completed", "failed": "failed", "crashed": "failed", "killed": "failed",
          "running": "running"}


def run_from_wandb(run: Any) -> Run:
    """One W&B API run (``wandb.apis.public.Run``) as a ``Run``."""
    config = dict(run.config or {})
    meta = config.get("mmfuse") or {}
    summary = {k: v for k, v in dict(run.summary or {}).items()}
    state = STATES.get(run.state, run.state)
    if state == "completed" and summary.get("status") not in (None, "completed"):
        state = str(summary["status"])
    metrics = {k: float(v) for k, v in summary.items()
               if k.startswith(("val/", "test/")) and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return Run(name=run.name or run.id, status=state, overrides=parse_overrides(meta.get("overrides") or []),
               choices=dict(meta.get("choices") or {}), metrics=metrics,
               wall_time_s=summary.get("wall_time_s", summary.get("_runtime")),
               error=None if state == "completed" else f"W&B state {run.state}", source=getattr(run, "url", ""))


def collect_wandb(path: str, group: str | None = None, api: Any = None) -> list[Run]:
    """The runs of W&B project ``ENTITY/PROJECT`` (of one group when given: a sweep's group is its directory)."""
    if path.count("/") != 1 or not all(path.split("/")):
        raise MMFuseError(f"--wandb {path!r}: give ENTITY/PROJECT, e.g. --wandb my-team/mmfuse")
    if api is None:
        if not wandb_credentials_present():
            raise MMFuseError("--wandb needs W&B credentials and network access: run `wandb login` or set "
                              "WANDB_API_KEY. Offline runs: compare their run directories instead, or upload "
                              "them with `wandb sync <run dir>/wandb/offline-run-*` first")
        import wandb

        try:
            api = wandb.Api(timeout=30)
        except Exception as e:
            raise MMFuseError(f"--wandb {path}: cannot reach W&B ({type(e).__name__}: {e})") from None
    try:
        found = list(api.runs(path, filters={"group": group} if group else {}))
    except Exception as e:
        raise MMFuseError(f"--wandb {path}: cannot list runs ({type(e).__name__}: {e})") from None
    if not found:
        raise MMFuseError(f"--wandb {path}: no runs{f' in group {group!r}' if group else ''}")
    return [run_from_wandb(r) for r in found]
