"""The dialog table of a ``shapes_dialog`` sweep, from the runs' ``results.json`` (never the logs).

    python experiments/shapes_dialog/report.py outputs/multirun/shapes_dialog/<time> --out experiments/shapes_dialog

Rows: (fusion, history, decoder), from ``choices`` and the overrides (``task.history``, ``task.decoder``).
Columns: the VisDial metrics over all val rounds (``r1``, ``mrr``, ``ndcg``) and per round type: ``image``
rounds (the question names its object) and ``history`` rounds (it says "it"). Each cell is the mean ±
standard deviation over the row's completed runs (seeds). Writes ``table.md``, ``table.json`` and
``table.png``; runs not completed are listed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sweep_table  # noqa: E402  (experiments/sweep_table.py)

KEYS = ("fusion", "history", "decoder")
METRICS = ("r1", "mrr", "ndcg")
COLUMNS = (*(f"val/{m}" for m in METRICS), *(f"val/{m}_{k}" for k in ("image", "history") for m in METRICS))
LABELS = (*METRICS, *(f"{m} {k}" for k in ("image", "history") for m in METRICS))
FUSION_ORDER = ("mul", "concat", "cross_attention", "single_stream")
HISTORY_ORDER = ("none", "concat", "late")


def key(record: dict) -> tuple[str, str, str]:
    return (record["choices"]["fusion"], sweep_table.override(record, "task.history", "late"),
            sweep_table.override(record, "task.decoder", "discriminative"))


def row_order(item: tuple[tuple[str, str, str], list]) -> tuple:
    (fusion, history, decoder), _ = item
    rank = FUSION_ORDER.index(fusion) if fusion in FUSION_ORDER else len(FUSION_ORDER)
    return decoder, rank, fusion, HISTORY_ORDER.index(history) if history in HISTORY_ORDER else 9


def main(argv: list[str] | None = None) -> int:
    parser = sweep_table.arguments(__doc__, Path(__file__).parent,
                                   "shapes dialog: VisDial metrics, all rounds and per round type (val)")
    args = parser.parse_args(argv)
    return sweep_table.report(args, key, KEYS, COLUMNS, LABELS, order=row_order, split_after=2)


if __name__ == "__main__":
    raise SystemExit(main())
