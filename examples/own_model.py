"""Bring your own model: duet on a task defined here, outside the package, from start to finish.

    python examples/own_model.py --out runs/own-model

A fleet of devices, each with a sensor of its own offset (its readings are shifted by a
device-specific vector), classifies 8-channel readings into 4 classes. The global model
cannot tell a device's offset from a class; the device's recent unlabelled readings can.
The script:

1. makes the fleet (seeded) and writes it as a duet dataset of this task;
2. trains the global model and DUET on top of it, and compares them on the test period with
   paired intervals over devices (and DUET against its own static part with the global head);
3. exports the device bundle, starts `duet serve` on the DUET run, and lets a device
   (the torch-free runtime) observe its readings, fetch generated head parameters over HTTP
   and classify locally; its outputs are checked against the offline (torch) model.

The task is `build_task` below: a static module, a head module (whose parameters the cloud
generates), a loss and a metric. Runs and bundles record "own_model:build_task", so
`duet serve` (another process) rebuilds the modules by importing this file: examples/ must be
on its PYTHONPATH, which the script sets for the service it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from duet.tasks.own import OwnTask, compare_with_global, write_dataset

CLASSES, CHANNELS, HIDDEN = 4, 8, 32
MODULE = Path(__file__).stem  # this file's module name once examples/ is on the path


class Encoder(nn.Module):
    """The static part: readings (N, 8) -> features (N, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(CHANNELS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def accuracy(labels: np.ndarray, outputs: np.ndarray) -> float:
    return float((outputs.argmax(1) == labels).mean())


def build_task() -> OwnTask:
    """The task: what `duet` imports from the recorded builder `own_model:build_task`."""
    return OwnTask(name="offset-sensors", builder=f"{MODULE}:build_task", static=Encoder,
                   head=lambda: nn.Linear(HIDDEN, CLASSES), loss_fn=F.cross_entropy, metric=accuracy,
                   metric_name="accuracy")


def make_fleet(seed: int = 0, devices: int = 60, per_device: int = 80) -> tuple[np.ndarray, ...]:
    """Readings = class mean + noise + the device's own offset; each device has its own class mix."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.0, (CLASSES, CHANNELS))
    x, y, device, order = [], [], [], []
    for d in range(devices):
        offset = rng.normal(0.0, 1.2, CHANNELS)
        labels = rng.choice(CLASSES, per_device, p=rng.dirichlet(np.full(CLASSES, 0.5)))
        x.append(means[labels] + rng.normal(0.0, 0.7, (per_device, CHANNELS)) + offset)
        y.append(labels)
        device.append(np.full(per_device, d))
        order.append(np.arange(per_device))
    return tuple(np.concatenate(a) for a in (x, y, device, order))


def device_round_trip(run: Path, bundle: Path, data: Path, device: int | None = None) -> float:
    """Serve the DUET run, let one test device (default: the first) fetch its head over HTTP and
    score locally; returns the largest |device output - offline output| over its scored samples."""
    from duet.checkpoint import load_run
    from duet.device import DeviceRuntime
    from duet.simulate import ServiceProcess
    from duet.tasks.fleet.batches import predict_samples
    from duet.tasks.fleet.store import load_fleet

    config, model, _ = load_run(run)
    test = load_fleet(data, ("test",))["test"]
    mine = test.device == (test.device[0] if device is None else device)
    rows = test.rows[mine]
    offline = predict_samples(model, test.select(mine), window_len=config.window_len)
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    worst = 0.0
    with ServiceProcess(run, env={"PYTHONPATH": path}) as service:
        runtime = DeviceRuntime(bundle, service.url, "device-0")
        data_x = test.data.x
        first = int(test.data.first_row[rows[0]])
        for row in range(max(first, int(rows[0]) - config.window_len + 1), int(rows[0])):
            runtime.observe(data_x[row])  # the readings before the first scored one fill the window
        for i, row in enumerate(rows):
            runtime.observe(data_x[row])
            source = runtime.refresh()
            assert source == "service", runtime.last_error
            worst = max(worst, float(np.abs(runtime.score(data_x[row][None])[0] - offline[i]).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/own-model"))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))  # so that `own_model:build_task` imports here too
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = args.out / "data"
    x, y, device, order = make_fleet()
    write_dataset(data, build_task(), x, y, device, order, window_len=10, overwrite=True)
    results = compare_with_global(data, args.out / "report", seeds=args.seeds, epochs=30, duet_epochs=8,
                                  threads=1, progress=False)
    print(results["report"].read_text())

    from duet.export import export_bundle

    duet_run = args.out / "report" / "seed0" / "duet"
    bundle = args.out / "bundle"
    export_bundle(duet_run, bundle, overwrite=True)
    worst = device_round_trip(duet_run, bundle, data)
    seconds = time.perf_counter() - started
    print(f"device runtime (onnxruntime, generated head over HTTP) vs offline torch: max |diff| {worst:.2e}")
    print(f"done in {seconds:.0f} s; report {results['report']}, bundle {bundle}")
    from duet.atomic import write_json

    summary = json.loads((args.out / "report" / "results.json").read_text())
    write_json(args.out / "report" / "results.json",
               {**summary, "device_max_abs_diff": worst, "seconds": round(seconds, 1), "torch_threads": 1})


if __name__ == "__main__":
    main()
