"""Why does the base model lose validation uauc on the test period of the reference
protocol? Train named variants of the base SASRec (each selected on validation
only), then score each on test, and write one table (docs/results/reference_diagnosis.*).

    duet prepare --protocol reference --out data/reference
    python experiments/reference_diagnosis.py --data data/reference --out reports/diagnosis \
        --variants old-defaults,long-lr1e-3,lr3e-3 --seeds 0,1,2 --threads 2

Finished runs are reused, so the command can be repeated to add variants or seeds.
Every variant is a set of `duet train` options; test is read once, after training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from duet.atomic import write_bytes, write_json
from duet.checkpoint import is_finished_run
from duet.config import ModelConfig, TrainConfig
from duet.training.evaluate import evaluate_run
from duet.training.loop import run_config_for, train

# name -> (what it tests, TrainConfig overrides, ModelConfig overrides)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "old-defaults": ("lr 1e-3, patience 3, 30 epochs (the defaults before this study)",
                     {"lr": 1e-3, "patience": 3, "epochs": 30, "lr_schedule": "constant"}, {}),
    "long-lr1e-3": ("lr 1e-3, no early stop in 30 epochs", {"lr": 1e-3, "patience": 30, "epochs": 30,
                                                             "lr_schedule": "constant"}, {}),
    "lr3e-3": ("lr 3e-3, patience 10, 40 epochs", {"lr": 3e-3, "patience": 10, "epochs": 40,
                                                   "lr_schedule": "constant"}, {}),
    "batch256": ("lr 1e-3, batch 256 (4x the steps), patience 10", {"lr": 1e-3, "batch_size": 256, "patience": 10,
                                                                    "epochs": 40, "lr_schedule": "constant"}, {}),
    "lr3e-3-dropout0.5": ("lr 3e-3, dropout 0.5", {"lr": 3e-3, "patience": 10, "epochs": 40,
                                                   "lr_schedule": "constant"}, {"dropout": 0.5}),
    "lr3e-3-wd": ("lr 3e-3, weight decay 1e-5", {"lr": 3e-3, "patience": 10, "epochs": 40, "weight_decay": 1e-5,
                                                 "lr_schedule": "constant"}, {}),
    "defaults": ("the new `duet train` defaults", {}, {}),
}


def run_variant(data: Path, out: Path, name: str, seed: int, threads: int | None) -> dict:
    _, train_over, model_over = VARIANTS[name]
    run = out / "runs" / name / f"seed{seed}"
    if not is_finished_run(run):
        config = run_config_for(data, model=ModelConfig(**model_over),
                                train=TrainConfig(method="base", seed=seed, threads=threads, **train_over))
        train(config, run, resume=(run / "config.json").exists(), progress=False)
    history = json.loads((run / "history.json").read_text())
    best = max(history, key=lambda h: h["valid_uauc"])
    test = evaluate_run(run, "test")
    return {"best_epoch": best["epoch"], "epochs_run": len(history), "valid_uauc": best["valid_uauc"],
            "test_uauc": test["uauc"], "test_auc": test["auc"], "seconds": sum(h["seconds"] for h in history)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "reference_diagnosis.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for name in names:
        for seed in (int(s) for s in args.seeds.split(",")):
            results.setdefault(name, {})[f"seed{seed}"] = run_variant(args.data, args.out, name, seed, args.threads)
            write_json(results_file, results)
            write_table(results, args.out / "reference_diagnosis.md")


def write_table(results: dict, path: Path) -> None:
    lines = ["| variant | what | seeds | best epoch | valid uauc | test uauc | train s |", "|---|---|---|---|---|---|---|"]
    for name, seeds in results.items():
        rows = list(seeds.values())

        def stat(key: str, rows: list[dict] = rows) -> str:
            values = np.array([r[key] for r in rows], float)
            return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"

        epochs = "/".join(str(r["best_epoch"]) for r in rows)
        seconds = np.mean([r["seconds"] for r in rows])
        lines.append(f"| {name} | {VARIANTS[name][0]} | {len(rows)} | {epochs} | {stat('valid_uauc')} | "
                     f"{stat('test_uauc')} | {seconds:.0f} |")
    write_bytes(path, ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
