"""Accuracy against the window length W on the digits fleet (issue 22): for each W, the fleet
prepared with that window (the same devices and samples: W changes no draw), the image
comparison on it, and one JSON with, per W, DUET, the global model, batch-norm statistics of
the window and ARM-BN on the unseen validation and test devices, the paired differences with
both intervals, and what a device sends and receives.

Validation figures come first: W is chosen on them (`valid_*`), the test figures are read
once. Fine-tuning and the oracle per shift type do not read the window, so the sweep leaves
them out (the W = 20 report, docs/results/digits, has them). Batch-norm statistics and
ARM-BN take their statistics from the W most recent samples of a device's adaptation prefix,
so above W = 20 (the prefix's length) they see 20 samples (`stat_samples`).

    python experiments/window_sweep.py --seeds 5 --threads 1               # the full sweep
    python experiments/window_sweep.py --smoke --out /tmp/window-smoke      # a tiny fleet: the script works

Finished runs and reports are reused: an interrupted sweep continues where it stopped, and two
processes may share the work (`--windows 5,50 --json /tmp/a.json` beside `--windows 10,25 --json
/tmp/b.json`, then the plain command gathers the finished reports in seconds). At W = 20 the
committed sweep reused the trained runs of the digits comparison (reports/digits-v: the same
seeds, settings and bytes of data) and only evaluated them.
Writes reports/window/W{W}/ (each a full `duet compare` report), docs/results/window_sweep.json
and its plot, docs/results/window_sweep.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from duet.atomic import save_png, write_json
from duet.tasks.images.compare import DUET_VARIANTS, ImageCompareConfig, compare_images, variant_dir
from duet.tasks.images.fleet import FleetConfig, prepare_fleet

WINDOWS = (5, 10, 20, 25, 50)  # 20: the fleet's own W (docs/results/digits), here with the head variant
METHODS = ("duet", "global", "bnstats", "armbn")
DIFFERENCES = ("duet - global", "duet - duet-static", "duet - bnstats", "duet - armbn", "armbn - bnstats")
# Smoke: a fleet of 14 devices and one or two epochs, every step of the full sweep.
SMOKE_FLEET = {"seen_devices": 8, "unseen_valid_devices": 3, "unseen_test_devices": 3, "train_per_device": 12,
               "valid_per_device": 8, "test_per_device": 8, "unseen_per_device": 10, "adapt": 4}
SMOKE_COMPARE = {"epochs": 2, "duet_epochs": 1, "tent_steps": (1,), "tent_lrs": (1e-2,), "bn_priors": (0, 8),
                 "windows": (1,), "cost_repeats": 1}


def fleet(root: Path, window: int, smoke: bool) -> tuple[Path, FleetConfig]:
    """The digits fleet with window `window` (prepared once, then reused)."""
    cfg = FleetConfig(window_len=window, **(SMOKE_FLEET if smoke else {}))
    out = root / f"digits-fleet-W{window}"
    if not (out / "manifest.json").exists():
        prepare_fleet(out, "digits-fleet", cfg)
    return out, cfg


def compare(data: Path, report: Path, seeds: int, threads: int, smoke: bool, variant: str) -> None:
    """The image comparison on one fleet without the methods that ignore the window, with DUET's
    variant chosen at W = 20 (one variant: the sweep chooses W, not the variant); a report
    already finished with the same configuration is kept as it is."""
    cfg = ImageCompareConfig(data=str(data), seeds=seeds, threads=threads, oracle=False, ks=(),
                             duet_variants=(variant,), **(SMOKE_COMPARE if smoke else {}))
    if finished(report, cfg):
        return
    compare_images(cfg, report, progress=False)


def finished(report: Path, cfg: ImageCompareConfig) -> bool:
    try:
        saved = ImageCompareConfig.model_validate_json((report / "compare_config.json").read_text())
        results = json.loads((report / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return saved == cfg and len(results["seeds"]) == cfg.seeds


def accuracies(summary: dict) -> dict:
    """Per method: validation then test accuracy on unseen and on all devices (mean, std over seeds)."""
    out = {}
    for m in METHODS:
        valid, test = summary["valid_table"][m], summary["table"][m]
        out[m] = {"valid_unseen": valid["accuracy_unseen"], "valid_all": valid["accuracy"],
                  "test_unseen": test["accuracy_unseen"], "test_all": test["accuracy"]}
    return out


def differences(summary: dict) -> dict:
    """Each paired difference on unseen devices, validation and test (95% paired bootstrap over
    devices and seeds, and the t-interval over seed means)."""
    return {f"{name} (unseen)": {"valid": summary["valid_differences"][f"{name} (unseen)"],
                                 "test": summary["differences"][f"{name} (unseen)"]} for name in DIFFERENCES}


def payload(results: dict, report: Path, data: Path) -> dict:
    """What adapting one device moves and costs: DUET uploads its window (raw samples, or their
    features in privacy mode) and downloads a head; the batch-norm methods send nothing and run
    one forward pass on the device. Seconds: medians per device, mean over seeds (one thread)."""
    variant = json.loads((report / "compare_config.json").read_text())["duet_variants"][0]
    run = variant_dir(report / "runs" / "seed0", variant, "duet")
    window = json.loads((data / "manifest.json").read_text())["window_len"]
    sample = math.prod(json.loads((data / "manifest.json").read_text())["image_shape"])
    embed = json.loads((run / "config.json").read_text())["model"]["embed_dim"]
    head = sum(math.prod(p["shape"]) for p in json.loads((run / "param_spec.json").read_text())["params"])
    costs = [s["costs"] for s in results["seeds"].values()]
    return {"float32_bytes": {"duet_upload_raw_window": 4 * window * sample, "duet_upload_features": 4 * window * embed,
                              "duet_download_head": 4 * head, "bnstats_upload": 0, "armbn_upload": 0},
            "seconds": {**{f"duet_{k}": float(np.mean([c["duet"][k] for c in costs])) for k in costs[0]["duet"]},
                        **{m: float(np.mean([c[m]["median_s"] for c in costs])) for m in ("bnstats", "armbn")}}}


def window_row(report: Path, data: Path, cfg: FleetConfig) -> dict:
    results = json.loads((report / "results.json").read_text())
    summary = results["summary"]
    return {"window_len": cfg.window_len, "stat_samples": min(cfg.window_len, cfg.adapt),
            "seeds": len(results["seeds"]), "report": str(report), "accuracy": accuracies(summary),
            "differences": differences(summary), "choices": {m: results["choices"][m] for m in ("bnstats", "armbn")},
            "payload": payload(results, report, data)}


LABELS = {"duet": "DUET", "global": "global model", "bnstats": "batch-norm statistics", "armbn": "ARM-BN"}


def plot(sweep: dict, path: Path) -> None:
    """Unseen devices' accuracy against W, validation (where W is chosen) beside test; mean and
    std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(sweep["by_window"].values(), key=lambda r: r["window_len"])
    ws = [r["window_len"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, split in zip(axes, ("valid", "test"), strict=True):
        for m in METHODS:
            acc = [r["accuracy"][m][f"{split}_unseen"] for r in rows]
            ax.errorbar(ws, [a["mean"] for a in acc], yerr=[a["std"] for a in acc], marker="o", capsize=3,
                        label=LABELS[m])
        ax.set_xscale("log")
        ax.set_xticks(ws, [str(w) for w in ws])
        ax.minorticks_off()
        ax.set_xlabel("window length W (samples a device uploads)")
        ax.set_title(f"unseen {'validation' if split == 'valid' else 'test'} devices")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy (mean ± std over {sweep['seeds']} seeds)")
    axes[0].legend()
    fig.tight_layout()
    save_png(fig, path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", default=",".join(map(str, WINDOWS)), help="comma-separated W values")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("reports/window"), help="reports go to OUT/W{W}")
    parser.add_argument("--data-root", type=Path, default=None, help="fleets (default: data/, smoke: OUT/data)")
    parser.add_argument("--json", type=Path, default=None,
                        help="default docs/results/window_sweep.json (smoke: OUT/window_sweep.json)")
    parser.add_argument("--smoke", action="store_true", help="a tiny fleet, one seed, one or two epochs")
    parser.add_argument("--variant", default="head", choices=list(DUET_VARIANTS),
                        help="DUET's variant, as chosen on validation at W = 20 (docs/results/digits)")
    args = parser.parse_args()
    windows = tuple(int(w) for w in args.windows.split(","))
    seeds = 1 if args.smoke else args.seeds
    data_root = args.data_root or (args.out / "data" if args.smoke else Path("data"))
    out_json = args.json or (args.out / "window_sweep.json" if args.smoke else Path("docs/results/window_sweep.json"))
    sweep: dict = {"dataset": "digits-fleet", "smoke": args.smoke, "seeds": seeds, "threads": args.threads,
                   "windows": list(windows), "duet_variant": args.variant, "methods": list(METHODS), "split_for_choosing_w": "valid",
                   "left_out": "fine-tuning and the oracle (they do not read the window)", "by_window": {}}
    for window in windows:
        started = time.perf_counter()
        data, cfg = fleet(data_root, window, args.smoke)
        report = args.out / f"W{window}"
        compare(data, report, seeds, args.threads, args.smoke, args.variant)
        sweep["by_window"][str(window)] = {**window_row(report, data, cfg),
                                           "seconds_this_call": round(time.perf_counter() - started, 1)}
        write_json(out_json, sweep)
        row = sweep["by_window"][str(window)]["accuracy"]
        print(f"W={window}: unseen valid/test accuracy " + ", ".join(
            f"{m} {row[m]['valid_unseen']['mean']:.4f}/{row[m]['test_unseen']['mean']:.4f}" for m in METHODS),
              flush=True)
    plot(sweep, out_json.with_suffix(".png"))
    print(f"wrote {out_json} and {out_json.with_suffix('.png')}")


if __name__ == "__main__":
    main()
