"""What ``eval.py`` selects before Hydra composes: the checkpoint's own ``data`` / ``task`` / ``decoder``.

``python eval.py ckpt_path=X task.generate.num_beams=3`` names a key of the checkpoint's task group,
which the eval config (``task=itm``, ``data=shapes`` by default) does not have; Hydra would refuse it.
So ``eval.py`` first reads the training run's choices of ``GROUPS_FROM_CHECKPOINT`` from the checkpoint
(memory-mapped: the weights are not read) and puts those the command does not select itself in front
of its arguments; ``GROUPS_ENV`` tells ``mmfuse.evaluate`` which arguments it added, so that results.json
records what the user typed. Imports nothing heavy until a checkpoint is given (``eval.py --help`` stays
free of torch and Lightning).
"""

from __future__ import annotations

from pathlib import Path

CONFIG_KEY = "mmfuse_config"  # where a checkpoint keeps its run's config (mmfuse.module)
GROUPS_FROM_CHECKPOINT = ("data", "task", "decoder")
GROUPS_ENV = "MMFUSE_EVAL_GROUPS"


def checkpoint_groups(args: list[str]) -> list[str]:
    """``["data=<option>", "task=<option>", "decoder=<option>"]``: the training run's choices of
    ``GROUPS_FROM_CHECKPOINT`` that ``args`` (an eval command line) do not select, read from the
    checkpoint named by its ``ckpt_path=``; ``[]`` when there is none or it cannot be read
    (``mmfuse.evaluate`` then reports why)."""
    paths = [a.split("=", 1)[1] for a in args if a.startswith("ckpt_path=")]
    if not paths or not Path(paths[-1]).expanduser().is_file():
        return []
    try:
        import torch

        saved = torch.load(Path(paths[-1]).expanduser(), map_location="cpu", weights_only=True, mmap=True)
        choices = saved[CONFIG_KEY].get("choices") or {}
    except Exception:  # an unreadable file: evaluate() raises the error that names it
        return []
    selected = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    return [f"{g}={choices[g]}" for g in GROUPS_FROM_CHECKPOINT if choices.get(g) and g not in selected]
