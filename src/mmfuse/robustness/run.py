"""``eval.py ... +robustness=<name>``: the model evaluated at each level of a perturbation, or with each
subset of its modalities removed.

``robustness`` settings (``conf/robustness/<name>.yaml``): ``name``, ``kind`` (an image kind of
``IMAGE_NOISE``, a text kind of ``TEXT_NOISE``, ``missing`` (every subset of the modalities removed) or
``missing_fraction`` (``modality`` removed from a ``level`` share of the samples)), ``modality`` (the perturbed one: image or
video for image kinds, text for text kinds), ``levels`` (non-negative, increasing), ``mode`` (missing:
``zeros | mean | shuffle``; mean: the split's means, recorded during the clean pass of the full set),
``seed``, ``metric`` (null: the task's monitored metric).

Input noise is applied where the data is preprocessed (the datamodule's image / video transform on
``uint8`` pixels, its tokenizer on the raw strings), so every dataset and task gets it; the feature cache
is off for those passes (cached features would skip the perturbed encoder). Each level is a new
datamodule and a validation pass over the ``val`` split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmfuse.errors import MMFuseError
from mmfuse.robustness.image_noise import IMAGE_NOISE, perturb_images
from mmfuse.robustness.missing import MODES, recording, removed
from mmfuse.robustness.scores import relative_robustness
from mmfuse.robustness.shapley import all_subsets, shapley, subset_key
from mmfuse.robustness.text_noise import TEXT_NOISE, perturb_texts

KINDS = (*IMAGE_NOISE, *TEXT_NOISE, "missing", "missing_fraction")


class NoisyTransform:
    """The datamodule's image / video transform applied to perturbed ``uint8`` pixels (each image, or each
    frame of a clip); its attributes (a video transform's ``frames``, ``fps``...) delegated."""

    def __init__(self, transform: Callable[[Any], Any], kind: str, level: float, seed: int) -> None:
        self._transform, self._noise = transform, (kind, level, seed)

    def __call__(self, pixels: Any, *args: Any, **kwargs: Any) -> Any:
        kind, level, seed = self._noise
        return self._transform(perturb_images(pixels, kind, level, seed), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not yet set (unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self._transform, name)


class NoisyTokenizer:
    """The datamodule's tokenizer with its input strings perturbed first; everything else delegated."""

    def __init__(self, tokenizer: Any, kind: str, level: float, seed: int) -> None:
        self._tokenizer, self._noise = tokenizer, (kind, level, seed)

    def __call__(self, texts: list[str], *args: Any, **kwargs: Any) -> Any:
        kind, level, seed = self._noise
        return self._tokenizer(perturb_texts(texts, kind, level, seed), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._tokenizer, name)


def check_settings(settings: DictConfig, modalities: tuple[str, ...]) -> dict[str, Any]:
    s = OmegaConf.to_container(settings, resolve=True)
    kind = s.get("kind")
    if kind not in KINDS:
        raise MMFuseError(f"robustness.kind={kind!r}: expected one of {list(KINDS)}")
    if kind == "missing":
        if s.get("mode", "zeros") not in MODES:
            raise MMFuseError(f"robustness.mode={s.get('mode')!r}: expected one of {list(MODES)}")
        return s
    if kind == "missing_fraction" and s.get("mode", "zeros") not in MODES:
        raise MMFuseError(f"robustness.mode={s.get('mode')!r}: expected one of {list(MODES)}")
    expected = ("text",) if kind in TEXT_NOISE else modalities if kind == "missing_fraction" else ("image", "video")
    modality = s.get("modality")
    if modality not in expected or modality not in modalities:
        have = [m for m in expected if m in modalities]
        raise MMFuseError(f"robustness.modality={modality!r}: kind {kind} perturbs {' or '.join(expected)}, and this "
                          f"model has {list(modalities)}" + (f"; e.g. robustness.modality={have[0]}" if have else ""))
    levels = s.get("levels") or []
    if not levels or any(not isinstance(v, int | float) or v < 0 for v in levels) or list(levels) != sorted(levels):
        raise MMFuseError(f"robustness.levels={levels}: give increasing non-negative levels, e.g. [0.0, 0.1, 0.3]")
    if kind != "gaussian" and max(levels) > 1:
        raise MMFuseError(f"robustness.levels={levels}: {kind} levels are fractions / probabilities in [0, 1]")
    return s


def perturbed_datamodule(rebuilt: Any, s: dict[str, Any], level: float) -> Any:
    dm = rebuilt.datamodule()
    dm.feature_cache = None
    kind, modality, seed = s["kind"], s["modality"], int(s.get("seed", 0))
    if kind in TEXT_NOISE:
        dm.tokenizer = NoisyTokenizer(dm.tokenizer, kind, level, seed)
        dm.transforms["text"] = dm.tokenizer
    else:
        dm.transforms[modality] = NoisyTransform(dm.transforms[modality], kind, level, seed)
        if modality == "image":
            dm.image_transform = dm.transforms["image"]
    return dm


def run_robustness(rebuilt: Any, settings: DictConfig, validate: Callable[[Any], dict[str, float]]) -> dict[str, Any]:
    """The ``robustness`` section of results.json; ``validate(datamodule) -> {"val/...": value}``."""
    model = rebuilt.module.model
    s = check_settings(settings, model.modalities)
    metric = s.get("metric") or rebuilt.module.task.monitor
    seed = int(s.get("seed", 0))
    base = {"name": s.get("name", s["kind"]), "kind": s["kind"], "metric": metric, "seed": seed}
    if s["kind"] == "missing":
        mode = s.get("mode", "zeros")
        players = model.modalities
        values, means = {}, None
        for kept in all_subsets(players):  # the full set first: its clean pass records the split means
            if means is None:
                with recording(model, players) as means:
                    values[subset_key(kept, players)] = _metric(validate(rebuilt.datamodule()), metric)
                continue
            with removed(model, [m for m in players if m not in kept], mode, seed, means):
                values[subset_key(kept, players)] = _metric(validate(rebuilt.datamodule()), metric)
        full = values[subset_key(players, players)]
        return {**base, "mode": mode, "subsets": values,
                "drop": {m: full - values[subset_key([p for p in players if p != m], players)] for m in players},
                "shapley": shapley(players, lambda kept: values[subset_key(kept, players)])}
    curve: dict[str, list[float]] = {}
    if s["kind"] == "missing_fraction":
        mode, means = s.get("mode", "zeros"), None
        if mode == "mean":
            with recording(model, [s["modality"]]) as means:
                validate(rebuilt.datamodule())
        for level in s["levels"]:
            with removed(model, [s["modality"]], mode, seed, means, fraction=float(level)):
                for key, value in validate(rebuilt.datamodule()).items():
                    curve.setdefault(key, []).append(value)
        base["mode"] = mode
    else:
        for level in s["levels"]:
            for key, value in validate(perturbed_datamodule(rebuilt, s, float(level))).items():
                curve.setdefault(key, []).append(value)
    if metric not in curve:
        raise MMFuseError(f"robustness.metric={metric!r}: the evaluation logs {sorted(curve)}")
    return {**base, "modality": s["modality"], "levels": [float(v) for v in s["levels"]], "curve": curve,
            "relative_robustness": relative_robustness(curve[metric])}


def _metric(metrics: dict[str, float], metric: str) -> float:
    if metric not in metrics:
        raise MMFuseError(f"robustness.metric={metric!r}: the evaluation logs {sorted(metrics)}")
    return metrics[metric]
