"""Logger factories that need more than a ``_target_`` (W&B), and what every run tells its loggers.

W&B (``logger=wandb``): one W&B run per job. Unless set in ``conf/logger/wandb.yaml``:

- ``group``: the sweep directory (``multirun/<date>/<time>``) for sweep jobs, ``runs`` for single runs;
- ``name``: in a sweep, the job number and the values of the swept keys (``3|fusion=add,optimizer.lr=0.001``);
  else the overrides, or the run directory's name;
- ``tags``: ``fusion:<x>``, ``image:<x>``, ``text:<x>``, ``data:<x>``, ``task:<x>`` from the config
  groups, plus the configured ones;
- ``job_type``: ``train`` or ``eval``;
- ``config``: the whole resolved config, and under ``mmfuse`` the overrides, group choices and run
  directory (what ``python -m mmfuse.compare --wandb`` reads back);
- summary: the final metrics, ``status`` and ``wall_time_s``; the run is finished at the end of its job,
  failed jobs included (exit code 1), so the next job of a sweep starts its own run;
- ``mode: auto``: online with credentials, otherwise offline under ``<run dir>/wandb/`` and the end of
  the job prints the ``wandb sync`` command. A job resumed in the same directory continues its W&B run.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmfuse.runinfo import group_choices, hydra_runtime, is_global_zero, is_multirun, task_overrides

log = logging.getLogger(__name__)

TAGGED_GROUPS = {"fusion": "fusion", "encoder.image": "image", "encoder.video": "video", "encoder.audio": "audio",
                 "encoder.text": "text", "data": "data", "task": "task"}  # a group set to none gives no tag
MAX_TAG = 64  # W&B's limit on a tag's length


def wandb_credentials_present() -> bool:
    """An API key in ``WANDB_API_KEY`` or a ``~/.netrc`` entry for the W&B host (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def run_identity() -> dict[str, Any]:
    """Group, name and tags of this job, from Hydra's runtime (see the module docstring)."""
    hc = hydra_runtime()
    choices = group_choices()
    tags = [f"{short}:{choices[group]}"[:MAX_TAG] for group, short in TAGGED_GROUPS.items()
            if choices.get(group) not in (None, "", "none")]
    if hc is None:
        return {"group": None, "name": None, "tags": tags}
    output_dir = Path(hc.runtime.output_dir)
    group = "runs"
    if is_multirun():  # the sweep directory, relative to the outputs directory when it is under it
        sweep_dir = (Path(hc.runtime.cwd) / hc.sweep.dir).resolve()
        outputs = (Path(hc.runtime.cwd) / os.environ.get("MMFUSE_OUTPUTS", "outputs")).resolve()
        group = str(sweep_dir.relative_to(outputs)) if sweep_dir.is_relative_to(outputs) else str(sweep_dir)
    name = hc.job.override_dirname or output_dir.name
    if is_multirun():
        swept = swept_keys(hc)
        mine = [o for o in task_overrides() if o.split("=", 1)[0].lstrip("+~") in swept]
        name = f"{hc.job.num}|{','.join(mine) if mine else name}"
    return {"group": group, "name": name[:128], "tags": tags}


def swept_keys(hc: Any) -> set[str]:
    """The keys a sweep varies: its sweeper's ``params`` (Optuna) and the sweep overrides of the command
    (``fusion=add,mul``, read from the sweep's ``multirun.yaml``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = set(OmegaConf.select(hc, "sweeper.params", default=None) or {})
    multirun = Path(hc.sweep.dir) / "multirun.yaml"
    if multirun.is_file():
        overrides = OmegaConf.load(multirun).hydra.overrides.task
        keys |= {o.key_or_group.lstrip("+~") for o in OverridesParser.create().parse_overrides(list(overrides))
                 if o.is_sweep_override()}
    return keys


def previous_wandb_id(save_dir: str | Path) -> str | None:
    """The id of the W&B run an earlier attempt of this job started in ``<save_dir>/wandb/``."""
    runs = sorted(Path(save_dir, "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


def wandb_logger(project: str, save_dir: str, entity: str | None = None, mode: str = "auto",
                 tags: list[str] | None = None, group: str | None = None, name: str | None = None,
                 job_type: str | None = None, **kwargs: Any) -> Any:
    """A Lightning ``WandbLogger`` for this job (see the module docstring for the defaults)."""
    from lightning.pytorch.loggers import WandbLogger

    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode={mode!r}: expected auto, online, offline or disabled")
    if mode == "auto":
        mode = "online" if wandb_credentials_present() else "offline"
    identity = run_identity()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline" and is_global_zero():
        log.warning("wandb: no credentials found, logging offline to %s/wandb (the sync command is printed at "
                    "the end of the job)", save_dir)
    previous = kwargs.pop("id", None) or previous_wandb_id(save_dir)
    if previous:
        kwargs.update(id=previous, resume="allow")
    return WandbLogger(project=project, entity=entity, save_dir=save_dir, mode=mode,
                       group=group or identity["group"], name=name or identity["name"], job_type=job_type,
                       tags=[*identity["tags"], *(str(t) for t in tags or [])], reinit="finish_previous", **kwargs)


def _wandb_loggers(trainer: Any) -> list[Any]:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, WandbLogger)]


def log_run_config(trainer: Any, cfg: DictConfig) -> None:
    """Give every logger the run's resolved config (W&B config, CSV ``hparams.yaml``, TensorBoard hparams)."""
    config = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
              for k, v in cfg.items() if k != "hydra"}
    config["mmfuse"] = {"overrides": task_overrides(), "choices": group_choices(),
                        "run_dir": str(Path(cfg.paths.output_dir).resolve())}
    for lg in trainer.loggers:
        lg.log_hyperparams(config)


def finish_loggers(trainer: Any, status: str, results: dict[str, Any] | None = None) -> None:
    """End this job's W&B runs: summary (final metrics, status, wall time), then ``finish`` with exit code
    0 (completed) or 1; offline runs print their ``wandb sync`` command. Never raises."""
    if trainer is None or not is_global_zero():
        return
    for lg in _wandb_loggers(trainer):
        run = getattr(lg, "_experiment", None)
        if run is None:  # the W&B run was never started (the job failed before logging anything)
            continue
        try:
            summary = {"status": status}
            if results:
                summary.update(results.get("metrics") or {})
                summary["wall_time_s"] = results.get("wall_time_s")
            run.summary.update(summary)
            offline = run.offline
            run_path = Path(run.dir).parent
            run.finish(exit_code=0 if status == "completed" else 1)
            if offline:
                print(f"[mmfuse] W&B run saved offline; upload it with: wandb sync {run_path}")
        except Exception:  # a logging failure must not turn a finished job into a failed one
            log.exception("wandb: could not finish the run")
