"""Image classification on a device fleet as a task: batches of samples with their device's
window, cross-entropy, accuracy selected on validation, devices as the unit of intervals."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from duet.config import Strict
from duet.errors import ArtifactError, DuetError
from duet.spec import GraphInput, SampleSpec
from duet.task import DeviceGraph, DeviceStep, Extras, Simulation
from duet.tasks.images import BUILDER, NAME, commands
from duet.tasks.images.armbn import METHOD as ARMBN
from duet.tasks.images.armbn import GroupBatch, GroupBatcher, armbn_loss, evaluate_armbn
from duet.tasks.images.metrics import classification_metrics
from duet.tasks.images.store import ImageData, ImageSplit, load_images
from duet.tasks.images.training import (
    ImageBatch,
    ImageBatcher,
    device_groups,
    evaluate_images,
    logits_of,
)


class Facts(Strict):
    """What an image run needs to know of its dataset."""

    num_classes: int = Field(ge=2)
    image_shape: tuple[int, int, int] = Field(description="(channels, height, width)")


class ImageGraph(nn.Module):
    """What an image device runs: N images, one head given as inputs -> logits (N, classes)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        head = {n: p[0] for n, p in params.items()}  # one head shared by the N images
        return self.classifier(x, head)


class ImageTask:
    name = NAME
    builder = BUILDER
    select_metric = "accuracy"
    unit = "device"
    backbones = ("cnn",)
    methods = ("base", "duet", "armbn")
    gradient_methods = ("armbn",)  # ARM-BN: trained by the shared loop with per-device batch statistics
    # A window is a set of samples (an order-free encoder); the training set is small (smaller batches).
    defaults: Mapping[str, Any] = {"encoder": "mean", "batch_size": 128}

    def facts(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return Facts(num_classes=manifest["num_classes"], image_shape=manifest["image_shape"]).model_dump()

    def load(self, path: str | Path, splits: tuple[str, ...]) -> ImageData:
        return load_images(path, splits)

    def batcher(self, data: ImageData, config) -> ImageBatcher | GroupBatcher:
        if config.train.method == ARMBN:  # groups of W samples of one device
            return GroupBatcher(data["train"], config.train.batch_size, config.window_len)
        return ImageBatcher(data["train"], config.train.batch_size, config.window_len)

    def build(self, config) -> nn.Module:
        from duet.tasks.images.model import ImageClassifier

        facts = Facts.model_validate(config.facts)
        if config.train.method not in self.methods:
            raise ArtifactError(f"method {config.train.method!r}: image runs are {', '.join(self.methods)}")
        if config.model.backbone not in self.backbones:
            raise ArtifactError(f"backbone {config.model.backbone!r} is not an image static part "
                                f"({', '.join(self.backbones)})")
        if config.model.device_history is not None:
            raise ArtifactError("--device-history: image samples have no click history to shorten")
        return ImageClassifier(facts.image_shape, facts.num_classes, config.model)

    def fit_without_gradients(self, config, data: ImageData) -> nn.Module:  # noqa: ARG002
        raise DuetError(f"--method {config.train.method}: image methods are {', '.join(self.methods)}, all "
                        "trained by gradient")

    def loss(self, model: nn.Module, batch: ImageBatch | GroupBatch, data: ImageData, config,  # noqa: ARG002
             device: torch.device) -> tuple[Tensor, int]:
        if isinstance(batch, GroupBatch):
            return armbn_loss(model, batch, device)
        batch = batch.to(device)
        return F.cross_entropy(logits_of(model, batch), batch.y), len(batch.y)

    def evaluate(self, model: nn.Module, split: ImageSplit, config) -> dict[str, float]:
        if config.train.method == ARMBN:  # each device normalised with its own window's statistics
            return evaluate_armbn(model, split, config.window_len)
        return evaluate_images(model, split, config.train.eval_batch_size, config.window_len)

    def evaluate_run(self, run: Path, config, model: nn.Module, split: str, data: str | Path | None,
                     suffix: str) -> dict[str, float]:
        from duet.tasks.images.evaluation import evaluate_image_run

        return evaluate_image_run(run, config, model, split, data, suffix)

    # --- command line (`duet prepare`, `duet compare`, `duet data info`)
    sources = commands.SOURCES

    def prepare(self, source: str, out: Path, options: dict[str, Any], overwrite: bool) -> None:
        commands.prepare(source, out, options, overwrite)

    def compare(self, data: Path, out: Path, options: dict[str, Any], progress: bool) -> Path:
        return commands.compare(data, out, options, progress)

    def compare_summary(self, report: Path) -> str:
        """What `duet compare` prints: fits 80 columns and names the full report."""
        return commands.compare_summary(report)

    def describe(self, data: Path, plot: Path | None, top: int) -> None:
        commands.describe(data, plot, top)

    # --- device side
    def sample(self, config) -> SampleSpec:
        return SampleSpec("float32", tuple(Facts.model_validate(config.facts).image_shape))

    def device_graph(self, model: nn.Module) -> DeviceGraph:
        def examples(count: int, gen: torch.Generator) -> tuple[Tensor]:
            return (torch.rand(count, *model.image_shape, generator=gen),)

        return DeviceGraph(ImageGraph(model), inputs=(GraphInput("x", "float32", (None, *model.image_shape)),),
                           outputs=("logits",), examples=examples)

    def bundle_extras(self, config, model: nn.Module, data: str | Path | None) -> Extras:  # noqa: ARG002
        return Extras()

    def simulation(self, config, model: nn.Module, data: str | Path | None, devices: int) -> Simulation:
        return fleet_simulation(config, model, data, devices,
                                lambda split, logits: classification_metrics(split.y, logits, device_groups(split)))


def fleet_simulation(config, model: nn.Module, data: str | Path | None, devices: int,
                     metrics: Callable[[ImageSplit, np.ndarray], dict[str, float]]) -> Simulation:
    """The first `devices` test devices of a sample fleet: observe each sample of the stream (from
    the W - 1 before the first scored one), and for each scored sample refresh, then score it."""
    from duet.tasks.images.training import predict_images

    dataset = load_images(data or config.data, ("test",))
    if dataset.hash != config.data_hash:
        raise ArtifactError(f"{dataset.path}: not the dataset this run was trained on (manifest hash differs)")
    test = dataset["test"]
    subset = test.select(np.isin(test.device, np.unique(test.device)[:devices]))
    offline = predict_images(model, subset, config.train.eval_batch_size, config.window_len)
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

def task() -> ImageTask:
    return ImageTask()
