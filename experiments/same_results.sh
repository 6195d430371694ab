#!/usr/bin/env bash
# Do two commits of duet give the same recommendation results? Trains the same small
# runs (100 MovieLens users; SASRec and DIN; base, then DUET from it; 2 epochs each;
# seed 0; one thread) with each commit's sources and prints their test metrics.
# Behind docs/results/task_seam_check.txt (6c406cf, before the task seam, against it).
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
done
