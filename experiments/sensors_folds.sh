#!/usr/bin/env bash
# The sensor comparison over its 5 folds of users (docs/results/sensors/folds.md): each fold
# (--seed S of `duet prepare --source hapt`) leaves 6 users unseen (3 for validation, 3 for test),
# so every user is a new device once. One `duet compare` per fold, one thread each, resumable
# (finished runs are reused); then the aggregate over folds.
#
#   bash experiments/sensors_folds.sh [REPORTS (default reports/hapt)] [FOLDS (default 5)]
set -euo pipefail
reports=${1:-reports/hapt}
folds=${2:-5}
duet=${DUET:-.venv/bin/duet}
python=${PYTHON:-.venv/bin/python}
for ((s = 0; s < folds; s++)); do
  [ -f "data/hapt-$s/manifest.json" ] || "$duet" prepare --source hapt --seed "$s" --out "data/hapt-$s"
  "$duet" compare --data "data/hapt-$s" --seeds 1 --threads 1 --no-progress --out "$reports/fold-$s" --overwrite
done
"$python" experiments/sensors_folds.py "$reports" --out docs/results/sensors/folds
