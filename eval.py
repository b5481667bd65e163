"""Evaluate a checkpoint: ``python eval.py ckpt_path=<run>/checkpoints/last.ckpt [data overrides]``."""

import os
import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from mmfuse.cli import run_entry  # imported only for a run (see train.py)
    from mmfuse.evaluate import evaluate

    return run_entry(evaluate, cfg)


if __name__ == "__main__":
    from mmfuse.eval_groups import GROUPS_ENV, checkpoint_groups  # light: no torch for --help

    # the checkpoint's data / task / decoder groups first, so that their keys can be overridden
    groups = checkpoint_groups(sys.argv[1:])
    os.environ[GROUPS_ENV] = "\n".join(groups)
    sys.argv = [sys.argv[0], *groups, *sys.argv[1:]]
    main()
