"""Train a fusion model: ``python train.py [group=option ...] [key=value ...]`` (see README.md)."""

import hydra
from omegaconf import DictConfig

from mmfuse.cli import run_entry
from mmfuse.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_entry(train, cfg)


if __name__ == "__main__":
    main()
