"""Why does the base model lose validation uauc on the test period of the reference
protocol? Train named variants of the base SASRec (each selected on validation
only), then score each on test, and write one table (docs/results/reference_diagnosis.*).

    duet prepare --protocol reference --out data/reference
    python experiments/reference_diagnosis.py --data data/reference --out reports/diagnosis \
        --variants old-defaults,lr3e-3-patience10,negatives4 --seeds 0,1,2 --threads 2

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
from duet.training.evaluation import evaluate_run
from duet.training.loop import run_config_for, train

# name -> (what it tests, TrainConfig overrides, ModelConfig overrides). Each spells
# out its schedule, so the table means the same when the defaults move.
_NO_NEG = {"sampled_negatives": 0, "lr_schedule": "constant"}
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "old-defaults": ("the defaults before this study: lr 1e-3, patience 3, 30 epochs",
                     {**_NO_NEG, "lr": 1e-3, "patience": 3, "epochs": 30}, {}),
    "lr3e-3-patience10": ("lr 3e-3, patience 10, 40 epochs", {**_NO_NEG, "lr": 3e-3, "patience": 10, "epochs": 40}, {}),
    "plateau": ("lr 3e-3, halved after every epoch without gain, patience 3",
                {**_NO_NEG, "lr": 3e-3, "patience": 3, "epochs": 50, "lr_schedule": "plateau"}, {}),
    "batch256": ("lr 1e-3, batch 256 (4x the steps), patience 10",
                 {**_NO_NEG, "lr": 1e-3, "batch_size": 256, "patience": 10, "epochs": 40}, {}),
    "dropout0.5": ("lr 3e-3, patience 10, dropout 0.5", {**_NO_NEG, "lr": 3e-3, "patience": 10, "epochs": 50},
                   {"dropout": 0.5}),
    "refit": ("lr3e-3-patience10's best epoch count, retrained on train+valid (valid no longer held out)",
              {**_NO_NEG, "lr": 3e-3, "patience": 1000}, {}),
    "negatives4": ("lr 3e-3, patience 10, 4 fresh uniform negatives per event every epoch",
                   {"lr": 3e-3, "patience": 10, "epochs": 50, "sampled_negatives": 4, "lr_schedule": "constant"}, {}),
    "negatives16": ("as negatives4 with 16", {"lr": 3e-3, "patience": 10, "epochs": 50, "sampled_negatives": 16,
                                              "lr_schedule": "constant"}, {}),
    "negatives4-dropout0.5": ("negatives4 with dropout 0.5", {"lr": 3e-3, "patience": 10, "epochs": 50,
                                                              "sampled_negatives": 4, "lr_schedule": "constant"},
                              {"dropout": 0.5}),
    "defaults": ("the new `duet train` defaults (negatives 4, lr 3e-3, patience 5)", {}, {}),
}


def refit_data(data: Path, out: Path) -> Path:
    """The dataset with valid merged into train (valid kept only so the format is whole;
    the refit run's own valid scores are meaningless and never used)."""
    from safetensors.numpy import load_file

    from duet.tasks.recommendation.data.store import Split, load_dataset, write_dataset

    target = out / "data-refit"
    if (target / "manifest.json").exists():
        return target
    d = load_dataset(data)
    tr, va = d["train"], d["valid"]
    merged = Split(user=np.concatenate([tr.user, va.user]), item=np.concatenate([tr.item, va.item]),
                   label=np.concatenate([tr.label, va.label]),
                   event=np.concatenate([tr.event, va.event + tr.num_events]),
                   line=np.concatenate([tr.line, va.line]), history=np.concatenate([tr.history, va.history]),
                   window=np.concatenate([tr.window, va.window]))
    vocab = load_file(Path(data) / "vocab.safetensors")
    target.mkdir(parents=True)
    write_dataset(target, {"train": merged, "valid": va, "test": d["test"]}, vocab["item_raw"], vocab["user_raw"],
                  {"kind": "refit", "from": str(data)}, {"kind": "train+valid"})
    return target


def run_variant(data: Path, out: Path, name: str, seed: int, threads: int | None) -> dict:
    _, train_over, model_over = VARIANTS[name]
    run = out / "runs" / name / f"seed{seed}"
    if name == "refit":  # as many epochs as lr3e-3-patience10 needed to its best valid epoch
        selected = run_variant(data, out, "lr3e-3-patience10", seed, threads)
        train_over = {**train_over, "epochs": selected["best_epoch"] + 1}
        data = refit_data(data, out)
    if not is_finished_run(run):
        train_over = dict(train_over)
        options = {"sampled_negatives": train_over.pop("sampled_negatives")}  # recommendation's own option
        config = run_config_for(data, model=ModelConfig(**model_over), options=options,
                                train=TrainConfig(method="base", seed=seed, threads=threads, **train_over))
        train(config, run, resume=(run / "config.json").exists(), progress=False)
    history = json.loads((run / "history.json").read_text())
    best = history[-1] if name == "refit" else max(history, key=lambda h: h["valid_uauc"])
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
