"""experiments/fusion_zoo/report.py: the per-type table is the mean ± std over seeds of results.json."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("fusion_zoo_report", ROOT / "experiments/fusion_zoo/report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def write_run(path, fusion, seed, acc, binding, status="completed", positive=1.0):
    path.mkdir(parents=True)
    metrics = {"val/acc": acc, "val/acc_positive": positive, "val/acc_binding": binding}
    path.joinpath("results.json").write_text(json.dumps({
        "status": status, "kind": "train", "choices": {"fusion": fusion}, "seed": seed, "steps": 750,
        "wall_time_s": 10.0, "params": {"fusion": 123}, "metrics": metrics if status == "completed" else {},
        "error": None if status == "completed" else "RuntimeError: boom"}))


def test_table_aggregates_seeds_and_lists_failed_runs(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", "mul", 1, 0.80, 0.0)
    write_run(sweep / "1", "mul", 2, 0.90, 0.5)
    write_run(sweep / "2", "cross_attention", 1, 0.95, 1.0)
    write_run(sweep / "3", "cross_attention", 2, 0.0, 0.0, status="failed")
    # rejects 60 % of binding negatives, but also 60 % of positives: J = 0.6 + 0.4 - 1 = 0
    write_run(sweep / "4", "attention", 1, 0.5, 0.6, positive=0.4)
    assert report.main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "table.md").read_text()
    mul = next(line for line in table.splitlines() if line.startswith("| `mul`"))
    assert "| mid | pooled | 123 | 2 | 0.850 ± 0.071 |" in mul and "0.250 ± 0.354" in mul
    assert mul.endswith("| – | 0.250 ± 0.354 | 750 | 10 |")  # J relation (no data), J binding, steps, wall
    rows = json.loads((tmp_path / "out" / "table.json").read_text())
    assert rows[[r["fusion"] for r in rows].index("attention")]["j_binding"][0] == pytest.approx(0.0)
    # mid stage, ranked by J: attention's 0.6 on binding is its bias, below mul's 0.25
    assert [r["fusion"] for r in rows] == ["cross_attention", "mul", "attention"]
    assert "status=failed RuntimeError: boom" in table
    assert (tmp_path / "out" / "table.png").stat().st_size > 1000


def test_a_directory_without_results_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no results.json"):
        report.main([str(tmp_path)])
