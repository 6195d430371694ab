"""A small device model with a cloud generator that reads a long window.

Superseded by `duet compare --device-model` (one dataset, the device model's static part reading
the history's last N items, rows device / device-duet / device-global beside the cloud model,
seed-level intervals, size and latency on the device runtime). This script stays because
docs/results/compressed_device.json, quoted by README.md and docs/results/recommendation.md, came from it. The
same setting with the option (the generator reads W = 50, the device model the last 5 of L = 50,
embedding 16; the variants this script tried):

    duet prepare --source synthetic-shift --out data/shift-w50 --window-len 50
    duet compare --data data/shift-w50 --backbones sasrec --seeds 5 --epochs 20 --duet-epochs 10 \
        --variants frozen-rankfull-dropout0.3,joint-rankfull-dropout0.3 \
        --device-model history=5,dim=16 --threads 1 --out reports/compressed

(There fine-tuning is the cloud model's; this script also fine-tuned the device model.)
The original two-dataset run:

    duet prepare --source synthetic-shift --out data/shift                                 # L 50, W 10
    duet prepare --source synthetic-shift --out data/shift-device --history-len 5 --window-len 50
    python experiments/compressed_device.py --cloud-data data/shift --device-data data/shift-device \
        --work runs/compressed --out docs/results/compressed_device

Devices run a small static part (history 5, embedding 16); the cloud generator
reads the long uploaded window (50 items) through that static part's item
embedding. Compared on the same test records (both datasets come from one
generator seed and one negative-sampling seed, checked here):

* device base: the small model with its global head;
* device fine-tune: that model fine-tuned per device on its own labelled records;
* DUET: the small static part with generated heads (the generator reads W=50); of the
  static part frozen or trained with the generator, the better on validation;
* cloud base: the large model (history 50, embedding 32), the upper bound.

Reports each method's share of the device-to-cloud test uauc gap, with paired 95%
bootstrap intervals over users. Every model is selected on validation. Runs are
kept under --work and reused when the script is rerun.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from duet.atomic import write_json
from duet.checkpoint import is_finished_run
from duet.config import GeneratorConfig, ModelConfig, TrainConfig
from duet.report.stats import difference_matrix, paired_bootstrap
from duet.tasks.recommendation.data.store import load_dataset
from duet.tasks.recommendation.evaluate import user_auc_file
from duet.tasks.recommendation.finetune import FinetuneConfig, finetune
from duet.training.evaluation import evaluate_run
from duet.training.loop import run_config_for, train


def trained(out: Path, data: Path, model: ModelConfig, train_cfg: TrainConfig,
            generator: GeneratorConfig | None = None) -> Path:
    if not is_finished_run(out):
        config = run_config_for(data, model=model, train=train_cfg, generator=generator)
        train(config, out, resume=(out / "config.json").exists(), progress=True)
    return out


def same_records(a: Path, b: Path) -> None:
    x, y = load_dataset(a, splits=("test",))["test"], load_dataset(b, splits=("test",))["test"]
    for key in ("user", "item", "label", "line"):
        if not np.array_equal(getattr(x, key), getattr(y, key)):
            raise SystemExit(f"{a} and {b} do not hold the same test records ({key} differs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cloud-data", type=Path, required=True)
    parser.add_argument("--device-data", type=Path, required=True)
    parser.add_argument("--cloud-base", type=Path, help="a finished cloud-size base run to reuse")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json")
    parser.add_argument("--device-embed", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--duet-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    same_records(args.cloud_data, args.device_data)
    small = ModelConfig(embed_dim=args.device_embed)
    base_train = TrainConfig(method="base", epochs=args.epochs, seed=args.seed, threads=args.threads)
    runs = {
        "cloud base": args.cloud_base or trained(args.work / "cloud-base", args.cloud_data, ModelConfig(), base_train),
        "device base": trained(args.work / "device-base", args.device_data, small, base_train),
    }
    # Two stage-2 variants, the better on validation is reported: the static part frozen
    # (the shipped device model is the device base) or trained with the generator.
    variants = {name: trained(
        args.work / f"device-duet{'' if frozen else '-joint'}", args.device_data, small,
        TrainConfig(method="duet", epochs=args.duet_epochs, seed=args.seed, threads=args.threads, freeze_static=frozen,
                    init_run=str(runs["device base"])),
        GeneratorConfig(dropout=0.3)) for name, frozen in (("frozen", True), ("joint", False))}
    valid = {name: json.loads((run / "metrics_valid.json").read_text())["uauc"] for name, run in variants.items()}
    runs["DUET"] = variants[max(valid, key=valid.get)]
    runs["device fine-tune"] = args.work / "device-finetune"
    if not (runs["device fine-tune"] / "finetune.json").exists():
        finetune(FinetuneConfig(base_run=str(runs["device base"]), data=str(args.device_data), split="test",
                                seed=args.seed), runs["device fine-tune"])
    test = {name: (json.loads((run / "metrics_test.json").read_text()) if name == "device fine-tune"
                   else evaluate_run(run, "test"))["uauc"] for name, run in runs.items()}
    users = {name: json.loads(user_auc_file(run, "test").read_text()) for name, run in runs.items()}
    gap = test["cloud base"] - test["device base"]
    results = {"runs": {k: str(v) for k, v in runs.items()}, "duet_valid_uauc_per_variant": valid,
               "test_uauc": test, "device_to_cloud_gap": gap,
               "share_of_gap": {k: (v - test["device base"]) / gap for k, v in test.items()},
               "differences": {f"{a} - device base": paired_bootstrap(difference_matrix([(users[a], users["device base"])]))
                               for a in ("DUET", "device fine-tune", "cloud base")}}
    results["differences"]["DUET - cloud base"] = paired_bootstrap(
        difference_matrix([(users["DUET"], users["cloud base"])]))
    # A trained static part also gains from its longer training: generation's own share is
    # DUET against its own static part with the global head.
    results["duet_static_global_head_test_uauc"] = evaluate_run(runs["DUET"], "test", head="global")["uauc"]
    own = json.loads(user_auc_file(runs["DUET"], "test", "global").read_text())
    results["differences"]["DUET - its static part + global head"] = paired_bootstrap(
        difference_matrix([(users["DUET"], own)]))
    write_json(args.out.with_suffix(".json"), results)
    for name, value in test.items():
        print(f"{name:>17}  test uauc {value:.4f}  share of the device-to-cloud gap {results['share_of_gap'][name]:+.2f}")
    for name, d in results["differences"].items():
        print(f"{name:>30}  {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]")


if __name__ == "__main__":
    main()
