"""``python -m mmfuse.compare <dir> --robustness`` on hand-made eval results, with exact cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmfuse.compare import main
from mmfuse.compare.robustness import robustness_report
from mmfuse.errors import MMFuseError


def write(root: Path, job: str, fusion: str, seed: int, curve: list[float], levels=(0.0, 0.5, 1.0), **extra) -> None:
    d = root / job
    d.mkdir(parents=True)
    section = {"name": "image_noise", "kind": "gaussian", "modality": "image", "metric": "val/acc",
               "levels": list(levels), "curve": {"val/acc": curve, "val/loss": [0.5] * len(curve)},
               "relative_robustness": sum((a + b) / 2 for a, b in zip(curve[:-1], curve[1:])) / (len(curve) - 1),
               "seed": 0, **extra}
    (d / "results.json").write_text(json.dumps({
        "kind": "eval", "status": "completed", "metrics": {"val/acc": curve[0]},
        "trained_with": [f"fusion={fusion}", f"seed={seed}", "experiment=fusion_zoo"], "robustness": section}))


@pytest.fixture
def sweep(tmp_path):
    write(tmp_path, "0", "late", 1, [0.8, 0.6, 0.4])
    write(tmp_path, "1", "late", 2, [0.8, 0.6, 0.4])
    write(tmp_path, "2", "mul", 1, [0.9, 0.8, 0.7])
    write(tmp_path, "3", "mul", 2, [0.7, 0.6, 0.5])
    return tmp_path


def test_curve_table_cells_and_effective_robustness_exact(sweep):
    report = robustness_report([sweep], sweep)
    table = report.markdown["image_noise"]
    lines = [line for line in table.splitlines() if line.startswith("| fusion=")]
    # sorted by relative robustness: mul (0.8 and 0.6 -> 0.7 ± 0.141) before late (0.6)
    assert lines[0] == ("| fusion=mul | 2 | 0.800 ± 0.141 | 0.700 ± 0.141 | 0.600 ± 0.141 | 0.700 ± 0.141 "
                        "| 0.300 ± 0.000 |")
    assert lines[1] == "| fusion=late | 2 | 0.800 ± 0.000 | 0.600 ± 0.000 | 0.400 ± 0.000 | 0.600 ± 0.000 | 0.000 ± 0.000 |"
    assert report.plotted["image_noise"] == {"fusion=late": pytest.approx([0.8, 0.6, 0.4]),
                                             "fusion=mul": pytest.approx([0.8, 0.7, 0.6])}
    assert (sweep / "robustness_image_noise.png").stat().st_size > 1000
    # the figure's artists: one error-bar line per fusion, at the mean over seeds
    assert report.lines["image_noise"] == {"fusion=late": pytest.approx([0.8, 0.6, 0.4]),
                                           "fusion=mul": pytest.approx([0.8, 0.7, 0.6])}
    assert (sweep / "robustness_image_noise.md").read_text() == table


def test_levels_that_differ_are_an_error_and_no_robustness_is_a_clear_one(sweep, tmp_path_factory):
    write(sweep, "4", "mul", 3, [0.9, 0.8], levels=(0.0, 0.3))
    with pytest.raises(MMFuseError, match="levels"):
        robustness_report([sweep], None)
    empty = tmp_path_factory.mktemp("empty")
    (empty / "results.json").write_text(json.dumps({"kind": "eval", "status": "completed", "metrics": {}}))
    with pytest.raises(MMFuseError, match=r"\+robustness=<name>"):
        robustness_report([empty], None)


def test_missing_sections_table_and_the_cli(sweep, tmp_path_factory, capsys):
    tmp_path = tmp_path_factory.mktemp("other")
    d = tmp_path / "missing" / "0"
    d.mkdir(parents=True)
    section = {"name": "missing", "kind": "missing", "mode": "zeros", "metric": "val/acc",
               "subsets": {"image+text": 0.9, "image": 0.5, "text": 0.6, "": 0.5},
               "drop": {"image": 0.3, "text": 0.4}, "shapley": {"image": 0.15, "text": 0.25}, "seed": 0}
    (d / "results.json").write_text(json.dumps({"kind": "eval", "status": "completed",
                                                "trained_with": ["fusion=mul"], "robustness": section}))
    assert main([str(tmp_path / "missing"), "--robustness"]) == 0
    out = capsys.readouterr().out
    assert "| zeros | all | 1 | 0.900 | 0.500 | 0.600 | 0.500 | 0.300 | 0.400 | 0.150 | 0.250 |" in out
    assert main([str(sweep), "--robustness", "--baseline", "mul", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "effective (vs fusion=mul)" in out and "| fusion=late | 2 | 0.800 ± 0.000 | 0.600 ± 0.000 | 0.400 ± 0.000 | 0.600 ± 0.000 | -0.300 ± 0.000 |" in out


def test_relative_robustness_is_computed_from_the_curve_and_runs_without_a_section_are_counted(sweep, capsys):
    # four levels, unequal drops: RR = (0.9+0.6)/2/3 + (0.6+0.5)/2/3 + (0.5+0.2)/2/3 = 0.55 (the stored value ignored)
    other = sweep / "4levels"
    write(other, "0", "late", 1, [0.9, 0.6, 0.5, 0.2], levels=(0.0, 0.1, 0.2, 0.3), relative_robustness=99.0)
    (other / "plain").mkdir()
    (other / "plain" / "results.json").write_text(json.dumps({"kind": "eval", "status": "completed", "metrics": {}}))
    assert main([str(other), "--robustness", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "| all | 1 | 0.900 | 0.600 | 0.500 | 0.200 | 0.550 | n/a |" in out
    assert "(1 eval results.json without a robustness section left out)" in out


def test_missing_sections_of_other_modalities_are_an_error(tmp_path):
    for job, subsets in (("0", {"image+text": 0.9, "image": 0.5, "text": 0.6, "": 0.5}),
                         ("1", {"video+text": 0.9, "video": 0.5, "text": 0.6, "": 0.5})):
        d = tmp_path / job
        d.mkdir()
        mods = [m for m in subsets if m and "+" not in m]
        section = {"name": "missing", "kind": "missing", "mode": "zeros", "metric": "val/acc", "subsets": subsets,
                   "drop": dict.fromkeys(mods, 0.1), "shapley": dict.fromkeys(mods, 0.2), "seed": 0}
        (d / "results.json").write_text(json.dumps({"kind": "eval", "status": "completed",
                                                    "trained_with": ["fusion=mul"], "robustness": section}))
    with pytest.raises(MMFuseError, match="subsets"):
        robustness_report([tmp_path], None)
