"""Evaluate a checkpoint: ``python eval.py ckpt_path=<run>/checkpoints/last.ckpt [data overrides]``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from mmfuse.cli import run_entry  # imported only for a run (see train.py)
    from mmfuse.evaluate import evaluate

    return run_entry(evaluate, cfg)


if __name__ == "__main__":
    main()
