"""Base-model settings for `--protocol loo` (MovieLens-100K), chosen on validation only.

Each (backbone, setting) trains one base run with seed 0 and reads its validation uauc and
AUC (the test split is never loaded). Settings differ from `duet train`'s defaults in one or
two fields each; the budget (50 epochs, patience 5) is fixed beforehand, not tuned. Runs go
to separate processes of one torch thread each, `--jobs` at a time; finished runs are reused.

    duet prepare --source ml-100k --protocol loo --out data/ml-100k
    python experiments/loo_sweep.py --data data/ml-100k --out reports/loo-sweep --jobs 2

Writes OUT/loo_sweep.json (copied to docs/results/ml-100k/).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BACKBONES = ("sasrec", "gru4rec", "din")
# name -> (ModelConfig fields, TrainConfig fields) changed from the defaults
SETTINGS: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    "dim64": ({"embed_dim": 64}, {}),
    "dropout0.5": ({"dropout": 0.5}, {}),
    "dim64-dropout0.5": ({"embed_dim": 64, "dropout": 0.5}, {}),
    "plateau": ({}, {"lr_schedule": "plateau"}),
}


def run_one(data: str, out: str, backbone: str, setting: str, seed: int) -> dict:
    """Train (or reuse) one base run; its validation figures. Never reads test."""
    import torch

    from duet.checkpoint import is_finished_run
    from duet.config import ModelConfig, TrainConfig
    from duet.training.loop import run_config_for, train

    torch.set_num_threads(1)
    model, schedule = SETTINGS[setting]
    run = Path(out) / "runs" / backbone / setting / f"seed{seed}"
    started = time.perf_counter()
    if not is_finished_run(run):
        config = run_config_for(data, model=ModelConfig(backbone=backbone, **model),
                                train=TrainConfig(method="base", seed=seed, threads=1, **schedule))
        train(config, run, resume=(run / "config.json").exists(), progress=False)
    valid = json.loads((run / "metrics_valid.json").read_text())
    history = json.loads((run / "history.json").read_text())
    best = max(history, key=lambda h: h["valid_uauc"])
    return {"backbone": backbone, "setting": setting, "model": model, "train": schedule,
            "valid_uauc": valid["uauc"], "valid_auc": valid["auc"], "best_epoch": best["epoch"],
            "epochs_run": len(history), "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(b, s) for b in args.backbones.split(",") for s in SETTINGS]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, str(args.data), str(args.out), b, s, args.seed) for b, s in jobs]
        rows = [f.result() for f in futures]
    best = {b: max((r for r in rows if r["backbone"] == b), key=lambda r: r["valid_uauc"])["setting"]
            for b in args.backbones.split(",")}
    import torch

    result = {"data": str(args.data), "seed": args.seed, "split_read": "valid only", "rows": rows,
              "best_on_valid": best, "jobs": args.jobs, "wall_s": time.perf_counter() - started,
              "torch": torch.__version__, "machine": f"{platform.machine()}, {platform.python_version()}"}
    from duet.atomic import write_json

    write_json(args.out / "loo_sweep.json", result)
    for r in rows:
        print(f"{r['backbone']:8s} {r['setting']:18s} valid uauc {r['valid_uauc']:.4f} auc {r['valid_auc']:.4f} "
              f"best epoch {r['best_epoch']:2d} ({r['seconds']:.0f} s)")
    print("best on validation:", best)


if __name__ == "__main__":
    main()
