"""Train a fusion model: ``python train.py [group=option ...] [key=value ...]`` (see README.md)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # imported here, once Hydra has parsed the command line: --help, a misspelt option or a config
    # error then answer at once instead of after seconds of importing torch and Lightning, and
    # Lightning's loggers, imported after Hydra's job logging is set up, write to train.log too
    from mmfuse.cli import run_entry
    from mmfuse.train import train

    return run_entry(train, cfg)


if __name__ == "__main__":
    main()
