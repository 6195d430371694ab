"""Image classification on a device fleet as a task: batches of samples with their device's
window, cross-entropy, accuracy selected on validation, devices as the unit of intervals."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from duet.config import Strict
from duet.errors import ArtifactError, DuetError
from duet.spec import SampleSpec
from duet.tasks.fleet.batches import SampleBatch, SampleBatcher
from duet.tasks.fleet.store import FleetData, FleetSplit
from duet.tasks.fleet.task import FleetTask
from duet.tasks.images import BUILDER, NAME, commands
from duet.tasks.images.armbn import METHOD as ARMBN
from duet.tasks.images.armbn import GroupBatch, GroupBatcher, armbn_loss, evaluate_armbn
from duet.tasks.images.metrics import classification_metrics, device_groups, per_group_accuracy


class Facts(Strict):
    """What an image run needs to know of its dataset."""

    num_classes: int = Field(ge=2)
    image_shape: tuple[int, int, int] = Field(description="(channels, height, width)")


class ImageTask(FleetTask):
    """A fleet of image classifiers: a CNN static part, cross-entropy, accuracy per device; ARM-BN
    beside base and DUET; the image comparison (fine-tuning, TENT, batch-norm statistics, ARM-BN, an
    oracle per shift type and DUET's variants)."""

    name = NAME
    builder = BUILDER
    select_metric = "accuracy"
    backbones = ("cnn",)
    methods = ("base", "duet", "armbn")
    gradient_methods = ("armbn",)  # ARM-BN: trained by the shared loop with per-device batch statistics

    def facts(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return Facts(num_classes=manifest["num_classes"], image_shape=manifest["image_shape"]).model_dump()

    def shape_of(self, config) -> tuple[int, ...]:
        return tuple(Facts.model_validate(config.facts).image_shape)

    def batcher(self, data: FleetData, config) -> SampleBatcher | GroupBatcher:
        if config.train.method == ARMBN:  # groups of W samples of one device
            return GroupBatcher(data["train"], config.train.batch_size, config.window_len)
        return super().batcher(data, config)

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

    def fit_without_gradients(self, config, data: FleetData) -> nn.Module:  # noqa: ARG002
        raise DuetError(f"--method {config.train.method}: image methods are {', '.join(self.methods)}, all "
                        "trained by gradient")

    def loss(self, model: nn.Module, batch: SampleBatch | GroupBatch, data: FleetData, config,
             device: torch.device) -> tuple[Tensor, int]:
        if isinstance(batch, GroupBatch):
            return armbn_loss(model, batch, device)
        return super().loss(model, batch, data, config, device)

    def scores(self, split: FleetSplit, outputs: np.ndarray) -> tuple[dict[str, float], dict[int, float]]:
        """Accuracy, macro-F1 and log loss overall and per device kind, shift type and class; accuracy per device."""
        return (classification_metrics(split.y, outputs, device_groups(split)),
                per_group_accuracy(split.y, outputs.argmax(1), split.device))

    def evaluate(self, model: nn.Module, split: FleetSplit, config) -> dict[str, float]:
        if config.train.method == ARMBN:  # each device normalised with its own window's statistics
            return evaluate_armbn(model, split, config.window_len)
        return super().evaluate(model, split, config)

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
    def graph_sample(self, model: nn.Module) -> SampleSpec:
        return SampleSpec("float32", tuple(model.image_shape))


def task() -> ImageTask:
    return ImageTask()
