#!/usr/bin/env bash
# The paper's MovieLens-100K table, 5 seeds, three backbones: what docs/results/ml-100k/ holds.
# Prepares the data from the pinned recbole wheel (--protocol loo, the reproduction's layout), then
# runs the comparison as two one-thread processes sharing the seeds (one per core), then once more
# without --only-seeds to write the report of every seed from the finished runs. Writes
# OUT/run_time.json (wall time and load averages) and OUT/table.png (experiments/ml100k_plot.py).
#
#   bash experiments/ml100k_table.sh [OUT (default reports/ml-100k)]
set -euo pipefail
out=${1:-reports/ml-100k}
repo=$(cd "$(dirname "$0")/.." && pwd)
duet=${DUET:-$repo/.venv/bin/duet}
data=${DATA:-data/ml-100k}
options=(--data "$data" --backbones din,sasrec,gru4rec --seeds 5 --embed-dim 64 --finetune-choice-devices 300
         --no-scratch --threads 1
         --out "$out" --overwrite --no-progress)
[ -d "$data" ] || "$duet" prepare --source ml-100k --protocol loo --out "$data"
mkdir -p "$out"
load() { cut -d' ' -f1-3 /proc/loadavg; }
started=$(date +%s); load_before=$(load)
"$duet" compare "${options[@]}" --only-seeds 0,2,4 > "$out/seeds024.log" 2>&1 &
first=$!
"$duet" compare "${options[@]}" --only-seeds 1,3 > "$out/seeds13.log" 2>&1
wait "$first"
load_after=$(load)
"$duet" compare "${options[@]}" > "$out/report.log" 2>&1  # every run reused: the report of all seeds
ended=$(date +%s)
cat > "$out/run_time.json" <<EOF
{"command": "bash experiments/ml100k_table.sh $out", "wall_s": $((ended - started)),
 "load_average_before": "$load_before", "load_average_after_training": "$load_after",
 "cores": $(nproc), "date": "$(date -u +%Y-%m-%d)"}
EOF
"$repo/.venv/bin/python" "$repo/experiments/ml100k_plot.py" --results "$out/results.json" --out "$out/table.png"
echo "wrote $out/results.md, $out/table.png and $out/run_time.json in $((ended - started)) s"
