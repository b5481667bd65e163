"""The interaction table of a ``shapes_av`` sweep, from the runs' ``results.json`` (never the logs).

    python experiments/shapes_av/report.py outputs/multirun/shapes_av_interactions/<time> \
        --out experiments/shapes_av

Rows: ``choices.fusion`` (with ``/ <temporal>`` appended when a run overrode ``encoder.video.temporal``).
Columns: ``val/acc`` and ``val/acc_<type>`` for the interaction types unimodal, bimodal, trimodal (the
classes whose label needs one, two or all three of video, audio and text). Given the rule (the
caption states it), a class is one of two, so 0.5 is chance within every type: a fusion that stops at
pairs scores ≈ 0.5 on ``trimodal``. Each cell is the mean ± standard deviation over the row's
completed runs (seeds); ``n`` runs per row. Writes ``table.md``, ``table.json`` and ``table.png``
(heat map); runs not completed are listed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sweep_table  # noqa: E402  (experiments/sweep_table.py)

INTERACTIONS = ("unimodal", "bimodal", "trimodal")
KEYS = ("fusion",)
COLUMNS = ("val/acc", *(f"val/acc_{t}" for t in INTERACTIONS))
LABELS = ("val/acc", *INTERACTIONS)


def key(record: dict) -> tuple[str]:
    fusion = record["choices"]["fusion"]
    temporal = sweep_table.override(record, "encoder.video.temporal", "")
    return (f"{fusion} / {temporal}" if temporal else fusion,)


def main(argv: list[str] | None = None) -> int:
    parser = sweep_table.arguments(__doc__, Path(__file__).parent, "shapes_av: val accuracy by fusion and interaction type")
    args = parser.parse_args(argv)
    return sweep_table.report(args, key, KEYS, COLUMNS, LABELS, split_after=0)


if __name__ == "__main__":
    raise SystemExit(main())
