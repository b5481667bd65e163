"""DDP done right: samplers equal to one process, one directory and one run per job, rank failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.utils.data import DistributedSampler

from conftest import CONF_DIR, ROOT, Items, run_cli
from mmfuse.cli import run_entry
from mmfuse.data.samplers import EvalShard, ResumableLoader, TrainOrder
from mmfuse.distributed import RankPlan, rank_plan
from mmfuse.errors import MMFuseError
from mmfuse.train import train

TINY = ("debug=fast", "data.num_train=48", "data.num_val=32", "data.num_test=16")


@pytest.mark.parametrize("n,world", [(7, 2), (10, 3), (66, 2), (1, 2)])
def test_eval_shard_gives_every_sample_exactly_once(n, world):
    shards = [list(EvalShard(Items(n), world, r)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(EvalShard(Items(n), world, r)) for r in range(world)] == [len(s) for s in shards]
    # what the metrics would count with Lightning's default sampler: padded with repeated samples
    padded = sum(len(list(DistributedSampler(Items(n), world, r, shuffle=False))) for r in range(world))
    assert padded == -(-n // world) * world


@pytest.mark.parametrize("n", [96, 90, 91])
def test_train_order_ranks_split_the_one_process_batches(n):
    world, b = 2, 8
    one = TrainOrder(Items(n), batch_size=b * world, world=1, rank=0, seed=11)
    ranks = [TrainOrder(Items(n), batch_size=b, world=world, rank=r, seed=11) for r in range(world)]
    for epoch in (0, 3):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        single = list(one)
        assert sorted(single) == list(range(n))  # a permutation, nothing padded in one process
        per_rank = [list(s) for s in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0]) == -(-n // world)  # same number of steps
        steps = -(-len(per_rank[0]) // b)
        together = [per_rank[0][k * b:(k + 1) * b] + per_rank[1][k * b:(k + 1) * b] for k in range(steps)]
        batches = [single[k * b * world:(k + 1) * b * world] for k in range(steps)]
        if n % world == 0:  # every global batch is exactly the one-process batch, the last one included
            assert together == batches
        else:  # padded by repeating the first sample of the order, only in the last global batch
            assert together[:-1] == batches[:-1]
            assert together[-1] == batches[-1] + [single[0]]
    one.set_epoch(0)
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first  # a new order every epoch


def test_resumable_loader_continues_the_epoch_where_it_stopped():
    data = Items(40)
    loader = ResumableLoader(data, batch_size=4, sampler=TrainOrder(data, 4, seed=3))
    loader.sampler.set_epoch(2)
    full = [b.tolist() for b in loader]
    it = iter(loader)
    seen = [next(it).tolist() for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 3, "world": 1, "batch_size": 4, "seed": 3}

    fresh = ResumableLoader(data, batch_size=4, sampler=TrainOrder(data, 4, seed=3))
    fresh.load_state_dict(state)
    assert seen + [b.tolist() for b in fresh] == full
    assert [b.tolist() for b in fresh] == full  # the skip applies once; the next epoch is whole

    other = ResumableLoader(data, batch_size=8, sampler=TrainOrder(data, 8, seed=3))
    with pytest.raises(MMFuseError, match=r"same trainer devices, data.batch_size and seed"):
        other.load_state_dict(state)


def test_rank_plan_asks_lightning_whether_ranks_must_be_started(make_cfg, monkeypatch):
    assert rank_plan(make_cfg("trainer=ddp_cpu")) == RankPlan(processes=2)
    assert rank_plan(make_cfg("trainer=ddp_cpu", "trainer.devices=3")) == RankPlan(processes=3)
    assert rank_plan(make_cfg()) is None
    assert rank_plan(make_cfg("trainer=ddp_cpu", "trainer.strategy=ddp_spawn")) is None  # Lightning spawns in-process
    with pytest.raises(MMFuseError, match=r"trainer.num_nodes=2: .* hydra/launcher=slurm"):
        rank_plan(make_cfg("trainer=ddp_cpu", "trainer.num_nodes=2"))
    monkeypatch.setenv("MMFUSE_RANK_PROCESS", "1")  # inside a rank: run the job here
    assert rank_plan(make_cfg("trainer=ddp_cpu")) is None


@pytest.mark.slow
def test_a_user_error_on_the_ranks_is_one_line_and_recorded(make_cfg, capfd):
    cfg = make_cfg("trainer=ddp_cpu", "optimizer.lr=abc", *TINY)
    with pytest.raises(SystemExit) as exit_info:
        run_entry(train, cfg)
    assert exit_info.value.code == 2
    err = capfd.readouterr().err
    assert "mmfuse: error: optimizer.lr='abc' is not a number" in err and "Traceback" not in err
    run_dir = Path(cfg.paths.output_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and "optimizer.lr='abc'" in results["error"]
    assert sorted(p.name.rsplit("_", 1)[1] for p in run_dir.glob("*_rank*.log")) == ["rank0.log", "rank1.log"]


def _jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name))


@pytest.mark.slow
def test_ddp_multirun_one_directory_per_job_and_the_metrics_of_one_process(tmp_path):
    """2 ranks x 8 samples per step (gloo) against 1 process x 16: the same global batches (TrainOrder),
    gradients averaged over the ranks, validation split without padding and reduced by torchmetrics.

    The CNN is frozen: its BatchNorm then uses its running statistics, the same in both runs (trainable
    BatchNorm would normalise over 8 samples per rank; SyncBatchNorm, which fixes that, needs GPUs and is
    on in trainer=ddp). Tolerance 1e-5: measured differences are ~6e-8 (float32 sums in another order),
    while a run with another global batch (8) differs by 3e-3 in val/loss and 4e-2 in val/auroc.
    """
    common = ["encoder.image.freeze=true", "optimizer.lr=1e-2", "seed=5", *TINY]
    if (CONF_DIR / "cache").is_dir():
        common.append("cache=off")  # the feature cache would store the frozen CNN's features in float16
    # job 2 loses its rank 1 (SIGKILL at step 2): that job fails, the sweep goes on
    ddp = run_cli("train.py", "-m", "fusion=add,attention,mul", *common, "trainer=ddp_cpu", "data.batch_size=8",
                  "data.eval_batch_size=8", f"hydra.sweep.dir={tmp_path / 'ddp'}",
                  "+callbacks.kill._target_=sweep_helpers.KillAt", "+callbacks.kill.step=2", "+callbacks.kill.job=2",
                  "+callbacks.kill.rank=1", outputs=tmp_path, env={"PYTHONPATH": str(ROOT / "tests")})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = run_cli("train.py", "-m", "fusion=add,attention", *common, "data.batch_size=16", "data.eval_batch_size=16",
                  f"hydra.sweep.dir={tmp_path / 'one'}", outputs=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]

    # nothing anywhere else: no second sweep directory, no rank directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "ddp", "one"]
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["0", "1", "2", "multirun.yaml"]
    assert ddp.stdout.count("[mmfuse] train completed") == 2  # each completed job once, reported by rank 0 only
    killed = json.loads((tmp_path / "ddp" / "2" / "results.json").read_text())
    assert killed["status"] == "failed" and killed["error"].startswith("rank 1 of 2 was killed by signal 9")
    for job, ref in zip(_jobs(tmp_path / "ddp"), _jobs(tmp_path / "one")):
        results = json.loads((job / "results.json").read_text())
        expected = json.loads((ref / "results.json").read_text())
        assert results["status"] == expected["status"] == "completed" and results["attempt"] == 1
        assert results["choices"]["trainer"] == "ddp_cpu"
        assert results["steps"] == expected["steps"] == 6  # 96 pairs / 16 per global step
        assert (job / "checkpoints" / "last.ckpt").is_file() and (job / "csv" / "metrics.csv").is_file()
        assert sorted(p.name for p in job.glob("*.log")) == ["train.log", "train_rank0.log", "train_rank1.log"]
        assert set(results["metrics"]) == set(expected["metrics"])
        for key, value in expected["metrics"].items():
            assert results["metrics"][key] == pytest.approx(value, abs=1e-5), (job.name, key)


@pytest.mark.slow
def test_ddp_captioning_scores_the_whole_split_as_one_process(tmp_path):
    """Captions generated on 2 ranks (each its shard of the validation images) are gathered before
    scoring: CIDEr-D's document frequencies and every caption metric equal the one-process run's.

    Learning rate 0: both runs validate the same (initial) model. Training is not equal between them by
    design: the loss is a mean over each rank's target tokens, whose number differs between ranks, so
    the averaged gradients are not the one-process mean (measured: val/loss 2.5697 vs 2.5644 at lr 1e-2)."""
    common = ["task=captioning", "encoder.image.freeze=true", "optimizer.lr=0", "seed=5", "cache=off",
              "debug=fast", "data.num_train=48", "data.num_val=30", "test=false", "task.samples=0"]
    ddp = run_cli("train.py", *common, "trainer=ddp_cpu", "data.batch_size=8", "data.eval_batch_size=8",
                  f"hydra.run.dir={tmp_path / 'ddp'}", outputs=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = run_cli("train.py", *common, "data.batch_size=16", "data.eval_batch_size=16",
                  f"hydra.run.dir={tmp_path / 'one'}", outputs=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    results, expected = (json.loads((tmp_path / d / "results.json").read_text())["metrics"] for d in ("ddp", "one"))
    assert {"val/cider", "val/bleu4", "val/distinct", "val/ground_objects"} <= set(expected)
    assert set(results) == set(expected)
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-5), key
