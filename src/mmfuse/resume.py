"""Resuming runs and sweeps from what a run directory holds (``results.json``, ``checkpoints/last.ckpt``).

A training run started in a directory that already holds a run (``hydra.run.dir=<dir>``, or a sweep
re-run with the same ``hydra.sweep.dir``) is, by that earlier run's ``results.json``:

- ``completed`` with the same overrides: skipped; its results are returned as they are;
- not completed (``running`` when its process was killed, ``failed``, ``interrupted``) with the same
  overrides: resumed from ``checkpoints/last.ckpt`` when there is one (else trained from the start);
- a run with other overrides: an error; its ``results.json``, checkpoints and logs are left as they are
  (Hydra has already rewritten the directory's ``.hydra/`` files before any job code runs).

Overrides are compared as sets, leaving out those that do not change what is trained
(``NOT_COMPARED``). An explicit ``ckpt_path`` (``last`` or a path) always wins over the automatic choice.

Mid-epoch checkpoints: ``callbacks=resumable`` adds ``StepCheckpoint`` (``last.ckpt`` every N optimizer
steps). With the train loader's resumable data order (``mmfuse.data.samplers``) and the random number
generators' states that ``StepCheckpoint`` stores in every checkpoint, a run killed in the middle of an
epoch and resumed ends with the same weights and metrics as one never stopped (deterministic mode).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from mmfuse.checkpoint_io import check_checkpoint_file, remove_temporaries
from mmfuse.data.samplers import ResumableLoader
from mmfuse.errors import MMFuseError
from mmfuse.results import FILENAME, read_results
from mmfuse.runinfo import is_global_zero

log = logging.getLogger(__name__)

# overrides that do not change what is trained: a run re-started with others of these still matches
NOT_COMPARED = ("ckpt_path", "callbacks", "logger", "hydra", "data.num_workers", "data.pin_memory",
                "trainer.enable_progress_bar", "checkpoint_frozen_encoders")


def compared_overrides(overrides: list[str]) -> list[str]:
    """The overrides that define the run: sorted, without ``NOT_COMPARED`` keys."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    kept = []
    for text, o in zip(overrides, parsed, strict=True):
        key = o.key_or_group.lstrip("+~")
        if not any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in NOT_COMPARED):
            kept.append(text.lstrip("+"))
    return sorted(kept)


def previous_run(run_dir: str | Path, overrides: list[str]) -> dict[str, Any] | None:
    """The earlier training run in ``run_dir`` (its ``results.json``), or None for a fresh directory.

    Raises ``MMFuseError``, before anything is written, when that run was another one.
    """
    results = read_results(run_dir)
    if results is None:
        return None
    if results.get("kind", "train") != "train":
        raise MMFuseError(f"{Path(run_dir) / FILENAME} is the record of a {results.get('kind')} run, not of training. "
                          "Fix: train in a new directory (drop hydra.run.dir / hydra.sweep.dir)")
    theirs, ours = compared_overrides(results.get("overrides") or []), compared_overrides(overrides)
    if theirs != ours:
        raise MMFuseError(
            f"{run_dir} already holds a run with overrides {theirs}, but this job's are {ours}. It is left as it "
            "is. Fix: use a new hydra.sweep.dir / hydra.run.dir, or re-run the original command to resume it"
        )
    return results


def checkpoint_to_resume(cfg: DictConfig, run_dir: str | Path, previous: dict[str, Any] | None) -> str | None:
    """``ckpt_path``: an explicit ``last`` / path, else this directory's ``last.ckpt`` of an unfinished run.

    The file is checked before anything is built (checksum, a whole zip archive): a truncated or
    corrupted checkpoint is an MMFuseError naming it and the fix. Lightning loads it later through
    ``mmfuse.checkpoint_io.CheckpointIO`` (``weights_only``). Resuming an unfinished run first removes
    the temporary files its killed saves left in ``checkpoints/``."""
    run_dir = Path(run_dir)
    if previous is not None and previous.get("status") != "completed" and is_global_zero():
        remove_temporaries(run_dir / "checkpoints")
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, ""):
        path = run_dir / "checkpoints" / "last.ckpt" if ckpt == "last" else Path(str(ckpt)).expanduser()
        if not path.is_file():
            raise MMFuseError(f"ckpt_path={ckpt}: {path} does not exist. Fix: give an existing checkpoint "
                              "file, or drop ckpt_path to start from scratch")
        check_checkpoint_file(path, "ckpt_path")
        return str(path)
    last = run_dir / "checkpoints" / "last.ckpt"
    if previous is not None and previous.get("status") != "completed" and last.is_file():
        check_checkpoint_file(last, "ckpt_path")
        log.warning("resuming the unfinished run in %s (status %s) from %s", run_dir, previous.get("status"), last)
        keep_metrics_csv(run_dir, int(previous.get("attempt") or 1))
        return str(last)
    return None


def keep_metrics_csv(run_dir: Path, attempt: int) -> None:
    """Lightning's CSV logger deletes an existing ``metrics.csv``: keep the earlier attempt's rows as
    ``metrics.attempt<N>.csv`` beside it."""
    if not is_global_zero():
        return
    for csv_file in run_dir.glob("*/metrics.csv"):
        csv_file.replace(csv_file.with_name(f"metrics.attempt{attempt}.csv"))


def report_skipped(run_dir: str | Path, previous: dict[str, Any]) -> dict[str, Any]:
    message = f"{run_dir} already holds this run, completed: skipped (delete the directory to train it again)"
    log.warning(message)
    print(f"[mmfuse] {message}")
    return previous


def rng_states() -> dict[str, Any]:
    """torch / numpy / Python / CUDA generator states, as tensors and tuples (loadable with weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {"torch": torch.get_rng_state(),
                              "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
                              "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class StepCheckpoint(L.Callback):
    """Writes ``<dirpath>/<filename>.ckpt`` every ``every_n_train_steps`` optimizer steps, mid-epoch included.

    Every checkpoint of the run (this one's and ``ModelCheckpoint``'s) also carries what a mid-epoch
    resume needs beyond Lightning's own state: the torch / numpy / Python random states, and the train
    loader's place in its epoch (``ResumableLoader.state_dict``). After a resume in the middle of that
    epoch, the loader skips the batches already trained on and the random states are restored just
    before the first training batch, so dropout and random augmentation continue the same streams.

    (Lightning restores a stateful train loader itself only when nothing built the loader before the
    checkpoint was loaded; ``configure_optimizers`` reading ``trainer.estimated_stepping_batches`` does,
    so the position is restored here.)
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 500, filename: str = "last") -> None:
        if int(every_n_train_steps) < 1:
            raise MMFuseError(f"callbacks.step_checkpoint.every_n_train_steps={every_n_train_steps}: give a "
                              "number of optimizer steps >= 1")
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.every = int(every_n_train_steps)
        self._saved_at = -1
        self._trainer: L.Trainer | None = None
        self._pending: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every == 0 and step != self._saved_at:
            trainer.save_checkpoint(self.path, weights_only=False)  # everything: weights, optimizer, loops
            self._saved_at = step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = self._pending.pop("data", None)
        loader = trainer.train_dataloader
        if data is not None and isinstance(loader, ResumableLoader) and data["epoch"] == trainer.current_epoch \
                and 0 < data["batches"] < len(loader):
            loader.load_state_dict(data)  # the epoch's first batches were trained on before the checkpoint

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        rng = self._pending.pop("rng", None)
        if rng is not None:
            set_rng_states(rng)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": rng_states()}
        loader = self._trainer.train_dataloader if self._trainer is not None else None
        if isinstance(loader, ResumableLoader):
            state["data"] = loader.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)
