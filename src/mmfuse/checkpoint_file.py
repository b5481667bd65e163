"""Reading mmfuse checkpoints: for ``eval.py ckpt_path=...`` and for ``train.py init_from=...``.

``init_from`` starts a run from the model weights of another run's checkpoint (encoders, fusion, head;
the text encoder's vocabulary travels with them) and nothing else: the optimizer, the learning-rate
schedule, the epoch and step counters all start afresh. That is fine-tuning, or a later curriculum
stage after an earlier run. Resuming an interrupted run is ``ckpt_path`` (see ``mmfuse.resume``).

Both read the file with ``mmfuse.checkpoint_io.read_checkpoint`` (checksum verified, ``weights_only``)
and put back frozen encoders left out of it (``mmfuse.frozen_weights``), rebuilt from their source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfuse.checkpoint_io import read_checkpoint
from mmfuse.errors import MMFuseError
from mmfuse.frozen_weights import put_back
from mmfuse.module import CONFIG_KEY


def load_checkpoint(path_value: Any, field: str = "ckpt_path",
                    sources: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The checkpoint at ``path_value`` as a dict, frozen encoders left out of it put back (rebuilt with
    ``sources``: ``frozen_weights.put_back``); MMFuseError naming ``field`` when it is missing,
    unreadable or not written by ``train.py``."""
    if path_value in (None, "", "???"):
        raise MMFuseError(f"{field} is required: python eval.py {field}=<run dir>/checkpoints/last.ckpt")
    path = Path(str(path_value)).expanduser()
    if not path.is_file():
        raise MMFuseError(f"{field}={path_value}: no such file. Fix: give the path of an existing checkpoint "
                          f"(train that run first), e.g. {field}=outputs/runs/<date>/<time>/checkpoints/last.ckpt")
    ckpt = read_checkpoint(path, field)
    if not isinstance(ckpt, dict) or CONFIG_KEY not in ckpt or "state_dict" not in ckpt:
        raise MMFuseError(f"{field}={path_value}: not an mmfuse checkpoint (it has no '{CONFIG_KEY}'); "
                          "give a checkpoint written by python train.py")
    put_back(ckpt, f"{field}={path_value}", sources=sources)
    return ckpt


def load_initial_weights(module: nn.Module, path_value: Any) -> None:
    """Copy the model weights of the checkpoint at ``path_value`` into ``module`` (all of them, shapes
    equal); MMFuseError naming the differing keys and the checkpoint's model choices otherwise."""
    ckpt = load_checkpoint(path_value, field="init_from")
    own = module.state_dict()
    theirs = ckpt["state_dict"]
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    mismatched = sorted(k for k in set(own) & set(theirs)
                        if isinstance(own[k], torch.Tensor) and isinstance(theirs[k], torch.Tensor)
                        and own[k].shape != theirs[k].shape)
    if missing or unexpected or mismatched:
        saved_choices = ckpt[CONFIG_KEY].get("choices", {})
        groups = ", ".join(f"{g}={o}" for g, o in sorted(saved_choices.items())
                           if g.startswith(("encoder", "fusion", "task")))
        details = "; ".join(f"{name}: {keys[:3]}{' ...' if len(keys) > 3 else ''}" for name, keys in
                            (("missing", missing), ("unexpected", unexpected), ("shape differs", mismatched))
                            if keys)
        raise MMFuseError(f"init_from={path_value}: its weights do not fit this model ({details}). "
                          f"It was trained with {groups or 'other model settings'}; use the same encoders, "
                          "fusion, task and widths, or drop init_from")
    module.load_state_dict(theirs)
