"""Does SWA damp the oscillation of DUET stage-2 training? A long stage 2 with and without SWA.

    python experiments/swa_stability.py --data data/movielens \
        --base reports/full/runs/gru4rec/seed0/base --epochs 10 --lrs 1e-3,3e-3 \
        --out docs/results/swa_stability

`duet compare` stops stage 2 early (after 3-4 epochs), which leaves little
oscillation to damp. Here stage 2 runs a fixed number of epochs (no early
stopping) from the same base run, with N_p = 1 (no SWA) and N_p = 3, all else
equal, at each learning rate. Validation uauc after every epoch goes to
OUT.json and OUT.png, with two measures of oscillation per curve: the mean
absolute epoch-to-epoch change and the number of direction changes (both lower
= steadier). Runs are kept under --work and reused when the script is rerun.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from duet.atomic import save_png, write_json
from duet.checkpoint import is_finished_run
from duet.config import GeneratorConfig, RunConfig, TrainConfig
from duet.report.stability import oscillation
from duet.training.loop import run_config_for, train

NUM_GENERATORS = (1, 3)


def run_stage2(args: argparse.Namespace, base: RunConfig, lr: float, num_generators: int) -> list[dict]:
    out = Path(args.work) / f"lr{lr:g}-np{num_generators}"
    if not is_finished_run(out):  # train it, or resume it after an interruption
        config = run_config_for(
            args.data, model=base.model,
            train=TrainConfig(method="duet", seed=base.train.seed, epochs=args.epochs, patience=args.epochs, lr=lr,
                              freeze_static=args.freeze_static, init_run=str(args.base), threads=args.threads),
            generator=GeneratorConfig(num_generators=num_generators, rank=args.rank, dropout=args.dropout),
        )
        train(config, out, resume=(out / "config.json").exists(), progress=True)
    return json.loads((out / "history.json").read_text())


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = list(results["curves"])
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.5 * len(lrs), 3.2), squeeze=False)
    for ax, lr in zip(axes[0], lrs, strict=True):
        for key, curve in results["curves"][lr].items():
            label = f"{'no SWA' if key == 'np1' else 'SWA, N_p = ' + key[2:]} " \
                    f"(mean |Δ| {curve['oscillation']['mean_abs_change']:.4f})"
            ax.plot(range(len(curve["valid_uauc"])), curve["valid_uauc"], "o-" if key != "np1" else "s--",
                    markersize=3, label=label)
        ax.axhline(results["base_valid_uauc"], color="grey", linewidth=0.8, label="base (stage 1)")
        ax.set_title(f"{results['backbone']}, stage-2 lr {lr}")
        ax.set_xlabel("stage-2 epoch")
        ax.set_ylabel("valid uauc")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--base", required=True, type=Path, help="a finished base run (stage 1)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lrs", default="1e-3,3e-3", help="comma-separated stage-2 learning rates")
    parser.add_argument("--rank", type=int, default=4, help="0 = full rank")
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--freeze-static", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", default="reports/swa_stability")
    parser.add_argument("--out", default="docs/results/swa_stability", help="writes OUT.json and OUT.png")
    args = parser.parse_args()
    args.rank = args.rank or None
    base = RunConfig.model_validate_json((args.base / "config.json").read_text())
    base_valid = json.loads((args.base / "metrics_valid.json").read_text())["uauc"]
    results: dict = {"backbone": base.model.backbone, "base_run": str(args.base), "base_valid_uauc": base_valid,
                     "settings": {k: str(v) for k, v in vars(args).items()}, "curves": {}}
    for lr in (float(x) for x in args.lrs.split(",")):
        for num_generators in NUM_GENERATORS:
            history = run_stage2(args, base, lr, num_generators)
            curve = [h["valid_uauc"] for h in history]
            results["curves"].setdefault(f"{lr:g}", {})[f"np{num_generators}"] = {
                "valid_uauc": curve, "best": max(curve), "oscillation": oscillation(curve)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), results)
    plot(results, out.with_suffix(".png"))
    for lr, curves in results["curves"].items():
        for key, curve in curves.items():
            print(f"lr {lr} {key}: best {curve['best']:.4f}  mean |change| "
                  f"{curve['oscillation']['mean_abs_change']:.4f}  direction changes "
                  f"{curve['oscillation']['direction_changes']}")


if __name__ == "__main__":
    main()
