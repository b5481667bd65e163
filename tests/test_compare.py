"""python -m mmfuse.compare: the table, CSV, Markdown and plot of a real sweep; failed runs; W&B source."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, run_cli
from mmfuse.compare import compare, main
from mmfuse.compare.runs import collect
from mmfuse.compare.wandb_source import collect_wandb

TINY = ("debug=fast", "data.num_train=48", "data.num_val=32", "data.num_test=16", "data.batch_size=16")


def fake_run(root: Path, name: str, status: str, overrides: list[str], metrics: dict, error: str | None = None,
             choices: dict | None = None) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps({
        "status": status, "kind": "train", "overrides": overrides, "choices": choices or {"fusion": "mul"},
        "metrics": metrics, "wall_time_s": 12.345, "error": error, "monitor": "val/acc"}))


@pytest.fixture
def small_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    fake_run(sweep, "0", "completed", ["fusion=add", "optimizer.lr=1e-3", "debug=fast"], {"val/acc": 0.7, "val/loss": 0.5})
    fake_run(sweep, "1", "failed", ["fusion=mul", "optimizer.lr=1e-3", "debug=fast"], {}, error="RuntimeError: boom")
    fake_run(sweep, "2", "completed", ["fusion=add", "optimizer.lr=1e-2", "debug=fast"], {"val/acc": 0.9, "val/loss": 0.3})
    fake_run(sweep, "10", "running", ["fusion=mul", "optimizer.lr=1e-2", "debug=fast"], {})
    return sweep


def test_table_sorts_by_the_metric_marks_the_best_and_shows_failed_runs(small_sweep, capsys):
    assert main([str(small_sweep), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "common overrides: `debug=fast`" in out
    with open(small_sweep / "compare.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["rank", "best", "run", "fusion", "optimizer.lr", "val/acc", "wall_time_s", "status", "error"]
    assert [(r["run"], r["best"], r["val/acc"], r["status"]) for r in table] == [
        ("2", "best", "0.9", "completed"), ("0", "", "0.7", "completed"), ("1", "", "", "failed"), ("10", "", "", "running")]
    assert table[2]["error"] == "RuntimeError: boom" and table[0]["wall_time_s"] == "12.3"
    md = (small_sweep / "compare.md").read_text()
    assert "| 1 | best | 2 | add | 1e-2 | **0.9000** | 12.3 | completed |  |" in md
    assert "|  |  | 1 | mul | 1e-3 |  | 12.3 | failed | RuntimeError: boom |" in md

    assert main([str(small_sweep), "--no-plot", "--metric", "val/loss"]) == 0  # a loss: lower is better
    with open(small_sweep / "compare.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)][:2] == ["2", "0"]


def test_bad_input_is_one_clear_line(small_sweep, tmp_path, capsys, monkeypatch):
    assert main([str(small_sweep), "--metric", "val/nope"]) == 2
    assert "--metric val/nope: no completed run has it; the runs have ['val/acc', 'val/loss']" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no train results.json in or under" in capsys.readouterr().err
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert main(["--wandb", "team/mmfuse"]) == 2
    assert "--wandb needs W&B credentials and network access: run `wandb login`" in capsys.readouterr().err
    assert main(["--wandb", "mmfuse"]) == 2
    assert "give ENTITY/PROJECT" in capsys.readouterr().err


def test_wandb_runs_give_the_same_table_as_their_results_json(small_sweep, tmp_path):
    def api_run(job: str, state: str) -> SimpleNamespace:
        results = json.loads((small_sweep / job / "results.json").read_text())
        return SimpleNamespace(
            id=f"id{job}", name=job, state=state, url=f"https://wandb.ai/team/mmfuse/runs/id{job}",
            config={"optimizer": {"lr": 1.0}, "mmfuse": {"overrides": results["overrides"], "choices": results["choices"]}},
            summary={**results["metrics"], "status": results["status"], "wall_time_s": results["wall_time_s"], "_runtime": 13})

    calls = []

    class FakeApi:
        def runs(self, path, filters):
            calls.append((path, filters))
            return [api_run("0", "finished"), api_run("1", "failed"), api_run("2", "finished"), api_run("10", "running")]

    runs = collect_wandb("team/mmfuse", group="multirun/s1", api=FakeApi())
    assert calls == [("team/mmfuse", {"group": "multirun/s1"})]
    from_wandb = compare(runs, "val/acc")
    from_files = compare(collect([small_sweep]), "val/acc")
    keep = ("rank", "best", "run", "fusion", "optimizer.lr", "val/acc", "wall_time_s", "status")
    assert [{k: r[k] for k in keep} for r in from_wandb.rows] == [{k: r[k] for k in keep} for r in from_files.rows]


@pytest.mark.slow
def test_compare_a_real_sweep_over_fusions_learning_rates_and_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("train.py", "-m", "fusion=add,mul", "optimizer.lr=1e-3,1e-2", "seed=1,2", *TINY,
                   f"hydra.sweep.dir={sweep}", outputs=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = subprocess.run([sys.executable, "-m", "mmfuse.compare", str(sweep), "--metric", "val/auroc"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert f"written to {sweep}: compare.csv, compare.md, compare.png" in shown.stdout

    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    with open(sweep / "compare.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and {"fusion", "optimizer.lr", "seed", "val/auroc", "wall_time_s", "status"} <= set(table[0])
    scores = [float(r["val/auroc"]) for r in table]
    assert scores == sorted(scores, reverse=True) and table[0]["best"] == "best"
    for row in table:  # every row is its run's results.json
        r = results[row["run"]]
        assert float(row["val/auroc"]) == pytest.approx(r["metrics"]["val/auroc"], abs=1e-12)
        assert f"fusion={row['fusion']}" in r["overrides"] and f"seed={row['seed']}" in r["overrides"]

    # the plot: one bar per (fusion, learning rate), mean over the 2 seeds, error bar = their sample std
    comparison = compare(collect([sweep]), "val/auroc", out=tmp_path / "again")
    assert len(comparison.plotted) == 4
    for (fusion, lr), (height, err) in comparison.plotted.items():
        values = [r["metrics"]["val/auroc"] for r in results.values()
                  if f"fusion={fusion}" in r["overrides"] and f"optimizer.lr={lr}" in r["overrides"]]
        assert len(values) == 2
        assert height == pytest.approx(statistics.fmean(values)) and err == pytest.approx(statistics.stdev(values))
    png = (sweep / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "val/auroc over seeds (mean ± sample std, n runs):" in (sweep / "compare.md").read_text()
