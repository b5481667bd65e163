"""What a run prints and counts at the end."""

from __future__ import annotations

from typing import Any

from torch import nn


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Total and trainable parameters, and the total of each part of the model."""
    model = module.model
    parts = {**{f"{m}_encoder": enc for m, enc in model.encoders.items()}, "fusion": model.fusion, "head": module.task}
    out = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    out["total"] = sum(p.numel() for p in module.parameters())
    out["trainable"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    width = max((len(k) for k in metrics), default=0)
    return "\n".join(f"  {k:<{width}}  {v:.4f}" for k, v in metrics.items())


def print_summary(results: dict[str, Any]) -> None:
    kind = results.get("kind", "train")
    print(f"\n[mmfuse] {kind} {results['status']} in {results['wall_time_s']:.1f} s")
    if results.get("metrics"):
        print(format_metrics(results["metrics"]))
    rob = results.get("robustness")
    if rob:
        metric = rob["metric"]
        if "curve" in rob:
            points = ", ".join(f"{lv:g}: {v:.4f}" for lv, v in zip(rob["levels"], rob["curve"][metric], strict=True))
            print(f"[mmfuse] robustness {rob['name']} ({metric} by level): {points}; "
                  f"relative robustness {rob['relative_robustness']:.4f}")
        else:
            kept = ", ".join(f"{k or 'none'}: {v:.4f}" for k, v in rob["subsets"].items())
            phi = ", ".join(f"{m}: {v:+.4f}" for m, v in rob["shapley"].items())
            print(f"[mmfuse] robustness {rob['name']} ({rob['mode']}; {metric} with kept modalities) {kept}; Shapley {phi}")
    print(f"[mmfuse] run directory: {results['run_dir']}")
    if results.get("checkpoint"):
        print(f"[mmfuse] checkpoint: {results['run_dir']}/{results['checkpoint']}")
