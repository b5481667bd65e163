"""compare --ci / --test: the statistics against scipy and hand computations; the tests end to end on
run directories with per-sample predictions; the errors that name the fix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sp

from mmfuse.compare import main
from mmfuse.compare.stats import holm, paired_bootstrap, t_interval, welch
from mmfuse.errors import MMFuseError


def test_t_interval_is_students_and_matches_scipy():
    values = [0.7, 0.8, 0.9]
    low, high = t_interval(values, 0.95)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, 2}, s = 0.1
    assert (low, high) == pytest.approx((0.8 - half, 0.8 + half), abs=1e-9)
    rng = np.random.default_rng(3)
    for n, c in ((2, 0.9), (5, 0.95), (12, 0.99)):
        x = list(rng.normal(0.6, 0.05, n))
        expected = sp.t.interval(c, n - 1, loc=np.mean(x), scale=sp.sem(x))
        assert t_interval(x, c) == pytest.approx(expected, abs=1e-12)
    assert t_interval([0.5], 0.95) is None
    with pytest.raises(MMFuseError, match="--ci 95"):
        t_interval(values, 95)


def test_welch_matches_scipy():
    rng = np.random.default_rng(0)
    for na, nb in ((3, 3), (3, 5), (10, 4)):
        a, b = list(rng.normal(0.7, 0.02, na)), list(rng.normal(0.68, 0.05, nb))
        ours, theirs = welch(a, b), sp.ttest_ind(a, b, equal_var=False)
        assert ours.t == pytest.approx(theirs.statistic, rel=1e-12)
        assert ours.p == pytest.approx(theirs.pvalue, rel=1e-10)
        assert ours.df == pytest.approx(theirs.df, rel=1e-12)
        assert ours.diff == pytest.approx(np.mean(a) - np.mean(b), abs=1e-15)
    assert welch([0.5], [0.4, 0.6]) is None
    assert welch([0.5, 0.5], [0.5, 0.5]) is None  # no spread over seeds on either side: nothing to test
    assert welch([0.6, 0.6], [0.5, 0.5]) is None
    assert welch([0.6, 0.6], [0.5, 0.7]).df == pytest.approx(1.0)  # one side varies: df = its n − 1


def test_paired_bootstrap_interval_matches_scipy_and_the_exact_distribution():
    rng = np.random.default_rng(1)
    x = (rng.random(400) < 0.7).astype(float)
    y = np.where(rng.random(400) < 0.8, x, 1 - x)  # y agrees with x on 80% of the samples
    ours = paired_bootstrap(x, y, 0.95, resamples=20_000, seed=0)
    theirs = sp.bootstrap((x, y), lambda a, b: np.mean(a - b), paired=True, vectorized=False, n_resamples=20_000,
                          confidence_level=0.95, method="percentile", random_state=1).confidence_interval
    assert ours.diff == pytest.approx(np.mean(x - y), abs=1e-15)
    assert ours.low == pytest.approx(theirs.low, abs=0.004)  # two Monte Carlo estimates (se ~0.0015)
    assert ours.high == pytest.approx(theirs.high, abs=0.004)
    # n = 2, d = (1, 0): δ = 0.5, δ* is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4; |δ* − δ| >= δ half the time
    assert paired_bootstrap(np.array([1.0, 0.0]), np.zeros(2), resamples=40_000).p == pytest.approx(0.5, abs=0.01)


def test_paired_bootstrap_edge_cases_are_exact_and_seeded():
    x = np.array([1.0, 0.0, 1.0, 1.0])
    same = paired_bootstrap(x, x, resamples=999)
    assert (same.diff, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)
    shifted = paired_bootstrap(x, x - 0.25, resamples=999)  # every resample differs by exactly 0.25
    assert shifted.p == pytest.approx(1 / 1000, abs=1e-15)
    assert shifted.low == pytest.approx(0.25) and shifted.high == pytest.approx(0.25)
    a = paired_bootstrap(x, np.array([0.0, 0.0, 1.0, 0.0]), resamples=500, seed=7)
    assert a == paired_bootstrap(x, np.array([0.0, 0.0, 1.0, 0.0]), resamples=500, seed=7)
    with pytest.raises(MMFuseError, match="equally long"):
        paired_bootstrap(x, x[:3])


def test_holm_step_down_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4·0.005, 3·0.01, 2·0.03, max(0.06, 1·0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([0.02, 0.02, 0.02]) == pytest.approx([0.06, 0.06, 0.06])  # ties: one adjusted value
    assert holm([0.04, 0.001, 0.03]) == pytest.approx([0.06, 0.003, 0.06])  # monotone: 2·0.03 carried to 0.04
    assert holm([]) == []


# -- end to end on run directories ------------------------------------------------------------------

def fake_run(root: Path, fusion: str, seed: int, correct: np.ndarray, labels: np.ndarray) -> Path:
    run = root / f"{fusion}_{seed}"
    (run / "predictions").mkdir(parents=True)
    np.savez(run / "predictions" / "val.npz", acc=correct.astype(np.float32), label=labels,
             index=np.arange(len(correct)))
    (run / "results.json").write_text(json.dumps({
        "status": "completed", "kind": "train", "overrides": [f"fusion={fusion}", f"seed={seed}"],
        "choices": {"fusion": fusion}, "metrics": {"val/acc": float(correct.mean())}, "monitor": "val/acc"}))
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 1000)
    truth = {"mul": 0.80, "add": 0.70, "concat": 0.795}
    for fusion, p in truth.items():
        for seed in (1, 2, 3):
            fake_run(tmp_path / "sweep", fusion, seed, (rng.random(1000) < p + 0.004 * seed).astype(float), labels)
    return tmp_path / "sweep"


def _stats(out: Path) -> dict[str, dict]:
    data = json.loads((out / "compare_stats.json").read_text())
    return {row["group"]["fusion"]: row for row in data["rows"]}


def test_paired_bootstrap_and_welch_against_a_baseline_with_holm(sweep, capsys):
    assert main([str(sweep), "--ci", "0.95", "--test", "paired_bootstrap", "--baseline", "mul", "--resamples", "2000"]) == 0
    printed = capsys.readouterr().out
    assert "each row against fusion=mul, over evaluation samples (paired bootstrap); Holm's correction over 2 tests" in printed
    rows = _stats(sweep)
    assert rows["mul"]["baseline"] and rows["mul"]["p"] is None
    scores = {f: np.mean([np.load(sweep / f"{f}_{s}" / "predictions" / "val.npz")["acc"].astype(float) for s in (1, 2, 3)], axis=0)
              for f in rows}
    for f in ("add", "concat"):
        assert rows[f]["diff"] == pytest.approx(float(np.mean(scores[f] - scores["mul"])), abs=1e-12)
        values = rows[f]["values"]
        assert rows[f]["ci"] == pytest.approx(list(sp.t.interval(0.95, 2, loc=np.mean(values), scale=sp.sem(values))))
    assert rows["add"]["p"] == pytest.approx(1 / 2001) and rows["add"]["holds"]  # 0.10 apart on 1000 samples
    assert rows["concat"]["p"] > 0.05 and not rows["concat"]["holds"]
    assert rows["add"]["p_holm"] == pytest.approx(min(1.0, 2 * rows["add"]["p"]))
    md = (sweep / "compare.md").read_text()
    add_line = [line for line in md.splitlines() if line.startswith("| add |")][-1]  # the significance table's
    assert add_line.endswith("| ✓ |") and f"| {rows['add']['diff']:+.4f} |" in add_line
    assert (sweep / "compare.png").stat().st_size > 0

    assert main([str(sweep), "--test", "welch", "--baseline", "mul"]) == 0
    rows = _stats(sweep)
    expected = sp.ttest_ind(rows["add"]["values"], rows["mul"]["values"], equal_var=False).pvalue
    assert rows["add"]["p"] == pytest.approx(expected, rel=1e-10)
    p_add, p_concat = rows["add"]["p"], rows["concat"]["p"]
    assert rows["add"]["p_holm"] == pytest.approx(min(1.0, 2 * min(p_add, p_concat)) if p_add <= p_concat
                                                  else max(2 * p_concat, p_add))


@pytest.mark.parametrize("case, args, message", [
    ("no baseline", ["--test", "welch"], "add --baseline <fusion>"),
    ("unknown baseline", ["--test", "welch", "--baseline", "late"], "no row with fusion=late"),
    ("no such column", ["--test", "paired_bootstrap", "--baseline", "mul", "--metric", "val/auroc"], None),
])
def test_bad_requests_name_the_fix(sweep, capsys, case, args, message):
    if case == "no such column":
        for run in sweep.iterdir():
            results = json.loads((run / "results.json").read_text())
            results["metrics"]["val/auroc"] = 0.5
            (run / "results.json").write_text(json.dumps(results))
        message = "no per-sample column 'auroc' for val/auroc"
    assert main([str(sweep), *args]) == 2
    assert message in capsys.readouterr().err


def test_predictions_that_do_not_belong_are_refused(sweep, capsys):
    np.savez(sweep / "add_2" / "predictions" / "val.npz", acc=np.ones(1000, np.float32), label=np.zeros(1000),
             index=np.arange(1000))
    assert main([str(sweep), "--test", "paired_bootstrap", "--baseline", "mul"]) == 2
    assert "the file is from another pass" in capsys.readouterr().err
    (sweep / "add_2" / "predictions" / "val.npz").unlink()
    assert main([str(sweep), "--test", "paired_bootstrap", "--baseline", "mul"]) == 2
    assert "add_2/predictions/val.npz: no such file" in capsys.readouterr().err
    for f in ("add_1", "add_2", "add_3"):  # other labels: other evaluation data than the baseline's
        data = dict(np.load(sweep / "mul_1" / "predictions" / "val.npz"))
        fake_run(sweep / "other", "add", int(f[-1]), data["acc"].astype(float), 1 - data["label"])
    for f in ("mul_1", "mul_2", "mul_3"):
        (sweep / "other" / f).parent.mkdir(exist_ok=True)
        import shutil
        shutil.copytree(sweep / f, sweep / "other" / f)
    assert main([str(sweep / "other"), "--test", "paired_bootstrap", "--baseline", "mul"]) == 2
    assert "not evaluated on the same samples" in capsys.readouterr().err


# -- the predictions written by training and evaluation ---------------------------------------------

def test_train_and_eval_write_per_sample_predictions_that_give_the_metrics(make_cfg):
    from mmfuse.evaluate import evaluate
    from mmfuse.predictions import read
    from mmfuse.train import train

    cfg = make_cfg("debug=fast", "data.num_train=48", "data.num_val=40", "data.num_test=24", "data.batch_size=16")
    trained = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert trained["predictions"] == {"val": "predictions/val.npz", "test": "predictions/test.npz"}
    for split, n_pairs in (("val", 80), ("test", 48)):  # each image gives a positive and a negative pair
        data = read(run_dir / trained["predictions"][split])
        assert set(data) == {"acc", "logit", "label", "pair_type", "index"}
        assert len(data["acc"]) == n_pairs and list(data["index"]) == list(range(n_pairs))
        assert float(data["acc"].mean()) == pytest.approx(trained["metrics"][f"{split}/acc"], abs=1e-6)
        assert np.array_equal(data["acc"], ((data["logit"] > 0) == (data["label"] == 1)).astype(np.float32))
        assert data["label"].sum() == n_pairs // 2
    evaluated = evaluate(make_cfg(f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", subdir="eval",
                                  config_name="eval"))
    eval_dir = run_dir.parent / "eval"  # make_cfg(subdir="eval")
    assert evaluated["predictions"] == {"val": "predictions/val.npz", "test": "predictions/test.npz"}
    for split in ("val", "test"):
        ours, theirs = read(eval_dir / "predictions" / f"{split}.npz"), read(run_dir / "predictions" / f"{split}.npz")
        assert np.array_equal(ours["label"], theirs["label"]) and np.array_equal(ours["acc"], theirs["acc"])
        assert ours["logit"] == pytest.approx(theirs["logit"], abs=1e-5)


def test_a_predictions_file_that_is_not_one_is_refused(tmp_path):
    from mmfuse.predictions import read

    bad = tmp_path / "val.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(MMFuseError, match="val.npz: not a predictions file"):
        read(bad)
    np.savez(bad, acc=np.ones(3), index=np.arange(4))
    with pytest.raises(MMFuseError, match="1-d columns of one length"):
        read(bad)
    obj = tmp_path / "obj.npz"
    np.savez(obj, acc=np.array([{"x": 1}], dtype=object), index=np.arange(1))
    with pytest.raises(MMFuseError, match="not a predictions file"):  # pickled objects are never loaded
        read(obj)



def test_holm_decides_what_holds_not_the_raw_p_value():
    from mmfuse.compare.runs import Run
    from mmfuse.compare.significance import significance

    def run(fusion: str, seed: int, acc: float) -> Run:
        return Run(name=f"{fusion}{seed}", status="completed", overrides={"fusion": fusion, "seed": str(seed)},
                   metrics={"val/acc": acc})

    base = [0.50, 0.51, 0.52]
    runs = [run("mul", s, v) for s, v in enumerate(base)]
    runs += [run("add", s, v + 0.022) for s, v in enumerate([0.50, 0.515, 0.52])]  # Welch p = 0.047
    runs += [run("late", s, v + 0.025) for s, v in enumerate([0.50, 0.515, 0.52])]  # Welch p = 0.033
    rows = {r.group["fusion"]: r for r in significance(runs, "val/acc", 0.95, "welch", "mul").rows}
    assert rows["add"].p == pytest.approx(0.04695498519047682) and rows["late"].p == pytest.approx(0.03297541884569089)
    assert rows["late"].p_holm == pytest.approx(2 * rows["late"].p) and rows["add"].p_holm == pytest.approx(2 * rows["late"].p)
    assert not rows["add"].holds and not rows["late"].holds  # each p < 0.05, but 0.066 after Holm
    assert rows["late"].aggregate.ci == pytest.approx(t_interval([0.525, 0.54, 0.545], 0.95))
