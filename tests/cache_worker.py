"""A separate process that sets up the data of a small run with frozen encoders (feature cache on).

``python tests/cache_worker.py <run dir> <cache dir> <seconds per image batch>`` prints one JSON line:
``{"encoded": {"image": n, "text": m}, "report": ..., "digest": sha256 of the train features}``.
The delay makes encoding slow enough for the race and kill tests to act while it runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import FAST, compose_config  # noqa: E402
from mmfuse.builder import build_datamodule, build_module  # noqa: E402

OVERRIDES = (*FAST, "encoder.image.freeze=true", "encoder.text.freeze=true", "cache.batch_size=32")


def main(run_dir: str, cache_dir: str, delay: float) -> None:
    cfg = compose_config(Path(run_dir), OVERRIDES)
    with open_dict(cfg):
        cfg.paths.cache_dir = cache_dir
    torch.manual_seed(0)
    module = build_module(cfg)
    encoder = module.model.image_encoder
    forward = encoder.forward

    def slow_forward(images: torch.Tensor):
        time.sleep(delay)
        return forward(images)

    encoder.forward = slow_forward
    datamodule = build_datamodule(cfg, module)
    datamodule.setup("fit")
    train = datamodule.splits["train"]
    out = train.images.features(torch.arange(len(train.images)))
    digest = hashlib.sha256(out.pooled.numpy().tobytes()).hexdigest()
    print(json.dumps({"encoded": module.model.encoded_samples, "report": datamodule.feature_cache.report,
                      "digest": digest}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
