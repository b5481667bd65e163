"""``python -m mmfuse.explain ckpt_path=<run>/checkpoints/best.ckpt n=16 [methods=[gradcam,ig]]``."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF = Path(__file__).resolve().parents[3] / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="explain")
def main(cfg: DictConfig) -> None:
    from mmfuse.cli import run_entry
    from mmfuse.explain.run import explain

    run_entry(explain, cfg)


if __name__ == "__main__":
    if not (CONF / "explain.yaml").is_file():
        sys.exit(f"mmfuse.explain: no {CONF}/explain.yaml; install mmfuse from its repository (pip install -e .)")
    from mmfuse.eval_groups import GROUPS_ENV, checkpoint_groups

    groups = checkpoint_groups(sys.argv[1:])
    os.environ[GROUPS_ENV] = "\n".join(groups)
    sys.argv = [sys.argv[0], *groups, *sys.argv[1:]]
    main()
