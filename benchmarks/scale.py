"""Wall time and peak memory of prepare, one training epoch, evaluation and bulk generation,
on synthetic logs 1x, 10x, 100x the size of MovieLens-small (`duet prepare --source synthetic-scale`).

    python benchmarks/scale.py --scales 1,10 --work /tmp/scale --threads 2 \
        --out docs/results/scale.json --plot docs/results/scale.png
    python benchmarks/scale.py --scales 100 --train-scales none --work /tmp/scale --threads 1 --out F

Every phase is the real `duet` command in its own process; its wall time and peak
resident memory (ru_maxrss of that process) are recorded, with the load average
before it (the machine may be shared). Phases:

* prepare: `duet prepare --source synthetic-scale --scale S`;
* train: `duet train` (SASRec base, defaults) for one epoch, then its validation pass;
  `epoch_seconds` is the epoch alone (the run's history.json). Only at `--train-scales`;
* evaluate: `duet evaluate --split test` of that run, or, where no run was trained, of
  an untrained run of the same architecture written here (scoring costs the same
  whatever the weights);
* generate: `duet generate --windows` over the test split's windows (one device per
  test event) with an untrained DUET run of the default architecture, as above.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], log: Path) -> dict:
    """Run one `duet` command; its wall time, peak RSS and the load average before it."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed: see {log}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "load_before": load}


def untrained_run(data: Path, out: Path, method: str) -> Path:
    """A finished run folder with initial weights: for timing work whose cost does not depend on them."""
    import torch

    from duet.atomic import write_json
    from duet.checkpoint import WEIGHTS, build_model, save_tensors, write_manifest
    from duet.config import GeneratorConfig, ModelConfig, TrainConfig
    from duet.training.loop import run_config_for

    if (out / "manifest.json").exists():
        return out
    config = run_config_for(data, model=ModelConfig(), generator=GeneratorConfig() if method == "duet" else None,
                            train=TrainConfig(method=method, epochs=1))
    torch.manual_seed(0)
    model = build_model(config)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", json.loads(config.model_dump_json()))
    spec = model.param_spec if method == "base" else model.device_model.param_spec
    write_json(out / "param_spec.json", {"hash": spec.hash, "params": spec.to_json()})
    save_tensors(out / WEIGHTS, model.state_dict())
    write_manifest(out, {"method": method, "backbone": config.model.backbone, "best_epoch": 0,
                         "data_hash": config.data_hash, "untrained": True})
    return out


def test_windows(data: Path, out: Path) -> int:
    import numpy as np

    from duet.tasks.recommendation.data.store import load_dataset

    windows = load_dataset(data, splits=("test",))["test"].window
    np.save(out, windows)
    return len(windows)


def run_scale(scale: float, work: Path, threads: int, train: bool) -> dict:
    duet = [sys.executable, "-m", "duet"]
    folder = work / f"x{scale:g}"
    folder.mkdir(parents=True, exist_ok=True)
    data, run = folder / "data", folder / "sasrec-base"
    result: dict = {"scale": scale}
    print(f"scale {scale:g}: prepare", flush=True)
    result["prepare"] = timed([*duet, "prepare", "--source", "synthetic-scale", "--scale", str(scale), "--out",
                               str(data), "--overwrite"], folder / "prepare.log")
    manifest = json.loads((data / "manifest.json").read_text())
    result["dataset"] = {"interactions": manifest["source"]["rows"], "users": manifest["num_users"],
                         "items": manifest["num_items"] - 1, **{f"{k}_records": v["records"]
                                                                for k, v in manifest["counts"].items()},
                         "train_events": manifest["counts"]["train"]["events"]}
    if train:
        print(f"scale {scale:g}: train one epoch", flush=True)
        import shutil

        shutil.rmtree(run, ignore_errors=True)
        result["train"] = timed([*duet, "train", "--data", str(data), "--out", str(run), "--epochs", "1",
                                 "--threads", str(threads), "--no-progress"], folder / "train.log")
        epoch = json.loads((run / "history.json").read_text())[0]
        result["train"].update(epoch_seconds=epoch["seconds"], records_per_s=epoch["records_per_s"])
    else:
        untrained_run(data, run, "base")
    print(f"scale {scale:g}: evaluate", flush=True)
    result["evaluate"] = timed([*duet, "evaluate", "--run", str(run), "--split", "test"], folder / "evaluate.log")
    result["evaluate"]["records"] = manifest["counts"]["test"]["records"]
    print(f"scale {scale:g}: generate", flush=True)
    devices = test_windows(data, folder / "windows.npy")
    generated = folder / "heads.safetensors"
    result["generate"] = timed([*duet, "generate", "--run", str(untrained_run(data, folder / "duet-untrained", "duet")),
                                "--windows", str(folder / "windows.npy"), "--out", str(generated), "--overwrite",
                                "--threads", str(threads), "--no-progress"], folder / "generate.log")
    result["generate"].update(devices=devices, devices_per_s=devices / result["generate"]["seconds"],
                              bytes=generated.stat().st_size)
    generated.unlink()  # gigabytes at 100x
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from duet.atomic import save_png

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["dataset"]["interactions"] for r in results]
    for phase, key in (("prepare", "seconds"), ("train", "epoch_seconds"), ("evaluate", "seconds"),
                       ("generate", "seconds")):
        points = [(xi, r[phase][key]) for xi, r in zip(x, results, strict=True) if phase in r]
        if points:
            left.plot(*zip(*points, strict=True), "o-", label=phase)
            right.plot([p[0] for p in points], [r[phase]["peak_rss_mib"] for r in results if phase in r], "o-",
                       label=phase)
    line = [x[0], x[-1]]
    for axis, ylabel in ((left, "wall seconds"), (right, "peak RSS (MiB)")):
        axis.set(xscale="log", yscale="log", xlabel="interactions in the raw log", ylabel=ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    first = results[0]["prepare"]["seconds"]
    left.plot(line, [first, first * line[1] / line[0]], "k:", label="linear")
    fig.suptitle("duet at 1x / 10x / 100x MovieLens-small (synthetic-scale)")
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1,10", help="comma-separated multiples of MovieLens-small")
    parser.add_argument("--train-scales", default=None, help="scales that train an epoch (default: all; none: none)")
    parser.add_argument("--work", type=Path, required=True, help="folder for datasets, runs and logs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON results (merged into an existing file)")
    parser.add_argument("--plot", type=Path, default=None, help="log-log plot of all results in --out")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",") if s]  # none: only re-plot --out
    trains = scales if args.train_scales is None else (
        [] if args.train_scales == "none" else [float(s) for s in args.train_scales.split(",")])
    sys.path.insert(0, str(ROOT / "src"))
    from duet.atomic import write_json

    previous = json.loads(args.out.read_text())["results"] if args.out and args.out.exists() else []
    results = {r["scale"]: r for r in previous}
    for scale in scales:
        results[scale] = run_scale(scale, args.work, args.threads, scale in trains)
        print(json.dumps(results[scale], indent=1), flush=True)
        ordered = [results[s] for s in sorted(results)]
        if args.out:
            write_json(args.out, {"threads": args.threads, "cpus": os.cpu_count(), "results": ordered})
    if args.plot:
        plot([results[s] for s in sorted(results)], args.plot)


if __name__ == "__main__":
    main()
