"""Activity recognition on phone sensors as a task: one device per user (UCI HAPT), segments of
six channels, a 1-D CNN static part. The data, batching, evaluation and device side are the fleet
kit's (a window is the device's W most recent unlabelled segments); as a CNN classifier with batch
norms it takes the image task's classification, ARM-BN and comparison (fine-tuning, TENT,
batch-norm statistics)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field
from torch import nn

from duet.config import Strict
from duet.errors import ArtifactError, option_error, refuse_given
from duet.tasks.images.task import ImageTask
from duet.tasks.sensors import BUILDER, NAME


class Facts(Strict):
    """What a sensor run needs to know of its dataset."""

    num_classes: int = Field(ge=2)
    sample_shape: tuple[int, int] = Field(description="(channels, samples per segment)")


class SensorTask(ImageTask):
    name = NAME
    builder = BUILDER
    backbones = ("cnn",)
    # A window is a set of segments (order-free encoder); about 6,000 training segments.
    defaults: Mapping[str, Any] = {"encoder": "mean", "batch_size": 128}
    sources = ("hapt",)

    def facts(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return Facts(num_classes=manifest["num_classes"], sample_shape=manifest["sample_shape"]).model_dump()

    def build(self, config) -> nn.Module:
        from duet.tasks.sensors.model import SensorClassifier

        facts = Facts.model_validate(config.facts)
        if config.train.method not in self.methods:
            raise ArtifactError(f"method {config.train.method!r}: sensor runs are {', '.join(self.methods)}")
        if config.model.backbone not in self.backbones:
            raise ArtifactError(f"backbone {config.model.backbone!r} is not a sensor static part "
                                f"({', '.join(self.backbones)})")
        if config.model.device_history is not None:
            raise ArtifactError("--device-history: sensor samples have no click history to shorten")
        return SensorClassifier(facts.sample_shape, facts.num_classes, config.model)

    def shape_of(self, config) -> tuple[int, ...]:
        return tuple(Facts.model_validate(config.facts).sample_shape)

    def prepare(self, source: str, out: Path, options: dict[str, Any], overwrite: bool) -> None:
        from pydantic import ValidationError
        from rich.console import Console

        from duet.tasks.sensors.fleet import prepare_hapt

        allowed = ("seed", "window_len", "adapt", "path")
        refuse_given({"--" + k.replace("_", "-"): v for k, v in options.items() if k not in allowed},
                     f"--source {source} builds the sensor fleet: {{}} do not apply")
        started = time.perf_counter()
        try:
            manifest = prepare_hapt(out, overwrite=overwrite, **{k: v for k, v in options.items() if k in allowed})
        except ValidationError as exc:
            raise option_error(exc) from None
        counts = ", ".join(f"{name} {c['scored']} scored of {c['samples']} segments on {c['devices']} users"
                           for name, c in manifest["counts"].items())
        Console().print(f"prepared in {time.perf_counter() - started:.1f} s: {counts}")

    def compare(self, data: Path, out: Path, options: dict[str, Any], progress: bool) -> Path:
        from duet.tasks.images.commands import COMPARE_OPTIONS, compare_config
        from duet.tasks.images.compare import compare_images

        refuse_given({"--" + k.replace("_", "-"): v for k, v in options.items() if k not in COMPARE_OPTIONS},
                     f"{data} is a sensor fleet: {{}} do not apply")
        # One shift type ("own": every user moves differently): an oracle per type is the global model.
        # A device's first segments cover few activities (a recording follows a fixed script), so the
        # fine-tuning and TENT grids reach down to one step and a small rate: equal care, on validation.
        cfg = compare_config(data, options, oracle=False, finetune_steps=(1, 5, 10, 30),
                             finetune_lrs=(1e-4, 1e-3, 1e-2), tent_steps=(1, 10), tent_lrs=(1e-4, 1e-3, 1e-2))
        compare_images(cfg, out, progress=progress)
        return out / "results.md"

    def describe(self, data: Path, plot: Path | None, top: int) -> None:  # noqa: ARG002
        from rich.console import Console

        from duet.manifest import read_any_manifest

        manifest = read_any_manifest(data, "duet dataset", ("counts", "class_names"))
        console = Console()
        console.print(f"[bold]{data}[/bold]  {manifest['source']['name']}: {manifest['source']['users']} users, "
                      f"classes {', '.join(manifest['class_names'])}, segments {tuple(manifest['sample_shape'])}, "
                      f"W={manifest['window_len']}")
        for name, c in manifest["counts"].items():
            console.print(f"  {name}: {c['scored']:,} scored of {c['samples']:,} segments on {c['devices']} users")


def task() -> SensorTask:
    return SensorTask()
