"""``evaluate(cfg)``: rebuild a model from a checkpoint alone and evaluate it, writing ``results.json``.

The checkpoint carries the training run's resolved config and its command-line overrides. The eval
config is recomposed from those overrides with the eval command's own on top; then

- the model sections (``encoder``, ``fusion``, ``task``) come from the checkpoint, so they match its
  weights;
- the sections that shaped the data (``data``, ``cache``: ``CARRIED_SECTIONS``) are the training
  run's resolved values, whatever set them (``debug=fast``, an experiment, a group default), with the
  eval command's overrides of their keys on top (``data.root=<other folder>``, ``data.seed=5``: other
  data of the same kind). Values the config derives from other keys (``${paths.cache_dir}/shapes``)
  are derived again for the eval run. Selecting another option of the group than the training run's
  (``data=coco_captions`` for a run on shapes) drops the training run's section: the data is then that
  option's, with the eval command's keys.

Config groups of one's own folder (``hydra.searchpath=[file://<folder>/conf]``, README guide "Adding your
own fusion") are found again: the recomposition searches the eval command's search path and then the
training run's, which the checkpoint carries (``searchpath``).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from mmfuse.builder import build_datamodule, build_module, configured_modalities
from mmfuse.checkpoint_file import load_checkpoint
from mmfuse.eval_groups import GROUPS_ENV
from mmfuse.frozen_weights import source_overrides
from mmfuse.module import CONFIG_KEY
from mmfuse.predictions import path_for
from mmfuse.report import print_summary
from mmfuse.results import RunRecord, failure_fields
from mmfuse.runinfo import hydra_runtime, task_overrides, versions

MODEL_SECTIONS = ("encoder", "fusion", "task", "decoder")
# keys of the model sections an eval command may change: how a decoder searches, not what was trained
EVAL_MODEL_KEYS = ("task.generate.",)
CARRIED_SECTIONS = ("data", "cache")
NOT_INHERITED = ("hydra", "ckpt_path", "hparams_search", "debug", "paths")


def _key(override: Any) -> str:
    return override.key_or_group


def apply_eval_model_keys(eval_cfg: DictConfig, user: list[str]) -> None:
    """The eval command's overrides of ``EVAL_MODEL_KEYS`` on top of the checkpoint's model sections."""
    for o in OverridesParser.create().parse_overrides(user):
        key = _key(o)
        if key.startswith(EVAL_MODEL_KEYS):
            OmegaConf.update(eval_cfg, key, o.value(), merge=True)


def merge_overrides(saved: list[str], user: list[str]) -> list[str]:
    """The training run's overrides with the user's on top.

    A saved override is dropped when the user overrides the same key, when the user selects another
    option of its group (``data=x`` drops the saved ``data.root=...``), or when it configured the
    training run itself rather than the model and data (``NOT_INHERITED``).
    """
    parser = OverridesParser.create()
    user_parsed = parser.parse_overrides(user)
    user_keys = {_key(o) for o in user_parsed}
    user_groups = {_key(o) for o in user_parsed if "." not in _key(o) or _key(o).startswith("encoder.")}
    kept = []
    for text, o in zip(saved, parser.parse_overrides(saved), strict=True):
        key = _key(o)
        root = key.split("/")[0].split(".")[0]
        if key in user_keys or root in NOT_INHERITED or key.lstrip("+~") in NOT_INHERITED:
            continue
        if any(key.startswith(g + ".") for g in user_groups):
            continue
        kept.append(text)
    return kept + list(user)


def searchpath_override(saved: list[str]) -> list[str]:
    """``["hydra.searchpath=[...]"]`` for recomposing the training run's config: the eval command's search
    path (its ``hydra.searchpath`` override, else its primary config's) followed by the training run's
    ``saved`` one, each entry once; ``[]`` when both are empty. (Hydra's ``compose`` sees no search path
    but the one in its overrides.)"""
    hc = hydra_runtime()
    own = list(hc.searchpath) if hc is not None else []
    paths = list(dict.fromkeys([*own, *saved]))
    return [f"hydra.searchpath=[{','.join(_quoted(p) for p in paths)}]"] if paths else []


def _quoted(text: str) -> str:
    """``text`` as a quoted string of Hydra's override grammar: backslashes before a quote (or the end)
    doubled, quotes escaped."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\" + m.group(2) if m.group(2) else ""),
                        text) + "'"


def carried_section(section: str, composed: dict[str, Any], saved: dict[str, Any], user: list[str]) -> dict[str, Any]:
    """The training run's ``saved`` values of ``section``, with the user's overrides of its keys and
    the interpolated values of ``composed`` (the eval config's section, unresolved) on top."""
    out = copy.deepcopy(saved)
    for path in _interpolated(composed):
        _set(out, path, _get(composed, path))
    for o in OverridesParser.create().parse_overrides(user):
        key = _key(o).lstrip("+~")
        if not key.startswith(section + "."):
            continue
        path = key[len(section) + 1:].split(".")
        if o.is_delete():
            _delete(out, path)
        else:
            _set(out, path, _get(composed, path))
    return out


def _interpolated(node: Any, path: tuple[str, ...] = ()) -> list[list[str]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _interpolated(v, (*path, str(k)))]
    return [list(path)] if isinstance(node, str) and "${" in node else []


def _get(tree: dict[str, Any], path: list[str]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _set(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        if not isinstance(tree.get(part), dict):
            tree[part] = {}
        tree = tree[part]
    tree[path[-1]] = copy.deepcopy(value)


def _delete(tree: dict[str, Any], path: list[str]) -> None:
    for part in path[:-1]:
        tree = tree.get(part) if isinstance(tree.get(part), dict) else {}
    tree.pop(path[-1], None)


def carry_data_settings(eval_cfg: DictConfig, saved: dict[str, Any], user: list[str]) -> None:
    """Replace ``eval_cfg``'s ``CARRIED_SECTIONS`` by the training run's (see the module docstring);
    ``saved`` is the checkpoint's payload (``runinfo.checkpoint_payload``)."""
    saved_config, choices = saved["config"], saved.get("choices") or {}
    chosen = {_key(o).lstrip("+~"): str(o.value()) for o in OverridesParser.create().parse_overrides(user)}
    switched = {section for section in CARRIED_SECTIONS if section in chosen and chosen[section] != choices.get(section)}
    for section in CARRIED_SECTIONS:
        if section in switched or not isinstance(saved_config.get(section), dict) or section not in eval_cfg:
            continue  # another option of the group chosen, or a checkpoint without the section
        composed = OmegaConf.to_container(eval_cfg[section], resolve=False)
        eval_cfg[section] = OmegaConf.create(carried_section(section, composed, saved_config[section], user))


@dataclass
class Rebuilt:
    """A checkpoint's model rebuilt for evaluation: the eval config (model sections from the checkpoint,
    data sections carried, see the module docstring), the checkpoint's payload (``saved``), the module with
    its weights loaded, and the eval command's own overrides (``user``)."""

    cfg: DictConfig
    saved: dict[str, Any]
    module: Any
    user: list[str]

    def datamodule(self) -> Any:
        """A new datamodule for ``cfg`` (its preprocessing attached from the module's encoders)."""
        return build_datamodule(self.cfg, self.module)


def rebuild(cfg: DictConfig, typed: list[str], config_name: str = "eval") -> Rebuilt:
    """Load ``cfg.ckpt_path`` and rebuild its module under the eval config that ``typed`` (the eval
    command's overrides) composes with the training run's (``config_name``: a config that extends ``eval``,
    such as ``explain``); seeds with ``cfg.seed`` when set."""
    ckpt = load_checkpoint(cfg.get("ckpt_path"), sources=source_overrides(task_overrides()))
    saved = ckpt[CONFIG_KEY]
    user = [o for o in typed if not o.startswith("ckpt_path=")]
    eval_cfg = compose(config_name=config_name, overrides=merge_overrides(saved.get("overrides", []), user)
                       + [f"ckpt_path={cfg.ckpt_path}"] + searchpath_override(saved.get("searchpath", [])))
    with open_dict(eval_cfg):
        carry_data_settings(eval_cfg, saved, user)
        for section in MODEL_SECTIONS:
            if section in saved["config"]:
                eval_cfg[section] = OmegaConf.create(saved["config"][section])
        apply_eval_model_keys(eval_cfg, user)
        for enc in configured_modalities(eval_cfg):  # the checkpoint has their weights
            target = eval_cfg.encoder[enc]
            (target.frame if enc == "video" else target)["load_weights"] = False
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = build_module(eval_cfg, saved)
    module.load_state_dict(ckpt["state_dict"])
    return Rebuilt(eval_cfg, saved, module, user)


def typed_overrides() -> list[str]:
    """The eval command's overrides as the user typed them (without the groups eval.py prepended)."""
    prepended = set(os.environ.get(GROUPS_ENV, "").split("\n")) - {""}  # by eval.py, from the checkpoint
    return [o for o in task_overrides() if o not in prepended]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(cfg.paths.output_dir)
    typed = typed_overrides()
    record = RunRecord(run_dir, kind="eval", ckpt_path=str(cfg.get("ckpt_path")), overrides=typed,
                       versions=versions())
    try:
        run = rebuild(cfg, typed)
        eval_cfg, saved, module = run.cfg, run.saved, run.module
        datamodule = run.datamodule()
        def make_trainer() -> L.Trainer:
            return L.Trainer(accelerator=eval_cfg.trainer.accelerator, devices=1,
                             precision=eval_cfg.trainer.precision, logger=False, enable_checkpointing=False,
                             enable_model_summary=False, default_root_dir=str(run_dir))

        def validate(dm: Any) -> dict[str, float]:
            trainer = make_trainer()
            trainer.validate(module, datamodule=dm, verbose=False)
            return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

        metrics = validate(datamodule)
        predictions = {"val": module.predictions.write("val", path_for(run_dir, "val"))}
        if eval_cfg.get("test", True) and datamodule.has_split("test"):
            trainer = make_trainer()
            trainer.test(module, datamodule=datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
            predictions["test"] = module.predictions.write("test", path_for(run_dir, "test"))
        extra = {"predictions": {s: str(p.relative_to(run_dir)) for s, p in predictions.items() if p is not None}}
        if eval_cfg.get("robustness") is not None:
            from mmfuse.robustness.run import run_robustness

            extra["robustness"] = run_robustness(run, eval_cfg.robustness, validate)
    except BaseException as e:
        record.finish(**failure_fields(e))
        raise
    results = record.finish("completed", metrics=dict(sorted(metrics.items())),
                            trained_with=saved.get("overrides", []), data=datamodule.describe(), **extra)
    print_summary(results)
    return results
