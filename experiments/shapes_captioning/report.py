"""The captioning table of a ``shapes_captioning`` sweep, from the runs' ``results.json`` (never the logs).

    python experiments/shapes_captioning/report.py outputs/multirun/shapes_captioning/<time> \
        --out experiments/shapes_captioning

Rows: (fusion, decoder), from ``choices``. Columns: ``val/cider`` (CIDEr-D), ``val/bleu4``, ``val/exact``
(the caption is one of the scene's two true descriptions), ``val/distinct`` (distinct captions /
images), and the grammar check's grounding (``mmfuse.data.shapes.caption_check``): ``grammatical``,
``color_named`` / ``shape_named`` (the named colours / shapes are in the scene), ``objects`` (both named
objects exist: colour bound to shape), ``relation`` (and in the named relation), ``correct`` (the
caption is true of the scene). Each cell is the mean ± standard deviation over the row's completed runs
(seeds). Writes ``table.md``, ``table.json`` and ``table.png``; runs not completed are listed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sweep_table  # noqa: E402  (experiments/sweep_table.py)

GROUNDING = ("grammatical", "color_named", "shape_named", "objects", "relation", "correct")
KEYS = ("fusion", "decoder")
COLUMNS = ("val/cider", "val/bleu4", "val/exact", "val/distinct", *(f"val/ground_{g}" for g in GROUNDING))
LABELS = ("CIDEr-D", "BLEU-4", "exact", "distinct", *GROUNDING)
FUSION_ORDER = ("mul", "late", "cross_attention", "qformer", "single_stream")


def key(record: dict) -> tuple[str, str]:
    return record["choices"]["fusion"], record["choices"].get("decoder", "?")


def row_order(item: tuple[tuple[str, str], list]) -> tuple:
    (fusion, decoder), _ = item
    return (FUSION_ORDER.index(fusion) if fusion in FUSION_ORDER else len(FUSION_ORDER)), fusion, decoder


def main(argv: list[str] | None = None) -> int:
    parser = sweep_table.arguments(__doc__, Path(__file__).parent,
                                   "shapes captioning: caption metrics and grounding per attribute (val)")
    args = parser.parse_args(argv)
    return sweep_table.report(args, key, KEYS, COLUMNS, LABELS, order=row_order, split_after=4)


if __name__ == "__main__":
    raise SystemExit(main())
