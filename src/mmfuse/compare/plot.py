"""The comparison plot: the metric by one key (fusion), one bar per value of the other varying keys
(the learning rate), bar = mean over seeds, error bar = sample standard deviation over seeds."""

from __future__ import annotations

from pathlib import Path

from mmfuse.compare.table import Aggregate


def plot(aggregated: list[Aggregate], x_key: str, metric: str, path: Path, title: str = "",
         not_plotted: int = 0, intervals: bool = False,
         legend: str = "") -> dict[tuple[str, str], tuple[float, float | None]]:
    """Draw the bars to ``path`` (PNG); returns what was drawn: ``{(x, hue): (height, error bar or None)}``.

    ``intervals`` (``--ci``): the aggregates' ``ci`` replace the standard deviations as error bars; an
    aggregate whose difference from the baseline ``holds`` gets a ``*`` above its bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(dict.fromkeys(a.group.get(x_key, "") for a in aggregated))
    hues = list(dict.fromkeys(_hue(a, x_key) for a in aggregated))
    width = 0.8 / max(len(hues), 1)
    drawn: dict[tuple[str, str], tuple[float, float | None]] = {}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(xs) * max(1, len(hues)) * 0.6 + 2), 4))
    for j, hue in enumerate(hues):
        cells = {a.group.get(x_key, ""): a for a in aggregated if _hue(a, x_key) == hue}
        pos = [i + (j - (len(hues) - 1) / 2) * width for i, x in enumerate(xs) if x in cells]
        present = [x for x in xs if x in cells]
        means = [cells[x].mean for x in present]
        if intervals:
            spans = [cells[x].ci for x in present]
            errs = [[m - s[0] if s else 0.0 for m, s in zip(means, spans)],
                    [s[1] - m if s else 0.0 for m, s in zip(means, spans)]]
            has_err = any(s is not None for s in spans)
        else:
            errs = [cells[x].std or 0.0 for x in present]
            has_err = any(cells[x].std is not None for x in present)
        ax.bar(pos, means, width, yerr=errs if has_err else None, capsize=3, label=hue or None)
        for p, x in zip(pos, present):
            if cells[x].holds:
                top = cells[x].ci[1] if intervals and cells[x].ci else cells[x].mean
                ax.annotate("*", (p, top), ha="center", va="bottom", fontsize=12)
        drawn.update({(x, hue): (cells[x].mean, cells[x].std) for x in present})
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    seeds = max((a.n for a in aggregated), default=1)
    spread = "CI" if intervals else "std"
    subtitle = f"mean ± {spread} over {seeds} seeds" if seeds > 1 else "one run each"
    if legend:
        subtitle += f"; {legend}"
    if not_plotted:
        subtitle += f"; {not_plotted} runs without {metric} (failed or unfinished) not shown"
    ax.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize=9)
    if any(hues):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=_hue_title(aggregated, x_key))
    spans = [a.ci if intervals else None for a in aggregated]
    low = min((s[0] if s else a.mean - (a.std or 0.0) for a, s in zip(aggregated, spans)), default=0.0)
    high = max((s[1] if s else a.mean + (a.std or 0.0) for a, s in zip(aggregated, spans)), default=1.0)
    pad = 0.1 * (high - low or 1.0)
    ax.set_ylim(low - pad, high + pad)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return drawn


def _hue(a: Aggregate, x_key: str) -> str:
    return ", ".join(str(v) for k, v in a.group.items() if k != x_key)


def _hue_title(aggregated: list[Aggregate], x_key: str) -> str:
    return ", ".join(k for k in aggregated[0].group if k != x_key)
