"""``python -m mmfuse.explain ckpt_path=<ckpt> n=16``: explanations of ``n`` validation pairs.

For each method of ``methods`` (``attention``: text-to-image attention of cross_attention, co_attention or
single_stream, ``gradcam``: Grad-CAM on the image, ``ig``: integrated gradients over the text tokens) a PNG
per pair (``<method>_<k>.png``; for attention one panel per word, and the raw weights per layer and head
``[L, H, S, N]`` as ``attention_<k>.npy``), an ``index.html`` that shows them side by side and ``explain.json``;
with a ``logger=wandb`` run, the PNGs also go to W&B.

The pairs: with labels (ITM), the first ``n`` positives at evenly spaced positions of the split; otherwise
evenly spaced pairs. Checks, in explain.json per method:
- ``randomisation_spearman``: the mean Spearman ρ between each pair's map and the map of the same architecture
  with re-drawn weights (``mmfuse.explain.sanity``), and ``randomisation`` PASS / FAIL;
- on shapes (``mmfuse.explain.shapes_masks``), the pointing game: ``pointing`` the mean share of the map's
  mass on the object a word names (attention: that word's map; Grad-CAM: the pair's map against the union of
  the named objects), ``uniform`` the same for a uniform map, ``pointed`` the number of (pair, word) scored.

``intensity`` is a control, not an explanation: each grid cell's pixel brightness, the same whatever the
model (Adebayo et al.'s edge-detector point). On shapes, where the objects are bright on a dark background,
it wins the pointing game, and the randomisation check fails it (ρ = 1): the game alone cannot tell an
explanation from a saliency map of the image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from mmfuse.errors import MMFuseError
from mmfuse.evaluate import rebuild, typed_overrides
from mmfuse.explain import attention, render
from mmfuse.explain.gradcam import gradcam
from mmfuse.explain.integrated_gradients import integrated_gradients
from mmfuse.explain.pointing import pointing_score, uniform_score
from mmfuse.explain.sanity import RANDOMISATION_PASS, randomized_copy, rank_correlation
from mmfuse.explain.shapes_masks import object_masks
from mmfuse.explain.targets import target
from mmfuse.explain.words import token_words

METHODS = ("attention", "gradcam", "ig", "intensity")
INTENSITY_GRID = 8  # cells per side of the intensity control's map


def pick_pairs(dataset: Any, n: int) -> list[int]:
    labels = dataset.fields.get("label") if hasattr(dataset, "fields") else None
    pool = (labels == 1).nonzero().flatten().tolist() if labels is not None else list(range(len(dataset)))
    if not pool:
        raise MMFuseError("mmfuse.explain: the split has no positive pairs to explain")
    n = min(n, len(pool))
    return [pool[int(i)] for i in np.linspace(0, len(pool) - 1, n).round()]


def intensity_maps(images: list[np.ndarray], grid: int = INTENSITY_GRID) -> np.ndarray:
    """``[B, grid, grid]``: each cell's mean pixel brightness (channels averaged); a map that ignores the model."""
    out = []
    for image in images:
        gray = image.astype(float).mean(0)
        rows = (np.arange(gray.shape[0]) * grid) // gray.shape[0]
        cols = (np.arange(gray.shape[1]) * grid) // gray.shape[1]
        total, count = np.zeros((grid, grid)), np.zeros((grid, grid))
        np.add.at(total, (rows[:, None], cols[None, :]), gray)
        np.add.at(count, (rows[:, None], cols[None, :]), 1.0)
        out.append(total / np.maximum(count, 1))
    return np.stack(out)


def method_maps(module: Any, batch: dict[str, Any], method: str, ig_steps: int,
                images: list[np.ndarray] | None = None) -> np.ndarray:
    """attention: ``[B, S, N]``; gradcam, intensity: ``[B, h, w]``; ig: ``[B, T]``."""
    if method == "intensity":
        return intensity_maps(images or [])
    if method == "attention":
        return attention.summary(module, batch).numpy()
    if method == "gradcam":
        return gradcam(module, batch, target).numpy()
    return integrated_gradients(module, batch, target, ig_steps)[0].numpy()


def word_map(rows: np.ndarray, token_word: list[int | None], word: int) -> np.ndarray | None:
    """The image map ``[side, side]`` of ``word``: the mean of its tokens' attention rows."""
    tokens = [t for t, w in enumerate(token_word) if w == word and t < rows.shape[0]]
    if not tokens:
        return None
    row = rows[tokens].mean(0)
    side = int(round(np.sqrt(row.shape[0])))
    return row.reshape(side, side) if side * side == row.shape[0] else row[None, :]


def explain(cfg: DictConfig) -> dict[str, Any]:
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise MMFuseError(f"methods={list(cfg.methods)}: unknown {unknown}; choose from {list(METHODS)}")
    out = Path(cfg.get("out") or cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = rebuild(cfg, typed_overrides(), config_name="explain")
    module = run.module.eval().requires_grad_(True)  # gradients reach frozen encoders' activations
    dm = run.datamodule()
    dm.feature_cache = None  # the methods need the encoders' activations
    dm.setup("validate")
    dataset = dm.splits.get(cfg.split)
    if dataset is None:
        raise MMFuseError(f"split={cfg.split!r}: the data has no such split (it has {sorted(dm.splits)})")
    pairs = pick_pairs(dataset, int(cfg.n))
    batch = dataset.__getitems__(pairs)
    texts = [dataset.texts[int(dataset.text_index[p])] for p in pairs] if dataset.texts else [""] * len(pairs)
    images = [dataset.images.load(int(dataset.image_index[p])).numpy() for p in pairs]
    with torch.no_grad():
        targets = target(module, batch).tolist()
    length = batch["input_ids"].shape[1] if "input_ids" in batch else 0
    token_word = [token_words(dm.tokenizer, t, length) for t in texts]
    masks = object_masks(dm, cfg.split, pairs)
    random_module = randomized_copy(module, seed=0)
    report: dict[str, Any] = {}
    samples = [{"index": p, "text": t, "label": float(batch["label"][k]) if "label" in batch else None,
                "target": targets[k], "pngs": {}} for k, (p, t) in enumerate(zip(pairs, texts, strict=True))]
    for method in cfg.methods:
        why = attention.supports(module.model.fusion) if method == "attention" else None
        needed = {"ig": "text", "intensity": None}.get(method, "image")
        uses = getattr(module.model.fusion, "uses", module.model.modalities)
        if needed is None:
            pass
        elif why is None and needed not in module.model.modalities:
            why = f"the model has no {needed} encoder"
        elif why is None and needed not in uses:
            why = f"{type(module.model.fusion).__name__} does not read the {needed}"
        if why is not None:
            report[method] = {"skipped": why}
            continue
        raw = None
        if method == "attention":  # the per-layer, per-head weights are saved too: one pass gives both
            raw_t, summary_t = attention.maps_and_summary(module, batch)
            raw, maps = raw_t.numpy(), summary_t.numpy()
        else:
            maps = method_maps(module, batch, method, cfg.ig_steps, images)
        random_maps = method_maps(random_module, batch, method, cfg.ig_steps, images)
        if method == "ig":  # over the real tokens: padding is 0 in both and would count as agreement
            real = batch["attention_mask"].bool().numpy()
            rho = [rank_correlation(a[r], b[r]) for a, b, r in zip(maps, random_maps, real, strict=True)]
        else:
            rho = [rank_correlation(a, b) for a, b in zip(maps, random_maps, strict=True)]
        entry: dict[str, Any] = {"randomisation_spearman": float(np.mean(rho)),
                                 "randomisation": "PASS" if np.mean(rho) < RANDOMISATION_PASS else "FAIL",
                                 "pointing": None, "uniform": None, "pointed": 0}
        scores, uniform = [], []
        for k, sample in enumerate(samples):
            words = sample["text"].split()
            heat, weights, title = None, None, method
            if method == "ig":
                weights = [float(sum(v for v, w in zip(maps[k], token_word[k], strict=False) if w == i))
                           for i in range(len(words))]
                title = f"ig (target {sample['target']:.2f})"
            elif method in ("gradcam", "intensity"):
                heat = maps[k]
                if masks is not None and masks[k]:
                    union = np.logical_or.reduce(list(masks[k].values()))
                    scores.append(pointing_score(heat, union))
                    uniform.append(uniform_score(union))
            else:
                for word, mask in (masks[k] if masks is not None else {}).items():
                    wmap = word_map(maps[k], token_word[k], word)
                    if wmap is not None:
                        scores.append(pointing_score(wmap, mask))
                        uniform.append(uniform_score(mask))
            name = f"{method}_{k:03d}.png"
            if method == "attention":
                render.word_figure(out / name, images[k], [(w, word_map(maps[k], token_word[k], i))
                                                           for i, w in enumerate(words)], "attention by word")
                np.save(out / f"attention_{k:03d}.npy", raw[k])
            else:
                render.figure(out / name, images[k], heat, words, weights, title)
            sample["pngs"][method] = name
        if scores:
            entry.update(pointing=float(np.mean(scores)), uniform=float(np.mean(uniform)), pointed=len(scores))
        report[method] = entry
    choices = (run.saved.get("choices") or {})
    result = {"ckpt_path": str(cfg.ckpt_path), "fusion": choices.get("fusion"), "task": choices.get("task"),
              "n": len(pairs), "split": cfg.split, "methods": report, "samples": samples}
    (out / "explain.json").write_text(json.dumps(result, indent=2))
    drawn = [m for m in cfg.methods if "skipped" not in report[m]]
    render.index_page(out / "index.html", samples, drawn, f"mmfuse.explain {cfg.ckpt_path}")
    log_to_wandb(run.cfg, out, samples, drawn)
    print(f"[mmfuse] explain: {len(pairs)} pairs, {', '.join(drawn) or 'no method'} -> {out}/index.html")
    for m, e in report.items():
        print(f"  {m}: " + ", ".join(f"{k}={v}" for k, v in e.items()))
    return result


def log_to_wandb(cfg: DictConfig, out: Path, samples: list[dict[str, Any]], methods: list[str]) -> None:
    """With a W&B logger configured (``logger=wandb``), the PNGs as ``explain/<method>`` images."""
    loggers = cfg.get("logger") or {}
    settings = next((v for v in loggers.values() if isinstance(v, DictConfig) and "wandb" in str(v.get("_target_"))), None)
    if settings is None or not methods:
        return
    import wandb

    from mmfuse.loggers import wandb_credentials_present

    mode = settings.get("mode", "auto")
    if mode == "auto":  # as the training logger: online with credentials, else offline
        mode = "online" if wandb_credentials_present() else "offline"
    wb = wandb.init(project=settings.get("project", "mmfuse"), entity=settings.get("entity"), dir=str(out),
                    job_type="explain", mode=mode, reinit=True)
    wb.log({f"explain/{m}": [wandb.Image(str(out / s["pngs"][m]), caption=s["text"]) for s in samples if m in s["pngs"]]
            for m in methods})
    wb.finish()
