"""Issue 13 (audit): eval.py carries the training run's data settings; DDP jobs log once, time the whole
job and skip completed jobs before starting ranks; two-rank mid-epoch resume; compare's failed runs and
sample standard deviation."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import warnings
from datetime import datetime
from pathlib import Path

import pytest
import torch

from conftest import FAST, Items
from mmfuse import distributed
from mmfuse.cli import run_entry
from mmfuse.compare import compare
from mmfuse.compare.runs import collect
from mmfuse.data.samplers import ResumableLoader, TrainBatches, TrainOrder
from mmfuse.distributed import RankPlan, run_ranks
from mmfuse.errors import MMFuseError, RunInterrupted
from mmfuse.evaluate import carried_section, evaluate
from mmfuse.results import JOB_STARTED_ENV, utc_time
from mmfuse.tasks.gallery import Gallery
from mmfuse.train import train

TINY = ("debug=fast", "data.num_train=48", "data.num_val=32", "data.num_test=16")


# -- eval.py: the training run's data settings -----------------------------------------------------------
def test_eval_of_a_debug_fast_run_evaluates_the_runs_data_and_gets_its_metrics(make_cfg):
    trained = train(make_cfg(*FAST, subdir="train"))
    ckpt = Path(trained["run_dir"]) / "checkpoints" / "last.ckpt"
    evaluated = evaluate(make_cfg(f"ckpt_path={ckpt}", subdir="eval", config_name="eval"))
    assert evaluated["data"]["val"] == trained["data"]["val"]
    assert evaluated["data"]["val"]["images"] == 128  # debug=fast's data.num_val, not the default 2,000
    val = {k: v for k, v in trained["metrics"].items() if k.startswith("val/")}
    assert {k: v for k, v in evaluated["metrics"].items() if k.startswith("val/")} == val
    # the user's data overrides still win: other scenes of the same kind and size
    other = evaluate(make_cfg(f"ckpt_path={ckpt}", "data.seed=5", "data.num_val=64", subdir="eval2",
                              config_name="eval"))
    assert other["data"]["val"]["images"] == 64 and other["data"]["train"]["images"] == 256  # debug=fast's
    assert other["metrics"]["val/loss"] != trained["metrics"]["val/loss"]
    # naming the training run's own data option keeps its settings; another option starts from that option's
    same = evaluate(make_cfg(f"ckpt_path={ckpt}", "data=shapes", subdir="eval3", config_name="eval"))
    assert same["data"]["val"] == trained["data"]["val"]


def test_carried_section_keeps_saved_values_under_the_users_keys_and_rederives_interpolations():
    saved = {"num_val": 128, "seed": 0, "cache_dir": "/train/cache/shapes", "negatives": {"color": 1.0, "shape": 1.0},
             "extra": 3}
    composed = {"num_val": 2000, "seed": 5, "cache_dir": "${paths.cache_dir}/shapes",
                "negatives": {"color": 0.0, "shape": 1.0}, "extra": 3}
    out = carried_section("data", composed, saved, ["data.seed=5", "data.negatives.color=0", "~data.extra",
                                                    "fusion=add"])
    assert out == {"num_val": 128, "seed": 5, "cache_dir": "${paths.cache_dir}/shapes",
                   "negatives": {"color": 0.0, "shape": 1.0}}
    assert saved["negatives"]["color"] == 1.0  # the checkpoint's config is not modified


# -- DDP jobs (trainer=ddp_cpu: 2 CPU processes with gloo) ------------------------------------------------
@pytest.mark.slow
def test_a_ddp_job_prints_each_line_once_and_records_the_whole_jobs_wall_time(make_cfg, capfd, monkeypatch):
    cfg = make_cfg("trainer=ddp_cpu", *TINY)
    run_dir = Path(cfg.paths.output_dir)
    envs, popen = [], distributed.subprocess.Popen

    def recording_popen(*args, env, **kwargs):
        envs.append(env)
        return popen(*args, env=env, **kwargs)

    monkeypatch.setattr(distributed.subprocess, "Popen", recording_popen)
    run_entry(train, cfg)
    captured = capfd.readouterr()
    console = captured.out + captured.err
    assert console.count("`Trainer.fit` stopped: `max_epochs=1` reached.") == 1, console
    assert console.count("[mmfuse] train completed") == 1
    assert "GLOBAL_RANK: 1" not in console  # rank 1 writes to its own log only
    [rank0], [rank1] = run_dir.glob("*_rank0.log"), run_dir.glob("*_rank1.log")
    assert rank1.read_text().count("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2") == 1
    assert rank0.read_text().count("`Trainer.fit` stopped: `max_epochs=1` reached.") == 1
    results = json.loads((run_dir / "results.json").read_text())
    # the job's clock: the supervisor's, started when it started the ranks (the start time it gave them)
    started = float(envs[0][JOB_STARTED_ENV])
    assert [float(env[JOB_STARTED_ENV]) for env in envs] == [started, started]
    assert results["started_at"] == utc_time(started)
    finished = datetime.fromisoformat(results["finished_at"]).timestamp()
    assert abs(finished - datetime.fromisoformat(results["started_at"]).timestamp() - results["wall_time_s"]) < 1
    # rank 0 prints its record's time, on the job's clock too: not less than from the job's start to its last
    # log line before the summary (the bug: rank 0 timed only its own train(), after the ranks' start-up,
    # 1.6 of 18.9 s), not more than the supervisor's time (the ranks' shutdown comes after)
    printed = float(re.search(r"\[mmfuse\] train completed in ([\d.]+) s", console).group(1))
    lines = rank0.read_text().splitlines()
    summary = lines.index(f"[mmfuse] train completed in {printed:.1f} s")  # rank 0's summary is in its log
    stamps = [m.group(1) for ln in lines[:summary] if (m := re.match(r"\[(\d{4}-\d\d-\d\d [\d:,]+)\]", ln))]
    last_logged = datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logged
    assert last_logged - started - 0.05 <= printed <= results["wall_time_s"] + 0.05


def test_a_completed_ddp_job_is_skipped_before_any_rank_process_starts(make_cfg, monkeypatch, capsys):
    cfg = make_cfg("trainer=ddp_cpu", *TINY)
    run_dir = Path(cfg.paths.output_dir)
    recorded = {"status": "completed", "kind": "train", "overrides": ["trainer=ddp_cpu", *TINY],
                "metrics": {"val/acc": 0.625, "val/loss": 0.5}, "wall_time_s": 31.5, "attempt": 1}
    (run_dir / "results.json").write_text(json.dumps(recorded))
    started = []

    def popen(*args, **kwargs):
        started.append(args)
        raise AssertionError("a rank process was started")

    monkeypatch.setattr(distributed.subprocess, "Popen", popen)
    assert run_ranks(train, cfg, RankPlan(processes=2)) == recorded
    assert run_entry(train, cfg) == 0.625  # the recorded optimized_metric (val/acc)
    assert started == []
    assert capsys.readouterr().out.count(f"[mmfuse] {run_dir} already holds this run, completed: skipped") == 2
    assert json.loads((run_dir / "results.json").read_text()) == recorded



def test_a_gallery_no_process_updated_is_not_computed_under_ddp(tmp_path):
    """The DDP warning "compute ... of metric Gallery was called before the update": ITM on pair data
    (shapes) fills no retrieval gallery, yet under DDP every rank computed its empty galleries."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert Gallery(("pooled",)).items() is None
    finally:
        torch.distributed.destroy_process_group()
    assert [str(w.message) for w in caught if "before the ``update``" in str(w.message)] == []


def test_the_supervisor_refuses_another_runs_directory_and_leaves_an_unreadable_record_to_the_ranks(make_cfg,
                                                                                                   monkeypatch):
    cfg = make_cfg("trainer=ddp_cpu", *TINY)
    run_dir = Path(cfg.paths.output_dir)

    class Started(Exception):
        pass

    def popen(*args, **kwargs):
        raise Started

    monkeypatch.setattr(distributed.subprocess, "Popen", popen)
    other = {"status": "completed", "kind": "train", "overrides": ["fusion=add"], "metrics": {}}
    (run_dir / "results.json").write_text(json.dumps(other))
    with pytest.raises(MMFuseError, match=r"already holds a run with overrides \['fusion=add'\]"):
        run_ranks(train, cfg, RankPlan(processes=2))
    assert json.loads((run_dir / "results.json").read_text()) == other
    (run_dir / "results.json").write_text('{"status": "compl')  # cut off: the ranks' train() names the fix
    with pytest.raises(Started):
        run_ranks(train, cfg, RankPlan(processes=2))


class FakeRank:
    """A rank process for ``run_ranks``: ended with ``code``, or (``code=None``) running until it is sent a
    signal, then ended with ``on_signal``; at its start it writes ``message`` to its error pipe and ``record``
    as the job's ``results.json`` (rank 0's train)."""

    def __init__(self, code: int | None, *, pass_fds, env, message: str = "", record: dict | None = None,
                 on_signal: int = 143, run_dir: Path | None = None, **popen_kwargs) -> None:
        if message:
            os.write(pass_fds[0], message.encode())
        if record is not None:
            (run_dir / "results.json").write_text(json.dumps(record))
        self.code, self.on_signal, self.stdin, self.sent = code, on_signal, io.BytesIO(), []

    def poll(self) -> int | None:
        return self.code

    def wait(self, timeout: float | None = None) -> int | None:
        return self.code

    def send_signal(self, sig: int) -> None:
        self.sent.append(sig)
        self.code = self.on_signal

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fake_ranks(monkeypatch, run_dir: Path, *ranks: dict) -> list[FakeRank]:
    """``run_ranks`` starts a ``FakeRank(**ranks[r])`` as rank ``r``."""
    started: list[FakeRank] = []

    def popen(args, **kwargs):
        started.append(FakeRank(**ranks[len(started)], run_dir=run_dir, **kwargs))
        return started[-1]

    monkeypatch.setattr(distributed.subprocess, "Popen", popen)
    return started


INTERRUPTED = {"status": "interrupted", "kind": "train", "error": "RunInterrupted: SIGTERM", "signal": "SIGTERM",
               "metrics": {}, "wall_time_s": 7.5}


def test_a_rank_stopped_by_sigterm_ends_the_job_interrupted_with_the_signal_passed_on(make_cfg, monkeypatch):
    """kill -TERM to rank 0: it records interrupted and exits 143; rank 1, still running, gets the SIGTERM
    too. The job is interrupted (143, the resume command), not failed by a rank (RankFailed, exit 1)."""
    cfg = make_cfg("trainer=ddp_cpu", *TINY)
    run_dir = Path(cfg.paths.output_dir)
    ranks = fake_ranks(monkeypatch, run_dir, {"code": 143, "record": INTERRUPTED}, {"code": None})
    with pytest.raises(RunInterrupted) as stopped:
        run_ranks(train, cfg, RankPlan(processes=2))
    assert (stopped.value.signal_name, stopped.value.exit_code) == ("SIGTERM", 143)
    assert [r.sent for r in ranks] == [[], [signal.SIGTERM]]  # not SIGKILL: it may record how it ended
    assert json.loads((run_dir / "results.json").read_text()) == INTERRUPTED


def test_a_signalled_rank_1_makes_the_job_interrupted_though_rank_0_failed_on_the_lost_connection(make_cfg,
                                                                                                monkeypatch):
    cfg = make_cfg("trainer=ddp_cpu", *TINY)
    run_dir = Path(cfg.paths.output_dir)
    failed = {**INTERRUPTED, "status": "failed", "error": "RuntimeError: Connection closed by peer", "signal": None}
    fake_ranks(monkeypatch, run_dir, {"code": 1, "record": failed}, {"code": 130})
    with pytest.raises(RunInterrupted) as stopped:
        run_ranks(train, cfg, RankPlan(processes=2))
    assert stopped.value.exit_code == 130
    recorded = json.loads((run_dir / "results.json").read_text())
    assert {k: recorded[k] for k in ("status", "error", "signal")} == {
        "status": "interrupted", "error": "RunInterrupted: SIGINT", "signal": "SIGINT"}


def test_a_ddp_user_error_about_a_corrupt_results_json_is_one_line_with_its_fix(make_cfg, monkeypatch, capfd):
    cfg = make_cfg("trainer=ddp_cpu", *TINY)
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / "results.json").write_text('{"status": "compl')
    message = (f"{run_dir}/results.json is not JSON, so this directory's run cannot be resumed or skipped. "
               f"Fix: add ckpt_path=last to resume from {run_dir}/checkpoints/last.ckpt")
    fake_ranks(monkeypatch, run_dir, {"code": 2, "message": message}, {"code": 2, "message": message})
    with pytest.raises(SystemExit) as exited:
        run_entry(train, cfg)
    assert exited.value.code == 2
    assert [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("mmfuse:")] == [
        f"mmfuse: error: {message}"]
    assert (run_dir / "results.json").read_text() == '{"status": "compl'  # kept for ckpt_path=last to move aside


def test_rank_0_prints_its_summary_into_its_job_log_too(tmp_path, capsys):
    """In a DDP job rank 0's stdout is the console: what it prints goes to its log too (the other ranks'
    stdout is their log file already)."""
    root = logging.getLogger()
    handler = logging.FileHandler(tmp_path / "train_rank0.log")
    root.handlers.insert(0, handler)  # before pytest's own FileHandler (its log_file, /dev/null)

    def summary(task):
        print("[mmfuse] train completed in 2.5 s")

    try:
        assert distributed.run_rank(summary, None, 0) == 0
        assert distributed.run_rank(summary, None, 1) == 0
    finally:
        root.removeHandler(handler)
        handler.close()
    assert (tmp_path / "train_rank0.log").read_text() == "[mmfuse] train completed in 2.5 s\n"
    assert capsys.readouterr().out == "[mmfuse] train completed in 2.5 s\n" * 2


# -- mid-epoch resume with two ranks -------------------------------------------------------------------------
@pytest.mark.parametrize("sampler_cls", [TrainOrder, TrainBatches])
def test_two_ranks_resume_mid_epoch_with_the_global_batches_not_yet_trained(sampler_cls):
    """Each rank's loader, stopped after 2 of its batches of 4 and resumed from its state, yields the
    rest of its epoch; together the ranks' remaining batches are the one-process global batches of 8
    from the third on (skipping 2 x 4 samples of the global order instead of 2 x 4 x 2 would repeat
    global batch 1 and shift every later one)."""
    data, b, world = Items(40), 4, 2

    def loader(rank: int) -> ResumableLoader:
        sampler = sampler_cls(data, b, world=world, rank=rank, seed=3)
        return ResumableLoader(data, batch_size=None if sampler_cls is TrainBatches else b, sampler=sampler)

    one = TrainOrder(data, b * world, world=1, rank=0, seed=3)
    one.set_epoch(1)
    single = list(one)
    global_batches = [single[k:k + b * world] for k in range(0, len(single), b * world)]
    rest = []
    for rank in range(world):
        first = loader(rank)
        first.sampler.set_epoch(1)
        it = iter(first)
        seen = [next(it).tolist() for _ in range(2)]
        state = first.state_dict()
        assert state == {"epoch": 1, "batches": 2, "world": 2, "batch_size": 4, "seed": 3}
        resumed = loader(rank)
        resumed.load_state_dict(state)
        rest.append([batch.tolist() for batch in resumed])
        assert seen == [g[rank * b:(rank + 1) * b] for g in global_batches[:2]]
    assert [r0 + r1 for r0, r1 in zip(*rest, strict=True)] == global_batches[2:]


# -- compare -------------------------------------------------------------------------------------------------
def _run(root: Path, name: str, status: str, overrides: list[str], acc: float, error: str | None = None) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps({
        "status": status, "kind": "train", "overrides": overrides, "choices": {"fusion": "mul"},
        "metrics": {"val/acc": acc}, "wall_time_s": 10.0, "error": error, "monitor": "val/acc"}))


def test_compare_shows_a_failed_run_with_metrics_and_leaves_it_out_of_the_mean_and_sample_std(tmp_path):
    sweep = tmp_path / "sweep"
    for job, (seed, acc) in enumerate([(1, 0.5), (2, 0.7), (3, 0.9)]):
        _run(sweep, str(job), "completed", ["fusion=add", f"seed={seed}"], acc)
    _run(sweep, "3", "failed", ["fusion=add", "seed=4"], 0.1, error="RuntimeError: loss is nan")  # its last val
    _run(sweep, "4", "completed", ["fusion=mul", "seed=1"], 0.6)
    result = compare(collect([sweep]), out=tmp_path / "out", make_plot=False)
    assert result.markdown == (
        "5 runs, 4 with val/acc (higher is better)\n"
        "\n"
        "| rank | best | run | fusion | seed | val/acc | wall_time_s | status | error |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| 1 | best | 2 | add | 3 | **0.9000** | 10.0 | completed |  |\n"
        "| 2 |  | 1 | add | 2 | 0.7000 | 10.0 | completed |  |\n"
        "| 3 |  | 4 | mul | 1 | 0.6000 | 10.0 | completed |  |\n"
        "| 4 |  | 0 | add | 1 | 0.5000 | 10.0 | completed |  |\n"
        "|  |  | 3 | add | 4 |  | 10.0 | failed | RuntimeError: loss is nan |\n"
        "\n"
        "val/acc over seeds (mean ± sample std, n runs):\n"
        "\n"
        "| fusion | mean | std | n |\n"
        "|---|---|---|---|\n"
        "| add | 0.7000 | 0.2000 | 3 |\n"  # with the failed run: 0.5500, 0.3416, 4; population std: 0.1633
        "| mul | 0.6000 |  | 1 |\n"
    )
    add = next(a for a in result.aggregated if a.group == {"fusion": "add"})
    assert (add.mean, add.std, add.n) == (pytest.approx(0.7, abs=1e-15), 0.2, 3)
