"""A task of sample fleets: devices, each a stream of samples of one shape (images, sensor
segments, a table's rows), a window of the device's W most recent samples, one label per sample
(a class or a value). The image, sensor and own tasks subclass `FleetTask` and give their model,
loss and scores; the data, batching, evaluation, device graph and simulation are shared here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from duet.errors import ArtifactError
from duet.spec import GraphInput, SampleSpec
from duet.task import DeviceGraph, DeviceStep, Simulation, check_dataset
from duet.tasks.base import BaseTask
from duet.tasks.fleet.batches import SampleBatch, SampleBatcher, logits_of, predict_samples
from duet.tasks.fleet.store import FleetData, FleetSplit, load_fleet


class FleetGraph(nn.Module):
    """What a fleet device runs: N samples, one head given as inputs -> outputs (N, ...)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        head = {n: p[0] for n, p in params.items()}  # one head shared by the N samples
        return self.model(x, head)


def fleet_dataset(config, data: str | Path | None, splits: tuple[str, ...]) -> FleetData:
    """The run's own dataset, or `data`: another of the same task and facts (`duet.task.check_dataset`)."""
    dataset = load_fleet(data or config.data, splits)
    check_dataset(config, dataset.manifest, dataset.hash, dataset.path)
    return dataset


class FleetTask(BaseTask):
    """What every sample-fleet task shares. A subclass gives `name`, `builder`, `select_metric`,
    `facts`, `build` and `scores`, and `shape_of` where its facts name the sample shape otherwise."""

    unit = "device"
    # A window is a set of samples (an order-free encoder); fleets are small (smaller batches).
    defaults: Mapping[str, Any] = {"encoder": "mean", "batch_size": 128}
    outputs: tuple[str, ...] = ("logits",)  # the device graph's output names

    # --- what a subclass gives
    def scores(self, split: FleetSplit, outputs: np.ndarray) -> tuple[dict[str, float], dict[int, float]]:
        """The metrics of a split's outputs and the task's metric per device."""
        raise NotImplementedError

    def shape_of(self, config) -> tuple[int, ...]:
        return tuple(config.facts["sample_shape"])

    def loss_of(self, outputs: Tensor, y: Tensor) -> Tensor:
        """The training loss of a batch's outputs (default: cross-entropy over classes)."""
        return F.cross_entropy(outputs, y)

    # --- data and training
    def load(self, path: str | Path, splits: tuple[str, ...]) -> FleetData:
        return load_fleet(path, splits)

    def batcher(self, data: FleetData, config) -> SampleBatcher:
        return SampleBatcher(data["train"], config.train.batch_size, config.window_len)

    def loss(self, model: nn.Module, batch: SampleBatch, data: FleetData, config,  # noqa: ARG002
             device: torch.device) -> tuple[Tensor, int]:
        batch = batch.to(device)
        return self.loss_of(logits_of(model, batch), batch.y), len(batch.y)

    def evaluate(self, model: nn.Module, split: FleetSplit, config) -> dict[str, float]:
        return self.scores(split, predict_samples(model, split, config.train.eval_batch_size, config.window_len))[0]

    def evaluate_run(self, run: Path, config, model: nn.Module, split: str, data: str | Path | None,
                     suffix: str) -> dict[str, float]:
        """Score `split` (of the run's dataset, or of another of the same task); write
        metrics_<split><suffix>.json and the metric per device (the unit of paired intervals)."""
        from duet.atomic import write_json

        records = fleet_dataset(config, data, (split,))[split]
        metrics, per_device = self.scores(records, predict_samples(model, records, config.train.eval_batch_size,
                                                                   config.window_len))
        write_json(Path(run) / f"metrics_{split}{suffix}.json", metrics)
        write_json(Path(run) / f"{self.unit}_{self.select_metric}_{split}{suffix}.json",  # null: undefined there
                   {str(d): round(v, 6) if math.isfinite(v) else None for d, v in per_device.items()})
        return metrics

    # --- device side
    def sample(self, config) -> SampleSpec:
        return SampleSpec("float32", self.shape_of(config))

    def graph_sample(self, model: nn.Module) -> SampleSpec:
        """The sample spec of a built device model (its graph's input x); default: float32 samples of
        the model's `sample_shape`."""
        return SampleSpec("float32", tuple(model.sample_shape))

    def device_graph(self, model: nn.Module) -> DeviceGraph:
        from duet.export import example_samples

        sample = self.graph_sample(model)

        def examples(count: int, gen: torch.Generator) -> tuple[Tensor]:
            return (example_samples(sample, count, gen),)

        return DeviceGraph(FleetGraph(model), inputs=(GraphInput("x", "float32", (None, *sample.shape)),),
                           outputs=self.outputs, examples=examples)

    def simulation(self, config, model: nn.Module, data: str | Path | None, devices: int) -> Simulation:
        return fleet_simulation(config, model, data, devices, lambda split, outputs: self.scores(split, outputs)[0])


def fleet_simulation(config, model: nn.Module, data: str | Path | None, devices: int,
                     metrics: Callable[[FleetSplit, np.ndarray], dict[str, float]]) -> Simulation:
    """The first `devices` test devices of a sample fleet: observe each sample of the stream (from
    the W - 1 before the first scored one), and for each scored sample refresh, then score it."""
    dataset = fleet_dataset(config, data, ("test",))
    test = dataset["test"]
    if not len(test):
        raise ArtifactError(f"{dataset.path}: no test samples to replay")
    subset = test.select(np.isin(test.device, np.unique(test.device)[:devices]))
    offline = predict_samples(model, subset, config.train.eval_batch_size, config.window_len)
    scored_of: dict[int, dict[int, int]] = {}  # device -> {sample row: its index in subset}
    for index, (row, device) in enumerate(zip(subset.rows.tolist(), subset.device.tolist(), strict=True)):
        scored_of.setdefault(device, {})[row] = index
    streams: dict[str, list[DeviceStep]] = {}
    for device, scored in sorted(scored_of.items()):
        rows = sorted(scored)
        start = max(int(dataset.first_row[rows[0]]), rows[0] - config.window_len + 1)
        steps, observed = [], []
        for row in range(start, rows[-1] + 1):
            observed.append(dataset.x[row])
            if row in scored:
                steps.append(DeviceStep(observed=observed, window=None, inputs={"x": dataset.x[row][None]},
                                        records=np.array([scored[row]])))
                observed = []
        streams[f"device-{device}"] = steps
    return Simulation(offline=offline, streams=streams, events=len(subset),
                      metrics=lambda logits: metrics(subset, logits))
