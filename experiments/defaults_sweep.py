"""Choose `duet train`'s base schedule on validation only, on the default MovieLens
protocol, to be applied unchanged to the reference protocol (issue 21).

The defaults (lr 3e-3, 4 fresh negatives per event) were first chosen by a diagnosis
on the reference protocol that scored test for every variant. This sweep redoes the
choice without test: it trains each setting on the default protocol and reads only
validation uauc (the test split is never loaded). Patience 5 and 50 epochs are the
compute budget, fixed beforehand, not tuned.

    duet prepare --source movielens-small --out data/movielens
    python experiments/defaults_sweep.py --data data/movielens --out reports/defaults-sweep --threads 1

Finished runs are reused. Writes OUT/defaults_sweep.json (copied to docs/results/).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from duet.atomic import write_json
from duet.checkpoint import is_finished_run
from duet.config import TrainConfig
from duet.training.loop import run_config_for, train

LRS = (1e-3, 3e-3)
NEGATIVES = (0, 4)  # 0: the dataset's own fixed negative per positive only


def setting_name(lr: float, negatives: int) -> str:
    return f"lr{lr:g}-negatives{negatives}"


def run_setting(data: Path, out: Path, lr: float, negatives: int, seed: int, threads: int | None) -> dict:
    """Train one setting (or reuse it) and return its validation figures; never reads test."""
    run = out / "runs" / setting_name(lr, negatives) / f"seed{seed}"
    if not is_finished_run(run):
        train_cfg = TrainConfig(method="base", seed=seed, threads=threads, lr=lr, epochs=50, patience=5)
        config = run_config_for(data, train=train_cfg, options={"sampled_negatives": negatives})
        train(config, run, resume=(run / "config.json").exists(), progress=False)
    history = json.loads((run / "history.json").read_text())
    best = max(history, key=lambda h: h["valid_uauc"])
    return {"lr": lr, "sampled_negatives": negatives, "best_epoch": best["epoch"], "epochs_run": len(history),
            "valid_uauc": best["valid_uauc"], "seconds": sum(h["seconds"] for h in history)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", help="train just these settings (e.g. lr0.003-negatives4,lr0.003-negatives0), "
                                       "so two one-thread processes can share the sweep; a later run without it "
                                       "reuses them and writes the whole table")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"protocol": str(args.data), "seed": args.seed, "split_read": "valid only",
                     "budget": {"epochs": 50, "patience": 5}, "settings": {}}
    settings = list(itertools.product(LRS, NEGATIVES))
    if args.only:
        wanted = set(args.only.split(","))
        settings = [s for s in settings if setting_name(*s) in wanted]
        if len(settings) != len(wanted):
            parser.error(f"--only: choose from {', '.join(setting_name(*s) for s in itertools.product(LRS, NEGATIVES))}")
    for lr, negatives in settings:
        results["settings"][setting_name(lr, negatives)] = run_setting(args.data, args.out, lr, negatives,
                                                                       args.seed, args.threads)
        chosen = max(results["settings"], key=lambda name: results["settings"][name]["valid_uauc"])
        results["chosen"] = chosen
        # a partial sweep (--only) writes beside, never over, the whole table
        write_json(args.out / ("defaults_sweep_partial.json" if args.only else "defaults_sweep.json"), results)
        print(f"{setting_name(lr, negatives)}: valid uauc {results['settings'][setting_name(lr, negatives)]['valid_uauc']:.4f}"
              f"  (best so far: {chosen})", flush=True)


if __name__ == "__main__":
    main()
