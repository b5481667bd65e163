#!/usr/bin/env bash
# Robustness curves and modality contribution for the runs of a training sweep (experiments/robustness/README.md).
#   experiments/robustness/run.sh <training sweep dir> <out dir> [perturbation ...]
# Evaluates every run's best checkpoint under each perturbation (conf/robustness/<name>.yaml), two jobs at a
# time, then tabulates and plots them with `python -m mmfuse.compare <out>/<name> --robustness`.
set -euo pipefail
sweep=$1 out=$2
shift 2
names=("${@:-image_noise text_dropout missing}")
ckpts=$(ls -d "$sweep"/*/checkpoints/best.ckpt | paste -sd, -)
# the checkpoints' own data / task groups: eval.py reads them from a single ckpt_path only
first=$(ls -d "$sweep"/*/checkpoints/best.ckpt | head -1)
groups=$(python - "$first" <<'PY'
import sys
from mmfuse.eval_groups import checkpoint_groups
print(" ".join(checkpoint_groups([f"ckpt_path={sys.argv[1]}"])))
PY
)
for name in ${names[@]}; do
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 python eval.py -m $groups "ckpt_path=$ckpts" "+robustness=$name" \
    hydra/launcher=parallel hydra.launcher.n_jobs=2 "hydra.sweep.dir=$out/$name" callbacks.progress_bar=null
  python -m mmfuse.compare "$out/$name" --robustness --out "$out/$name"
done
