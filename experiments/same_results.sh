#!/usr/bin/env bash
# Do two commits of duet give the same results? Trains the same small runs with each
# commit's sources and prints their test metrics: recommendation (100 MovieLens users;
# SASRec and DIN; base, then DUET from it; 2 epochs each) and the digits fleet (base 5
# epochs, then DUET 2 epochs); seed 0, one thread. Both datasets are prepared once, by
# the newer sources (an older duet reads them: it ignores the task and builder they record).
# Behind docs/results/task_seam_check.txt (6c406cf, before the task seam, against it) and
# docs/results/task_plugins_check.txt (520b0e4, before the tasks became plug-ins, against it).
#
#   bash experiments/same_results.sh OLD_COMMIT [NEW_COMMIT (default: the working tree)]
set -euo pipefail
old=${1:?usage: same_results.sh OLD_COMMIT [NEW_COMMIT]}
new=${2:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
work=$(mktemp -d)
trap 'git -C "$repo" worktree remove --force "$work/old" >/dev/null 2>&1 || true
      [ -n "$new" ] && git -C "$repo" worktree remove --force "$work/new" >/dev/null 2>&1 || true
      rm -rf "$work"' EXIT
git -C "$repo" worktree add -q --detach "$work/old" "$old"
trees=("$work/old")
if [ -n "$new" ]; then git -C "$repo" worktree add -q --detach "$work/new" "$new"; trees+=("$work/new"); else trees+=("$repo"); fi
PYTHONPATH="$repo/src" "$python" -m duet prepare --out "$work/data" --max-users 100 >/dev/null
PYTHONPATH="$repo/src" "$python" -m duet prepare --source digits-fleet --out "$work/digits" >/dev/null
for tree in "${trees[@]}"; do
  tag=$([ "$tree" = "$work/old" ] && echo "$old" || echo "${new:-working-tree}")
  for backbone in sasrec din; do
    runs="$work/runs/$tag/$backbone"
    PYTHONPATH="$tree/src" "$python" -m duet train --data "$work/data" --out "$runs-base" --backbone "$backbone" \
      --epochs 2 --threads 1 --no-progress >/dev/null
    PYTHONPATH="$tree/src" "$python" -m duet train --data "$work/data" --out "$runs-duet" --backbone "$backbone" \
      --method duet --init "$runs-base" --epochs 2 --threads 1 --no-progress >/dev/null
    for method in base duet; do
      echo "$tag $backbone $method $(PYTHONPATH="$tree/src" "$python" -m duet evaluate --run "$runs-$method" --split test --json)"
    done
  done
  runs="$work/runs/$tag/digits"
  PYTHONPATH="$tree/src" "$python" -m duet train --data "$work/digits" --out "$runs-base" --epochs 5 --threads 1 \
    --no-progress >/dev/null
  PYTHONPATH="$tree/src" "$python" -m duet train --data "$work/digits" --out "$runs-duet" --method duet \
    --init "$runs-base" --epochs 2 --threads 1 --no-progress >/dev/null
  for method in base duet; do
    echo "$tag digits $method $(PYTHONPATH="$tree/src" "$python" -m duet evaluate --run "$runs-$method" --split test --json)"
  done
done
