"""experiments/shapes_video/report.py and experiments/shapes_av/report.py: mean ± std over seeds of the
runs' results.json, n per cell, failed runs listed; their experiment configs compose and validate."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import ROOT
from mmfuse.validate import validate_train_config


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_report", ROOT / "experiments" / name / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


video_report, av_report = load("shapes_video"), load("shapes_av")


def write_run(path, fusion, seed, metrics, overrides=(), status="completed", steps=160, wall=100.0):
    path.mkdir(parents=True)
    path.joinpath("results.json").write_text(json.dumps({
        "status": status, "kind": "train", "choices": {"fusion": fusion}, "seed": seed, "steps": steps,
        "wall_time_s": wall, "overrides": [*overrides, f"fusion={fusion}", f"seed={seed}"],
        "metrics": metrics if status == "completed" else {},
        "error": None if status == "completed" else "RuntimeError: out of memory"}))


def video_metrics(acc, j_direction, j_order, positive=0.9):
    return {"val/acc": acc, "val/acc_positive": positive, "val/acc_other": 0.95, "val/acc_color": 0.9,
            "val/acc_shape": 0.8, "val/acc_direction": j_direction + 1 - positive,
            "val/acc_order": j_order + 1 - positive, "val/j_color": 0.8, "val/j_shape": positive - 0.2,
            "val/j_direction": j_direction, "val/j_order": j_order}


def line(table: str, start: str) -> str:
    return next(x for x in table.splitlines() if x.startswith(start))


def test_video_table_rows_are_fusion_by_temporal_with_seed_statistics(tmp_path):
    sweep = tmp_path / "sweep"
    mean, transformer = ["encoder.video.temporal=mean"], ["encoder.video.temporal=transformer"]
    write_run(sweep / "0", "mul", 1, video_metrics(0.80, 0.0, 0.0), mean)
    write_run(sweep / "1", "mul", 2, video_metrics(0.90, 0.1, 0.1), mean, wall=120.0)
    write_run(sweep / "2", "mul", 1, video_metrics(0.70, 0.9, 0.85), transformer)
    write_run(sweep / "3", "mul", 2, video_metrics(0.75, 0.95, 0.8), transformer)
    write_run(sweep / "4", "mul", 3, video_metrics(0.80, 0.85, 0.79), transformer)
    metrics = video_metrics(0.6, 0.5, 0.5)
    del metrics["val/j_order"]
    write_run(sweep / "5", "cross_attention", 1, metrics, transformer)
    write_run(sweep / "6", "cross_attention", 2, {}, transformer, status="failed")
    assert video_report.main([str(sweep), "--out", str(tmp_path / "out")]) == 0

    table = (tmp_path / "out" / "table.md").read_text()
    # mean ± sample std over the 2 seeds; other / color / shape constant (std 0); steps, mean wall time
    assert line(table, "| `mul` | `mean` |") == (
        "| `mul` | `mean` | 2 | 1,2 | 0.850 ± 0.071 | 0.900 ± 0.000 | 0.950 ± 0.000 | 0.900 ± 0.000 | "
        "0.800 ± 0.000 | 0.150 ± 0.071 | 0.150 ± 0.071 | 0.800 ± 0.000 | 0.700 ± 0.000 | 0.050 ± 0.071 | "
        "0.050 ± 0.071 | 160 | 110 |")
    assert "| `mul` | `transformer` | 3 | 1,2,3 | 0.750 ± 0.050 |" in table
    assert line(table, "| `mul` | `transformer` |").endswith("| 0.900 ± 0.050 | 0.813 ± 0.032 | 160 | 100 |")
    # the row's only completed run lacks J order: the cell says so rather than borrowing a number
    assert line(table, "| `cross_attention` |").endswith("| 0.500 ± 0.000 | – | 160 | 100 |")
    assert f"{sweep / '6'}: status=failed RuntimeError: out of memory" in table
    # direction: every transformer seed >= 0.8; order: seed 3 of mul / transformer is at 0.79
    assert "- direction: mul / transformer\n- order: none\n" in table
    assert table.splitlines()[2].startswith("| `cross_attention` | `transformer` | 1 | 1 |")  # rows by fusion

    out = json.loads((tmp_path / "out" / "table.json").read_text())
    assert [(r["fusion"], r["temporal"], r["runs"]) for r in out["rows"]] == [
        ("cross_attention", "transformer", 1), ("mul", "mean", 2), ("mul", "transformer", 3)]
    cell = out["rows"][2]["cells"]["val/j_order"]
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(0.81333333) and cell["std"] == pytest.approx(0.0321455)
    assert out["left_out"] == [f"{sweep / '6'}: status=failed RuntimeError: out of memory"]
    assert (tmp_path / "out" / "table.png").stat().st_size > 1000


def test_video_report_solved_threshold_is_an_option(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, j in ((1, 0.7), (2, 0.75)):
        write_run(sweep / str(seed), "mult", seed, video_metrics(0.8, j, j), ["encoder.video.temporal=transformer"])
    write_run(sweep / "3", "mult", 1, video_metrics(0.8, 0.9, 0.9))  # no temporal override
    assert video_report.main([str(sweep), "--out", str(tmp_path), "--solved", "0.7"]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "- direction: mult / transformer, mult / default\n- order: mult / transformer, mult / default\n" in table


def av_metrics(acc, unimodal, bimodal, trimodal=None):
    metrics = {"val/acc": acc, "val/acc_unimodal": unimodal, "val/acc_bimodal": bimodal}
    if trimodal is not None:
        metrics["val/acc_trimodal"] = trimodal
    return metrics


def test_av_table_rows_are_fusions_with_interaction_columns(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", "add", 1, av_metrics(0.70, 1.0, 0.6, 0.5))
    write_run(sweep / "1", "add", 2, av_metrics(0.72, 0.9, 0.6, 0.6))
    write_run(sweep / "2", "add", 3, av_metrics(0.74, 0.8, 0.6, 0.7))
    write_run(sweep / "3", "tfn", 1, av_metrics(0.9, 1.0, 0.9, 0.85))
    write_run(sweep / "4", "tfn", 2, av_metrics(0.8, 1.0, 0.8))  # this run has no trimodal metric
    write_run(sweep / "5", "lmf", 1, {}, status="failed")
    write_run(sweep / "6", "lmf", 2, {}, status="interrupted")
    assert av_report.main([str(sweep), "--out", str(tmp_path / "out")]) == 0

    table = (tmp_path / "out" / "table.md").read_text()
    assert table.splitlines()[0] == "| fusion | n | seeds | val/acc | unimodal | bimodal | trimodal | steps | wall s |"
    assert line(table, "| `add` |") == (
        "| `add` | 3 | 1,2,3 | 0.720 ± 0.020 | 0.900 ± 0.100 | 0.600 ± 0.000 | 0.600 ± 0.100 | 160 | 100 |")
    assert line(table, "| `tfn` |") == (
        "| `tfn` | 2 | 1,2 | 0.850 ± 0.071 | 1.000 ± 0.000 | 0.850 ± 0.071 | 0.850 ± 0.000 (n=1) | 160 | 100 |")
    assert "`lmf`" not in table.split("Runs left out")[0]
    assert f"- {sweep / '5'}: status=failed RuntimeError: out of memory\n" in table
    assert f"- {sweep / '6'}: status=interrupted RuntimeError: out of memory\n" in table
    rows = json.loads((tmp_path / "out" / "table.json").read_text())["rows"]
    assert [r["fusion"] for r in rows] == ["add", "tfn"]
    assert rows[1]["cells"]["val/acc_trimodal"] == {"mean": 0.85, "std": 0.0, "n": 1}


def test_av_rows_name_a_temporal_override(tmp_path):
    write_run(tmp_path / "s" / "0", "tfn", 1, av_metrics(0.9, 1.0, 0.9, 0.8), ["encoder.video.temporal=transformer"])
    assert av_report.main([str(tmp_path / "s"), "--out", str(tmp_path / "out")]) == 0
    assert "| `tfn / transformer` | 1 | 1 |" in (tmp_path / "out" / "table.md").read_text()


@pytest.mark.parametrize("report", [video_report, av_report])
def test_a_directory_without_results_is_an_error(tmp_path, report):
    with pytest.raises(SystemExit, match="no results.json below this directory"):
        report.main([str(tmp_path), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("report", [video_report, av_report])
def test_only_failed_runs_is_an_error_that_lists_them(tmp_path, report):
    write_run(tmp_path / "0", "mul", 1, {}, status="failed")
    with pytest.raises(SystemExit, match=r"no completed runs found\n- .*/0: status=failed RuntimeError"):
        report.main([str(tmp_path), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("experiment, data, sweep", [
    ("shapes_video_temporal", "shapes_video",
     {"fusion": "mul,cross_attention,mult", "encoder.video.temporal": "mean,transformer", "seed": "1,2,3"}),
    ("shapes_av_interactions", "shapes_av", {"fusion": "add,mul,late,tfn,lmf", "seed": "1,2,3"}),
])
def test_experiment_configs_compose_and_validate(make_cfg, experiment, data, sweep):
    cfg = make_cfg(f"experiment={experiment}")
    validate_train_config(cfg)
    assert cfg.data._target_.split(".")[2] == data
    assert dict(cfg.hydra.sweeper.params) == sweep
    assert f"/multirun/{experiment}/" in cfg.hydra.sweep.dir
    assert cfg.test is False


def test_captioning_table_rows_are_fusion_by_decoder_with_seed_statistics(tmp_path):
    report = load("shapes_captioning")

    def metrics(cider, objects):
        return {"val/cider": cider, "val/bleu4": 0.5, "val/exact": objects / 2, "val/distinct": 0.1,
                **{f"val/ground_{g}": 1.0 for g in ("grammatical", "color_named", "shape_named")},
                "val/ground_objects": objects, "val/ground_relation": objects / 2, "val/ground_correct": objects / 2}

    sweep = tmp_path / "sweep"
    for i, (fusion, seed, cider, objects) in enumerate([("single_stream", 1, 6.0, 1.0), ("single_stream", 2, 7.0, 0.9),
                                                         ("mul", 1, 3.5, 0.1)]):
        write_run(sweep / str(i), fusion, seed, metrics(cider, objects))
        record = json.loads((sweep / str(i) / "results.json").read_text())
        record["choices"]["decoder"] = "transformer"
        (sweep / str(i) / "results.json").write_text(json.dumps(record))
    assert report.main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.splitlines()[2].startswith("| `mul` | `transformer` | 1 | 1 | 3.500 ± 0.000 |")  # fusions in order
    assert line(table, "| `single_stream` |").startswith(
        "| `single_stream` | `transformer` | 2 | 1,2 | 6.500 ± 0.707 | 0.500 ± 0.000 | 0.475 ± 0.035 |")
    assert "| 0.950 ± 0.071 | 0.475 ± 0.035 | 0.475 ± 0.035 |" in line(table, "| `single_stream` |")


def test_captioning_experiment_config_composes_and_validates(make_cfg):
    cfg = make_cfg("experiment=shapes_captioning")
    validate_train_config(cfg)
    assert cfg.task._target_ == "mmfuse.tasks.captioning.CaptioningTask"
    assert cfg.decoder._target_ == "mmfuse.decoders.transformer.TransformerDecoder"
    assert dict(cfg.hydra.sweeper.params) == {"fusion": "mul,cross_attention,qformer,single_stream", "seed": "1,2"}
    assert cfg.test is False


def test_per_relation_classes_the_relation_errors():
    spec = importlib.util.spec_from_file_location("per_relation", ROOT / "experiments" / "shapes_captioning" / "per_relation.py")
    per_relation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(per_relation)
    from mmfuse.data.shapes.scene import Obj, Scene

    # a red circle left of a blue square (same height)
    scene = Scene((Obj("red", "circle", 5.0, 10.0, 3.0), Obj("blue", "square", 25.0, 10.0, 3.0)))
    captions = {0: "a red circle to the left of a blue square",     # right
                1: "a blue square to the left of a red circle",      # mirrored
                2: "a red circle above a blue square",               # other axis
                3: "a green circle to the left of a blue square",    # an object not in the scene: left out
                4: "a red circle to the left of a blue",             # not grammatical: left out
                5: "a red circle to the right of a blue square"}     # mirrored
    shares = per_relation.relation_classes([scene] * 6, captions)
    assert shares == {"objects": 4 / 6, "right": 1 / 4, "mirrored": 2 / 4, "other axis": 1 / 4}


def test_dialog_table_rows_are_fusion_by_history_with_per_kind_columns(tmp_path):
    report = load("shapes_dialog")

    def metrics(r1, history_r1):
        out = {"val/r1": (r1 + history_r1) / 2, "val/mrr": 0.7, "val/ndcg": 0.4}
        out.update({"val/r1_image": r1, "val/mrr_image": 0.8, "val/ndcg_image": 0.5,
                    "val/r1_history": history_r1, "val/mrr_history": 0.6, "val/ndcg_history": 0.3})
        return out

    sweep = tmp_path / "sweep"
    runs = [("mul", 1, "none", 0.6, 0.3), ("mul", 2, "none", 0.8, 0.4), ("mul", 1, "concat", 0.6, 0.9),
            ("cross_attention", 1, "late", 0.9, 0.5)]
    for i, (fusion, seed, history, r1, h) in enumerate(runs):
        write_run(sweep / str(i), fusion, seed, metrics(r1, h), overrides=[f"task.history={history}"])
    assert report.main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "table.md").read_text()
    rows = table.splitlines()[2:5]  # fusions in order, then history none, concat, late
    assert [r.split(" | ")[:3] for r in rows] == [["| `mul`", "`none`", "`discriminative`"],
                                                  ["| `mul`", "`concat`", "`discriminative`"],
                                                  ["| `cross_attention`", "`late`", "`discriminative`"]]
    none = line(table, "| `mul` | `none` |")
    assert none.startswith("| `mul` | `none` | `discriminative` | 2 | 1,2 | 0.525 ± 0.106 | 0.700 ± 0.000 |")  # 0.45, 0.60
    assert "| 0.700 ± 0.141 | 0.800 ± 0.000 | 0.500 ± 0.000 | 0.350 ± 0.071 | 0.600 ± 0.000 | 0.300 ± 0.000 |" in none


def test_dialog_experiment_config_composes_and_validates(make_cfg):
    cfg = make_cfg("experiment=shapes_dialog")
    validate_train_config(cfg)
    assert cfg.task._target_ == "mmfuse.tasks.dialog.DialogTask" and cfg.data._target_.split(".")[2] == "shapes_dialog"
    assert dict(cfg.hydra.sweeper.params) == {"fusion": "mul,cross_attention", "task.history": "none,concat,late",
                                              "seed": "1,2,3"}
    assert cfg.test is False


def test_vqa_table_rows_are_fusion_by_answer_mode_with_the_question_prior(tmp_path):
    report = load("shapes_vqa")
    prior = {"attribute": 0.22, "relation": 0.36, "count": 0.28, "compare": 0.47, "overall": 0.33}
    sweep = tmp_path / "sweep"
    runs = [("mul", 1, "classify", 0.7), ("mul", 2, "classify", 0.8), ("text_only", 1, "classify", 0.33),
            ("mul", 1, "generate", 0.75), ("cross_attention", 1, "classify", 0.9)]
    for i, (fusion, seed, answer, acc) in enumerate(runs):
        metrics = {"val/vqa_acc": acc, **{f"val/vqa_acc_{t}": acc - 0.1 * k for k, t in
                                          enumerate(("attribute", "relation", "count", "compare"))}}
        write_run(sweep / str(i), fusion, seed, metrics, overrides=[f"task.answer={answer}"])
        record = json.loads((sweep / str(i) / "results.json").read_text())
        record["data"] = {"val": {"question_prior": prior}}
        (sweep / str(i) / "results.json").write_text(json.dumps(record))
    assert report.main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "table.md").read_text()
    assert [r.split(" | ")[:2] for r in table.splitlines()[2:6]] == [  # classified first, fusions in order
        ["| `text_only`", "`classify`"], ["| `mul`", "`classify`"], ["| `cross_attention`", "`classify`"],
        ["| `mul`", "`generate`"]]
    mul = line(table, "| `mul` | `classify` |")
    assert mul.startswith("| `mul` | `classify` | 2 | 1,2 | 0.750 ± 0.071 | 0.750 ± 0.071 | 0.650 ± 0.071 |")
    assert "| 0.330 ± 0.000 | 0.220 ± 0.000 | 0.360 ± 0.000 | 0.280 ± 0.000 | 0.470 ± 0.000 |" in mul


def test_vqa_experiment_config_composes_and_validates(make_cfg):
    cfg = make_cfg("experiment=shapes_vqa")
    validate_train_config(cfg)
    assert cfg.task._target_ == "mmfuse.tasks.vqa.VQATask" and cfg.task.num_answers == 16
    assert dict(cfg.hydra.sweeper.params) == {"fusion": "text_only,mul,concat,cross_attention",
                                              "seed": "1,2,3"}
    assert cfg.test is False
