"""The VQA table of a ``shapes_vqa`` sweep, from the runs' ``results.json`` (never the logs).

    python experiments/shapes_vqa/report.py outputs/multirun/shapes_vqa/<time> --out experiments/shapes_vqa

Rows: (fusion, answer), from ``choices`` and the ``task.answer`` override (``classify``: a head over the
16 answers; ``generate``: a decoder writes the answer). Columns: ``val/vqa_acc`` and per question type
(attribute, relation, count, compare), then the question-only prior of the val split
(``data.val.question_prior``: the accuracy of answering each question text with its most frequent train
answer), the floor a model that ignores the image stays at. Each cell is the mean ± standard deviation
over the row's completed runs (seeds). Writes ``table.md``, ``table.json`` and ``table.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sweep_table  # noqa: E402  (experiments/sweep_table.py)

TYPES = ("attribute", "relation", "count", "compare")
KEYS = ("fusion", "answer")
COLUMNS = ("val/vqa_acc", *(f"val/vqa_acc_{t}" for t in TYPES), "prior/overall", *(f"prior/{t}" for t in TYPES))
LABELS = ("accuracy", *TYPES, "prior", *(f"prior {t}" for t in TYPES))
FUSION_ORDER = ("text_only", "mul", "concat", "film", "cross_attention", "single_stream")


def key(record: dict) -> tuple[str, str]:
    prior = ((record.get("data") or {}).get("val") or {}).get("question_prior") or {}
    record["metrics"].update({f"prior/{k}": v for k, v in prior.items()})  # a column like the metrics
    return record["choices"]["fusion"], sweep_table.override(record, "task.answer", "classify")


def row_order(item: tuple[tuple[str, str], list]) -> tuple:
    (fusion, answer), _ = item
    return answer, FUSION_ORDER.index(fusion) if fusion in FUSION_ORDER else len(FUSION_ORDER), fusion


def main(argv: list[str] | None = None) -> int:
    parser = sweep_table.arguments(__doc__, Path(__file__).parent,
                                   "shapes VQA: accuracy per question type (val) and the question-only prior")
    args = parser.parse_args(argv)
    return sweep_table.report(args, key, KEYS, COLUMNS, LABELS, order=row_order, split_after=4)


if __name__ == "__main__":
    raise SystemExit(main())
