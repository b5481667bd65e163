"""callbacks=early_stopping: a run whose metric stalls ends early; results.json's ended_by says what ended
each run (early stopping, the step budget or the epoch budget)."""

from __future__ import annotations

import csv
from pathlib import Path


def test_early_stopping_ends_a_run_whose_metric_stalls_and_results_say_what_ended_it(make_cfg):
    from mmfuse.train import train

    tiny = ("debug=fast", "data.num_train=32", "data.num_val=32", "data.batch_size=16", "test=false")
    # lr 0: the weights never change, so val/acc is the same at every validation: epoch 0 sets the best,
    # epochs 1 and 2 do not improve on it (patience 2), and the run stops after epoch 2 of 10
    cfg = make_cfg(*tiny, "callbacks=early_stopping", "callbacks.early_stopping.patience=2", "trainer.max_epochs=10",
                   "optimizer.lr=0.0", subdir="stalled")
    stalled = train(cfg)
    assert stalled["ended_by"] == "early_stopping" and stalled["epochs"] == 3 and stalled["steps"] == 3 * 4
    rows = list(csv.DictReader(open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")))
    assert len({r["val/acc"] for r in rows if r.get("val/acc")}) == 1
    assert train(make_cfg(*tiny, "trainer.max_epochs=2", subdir="epochs"))["ended_by"] == "max_epochs"
    assert train(make_cfg(*tiny, "trainer.max_epochs=5", "+trainer.max_steps=6", subdir="steps"))["ended_by"] == "max_steps"
