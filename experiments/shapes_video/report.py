"""The temporal table of a ``shapes_video`` sweep, from the runs' ``results.json`` (never the logs).

    python experiments/shapes_video/report.py outputs/multirun/shapes_video_temporal/<time> \
        --out experiments/shapes_video

Rows: (fusion, temporal pooling), from ``choices.fusion`` and the run's override
``encoder.video.temporal=<mean|max|transformer>`` (``default`` where the run did not set it).
Columns: ``val/acc``, ``val/acc_<type>`` for the pair types positive, other, color, shape, direction,
order, and Youden's J of color, shape and the two types that need time (direction, order),
``val/j_<type> = acc_positive + acc_<type> − 1`` as the ITM task logs it (0: the type is not told from
positives, whatever the bias; 1: always told).
Each cell is the mean ± standard deviation over the row's completed runs (seeds); ``n`` runs per row.
Below the table: the rows that *solve* direction / order, J >= ``--solved`` in every seed of the row.
Writes ``table.md``, ``table.json`` and ``table.png`` (heat map); runs not completed are listed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sweep_table  # noqa: E402  (experiments/sweep_table.py)

TYPES = ("positive", "other", "color", "shape", "direction", "order")
TIME = ("direction", "order")
J_TYPES = ("color", "shape", *TIME)  # J of the easy types too: learned at all, whatever the bias
TEMPORAL_ORDER = ("mean", "max", "transformer")
KEYS = ("fusion", "temporal")
COLUMNS = ("val/acc", *(f"val/acc_{t}" for t in TYPES), *(f"val/j_{t}" for t in J_TYPES))
LABELS = ("val/acc", *TYPES, *(f"J {t}" for t in J_TYPES))


def key(record: dict) -> tuple[str, str]:
    return record["choices"]["fusion"], sweep_table.override(record, "encoder.video.temporal", "default")


def row_order(item: tuple[tuple[str, str], list]) -> tuple:
    (fusion, temporal), _ = item
    rank = TEMPORAL_ORDER.index(temporal) if temporal in TEMPORAL_ORDER else len(TEMPORAL_ORDER)
    return fusion, rank, temporal


def solved(groups: dict, threshold: float) -> dict[str, list[str]]:
    """Per time type, the rows ``fusion / temporal`` whose every run has ``val/j_<type> >= threshold``."""
    return {t: [f"{f} / {p}" for (f, p), runs in groups.items()
                if all(r["metrics"].get(f"val/j_{t}", float("-inf")) >= threshold for r in runs)] for t in TIME}


def main(argv: list[str] | None = None) -> int:
    parser = sweep_table.arguments(__doc__, Path(__file__).parent, "shapes_video: fusion x temporal pooling, val accuracy per pair type")
    parser.add_argument("--solved", type=float, default=0.8, help="J a row must reach in every seed to solve a type")
    args = parser.parse_args(argv)
    groups, problems = sweep_table.load_runs(args.dirs, key)
    if not groups:
        raise SystemExit("no completed runs found" + "".join(f"\n- {p}" for p in problems))
    groups = dict(sorted(groups.items(), key=row_order))
    rows = sweep_table.summarise(groups, KEYS, COLUMNS)
    text = sweep_table.markdown(rows, KEYS, COLUMNS, LABELS, problems)
    text += f"\nSolved (J >= {args.solved:g} in every seed of the row):\n" + "".join(
        f"- {t}: {', '.join(names) or 'none'}\n" for t, names in solved(groups, args.solved).items())
    sweep_table.write(args.out, args.name, text, rows, problems)
    sweep_table.heatmap(rows, KEYS, COLUMNS, LABELS, args.out / f"{args.name}.png", args.title,
                        split_after=len(TYPES))
    print(text)
    print(f"wrote {args.out / (args.name + '.md')}, {args.name}.json and {args.name}.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
