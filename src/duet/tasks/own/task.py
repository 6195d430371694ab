"""A task built from a user's own modules: any static `nn.Module` (samples -> features), any head
`nn.Module` (features -> outputs; its parameters are what the cloud generates), a loss and a metric.

The user writes a builder function that returns an `OwnTask`; its dotted path
(`package.module:function`) is recorded in the dataset, the run and the bundle, so that
`duet train`, `duet serve`, `duet export` and `duet simulate` rebuild the modules by importing
it: nothing is ever pickled. Samples of any shape, integer class labels, devices and their
order are laid out like the image fleet (each device's W most recent samples are its window).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from duet.errors import ArtifactError, DuetError
from duet.models.film import LayerFilm
from duet.models.head import ModuleHead, Params, WithGlobalHead
from duet.spec import GraphInput, SampleSpec
from duet.task import DeviceGraph, Extras, Simulation
from duet.tasks.images.model import sample_window_features
from duet.tasks.images.store import ImageData, ImageSplit, load_images
from duet.tasks.images.training import ImageBatch, ImageBatcher, logits_of, predict_images


class OwnDeviceModel(WithGlobalHead):
    """The user's static module and head, as a duet device model (`params=None` uses theta_g).

    With `film_layers`, the output of each named layer of the static module gets a per-channel
    scale and shift (channels along dim 1) that are dynamic too: generation inside the static part.
    """

    def __init__(self, static: nn.Module, head: nn.Module, sample_shape: tuple[int, ...],
                 film_layers: tuple[str, ...] = ()):
        super().__init__()
        self.backbone, self.sample_shape = static, tuple(sample_shape)
        with torch.no_grad():
            was = static.training
            static.eval()
            self._feature_dim = int(static(torch.zeros(2, *self.sample_shape)).shape[-1])
            static.train(was)
        self._set_head(ModuleHead(head))
        self.films = None
        if film_layers:
            self.films = LayerFilm(static, film_layers, lambda: static(torch.zeros(2, *self.sample_shape)))
            self._add_films(self.films)

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    def features(self, x: Tensor, params: Params | None = None) -> Tensor:
        """Samples -> features, FiLM-ed by `params` (None: theta_g's, as for reading a window)."""
        if self.films is None:
            return self.backbone(x)
        params = self.theta_g() if params is None else params
        with self.films.applied(params):
            return self.backbone(x)

    def window_features(self, window: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Window samples (E, W, *shape) -> their features (E, W, D) and mask (E, W); padding is not run."""
        return sample_window_features(self.features, self.feature_dim, window, mask)

    def forward(self, x: Tensor, params: Params | None = None) -> Tensor:
        params = self.theta_g() if params is None else params
        return self.head(self.features(x, params), {n: params[n] for n in self.head.param_spec.names})


class _Graph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        return self.model(x, {n: p[0] for n, p in params.items()})  # one head shared by the N samples


@dataclass
class OwnTask:
    """A user's task. `static()` and `head()` build fresh modules; `loss(outputs, labels)` is a
    scalar tensor; `metric(labels, outputs)` (numpy) is higher-is-better and selects epochs."""

    name: str
    builder: str
    static: Callable[[], nn.Module]
    head: Callable[[], nn.Module]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    metric: Callable[[np.ndarray, np.ndarray], float]
    metric_name: str = "metric"
    unit: str = "device"
    backbones: tuple[str, ...] = ("own",)
    methods: tuple[str, ...] = ("base", "duet")
    gradient_methods: tuple[str, ...] = ()
    film_layers: tuple[str, ...] = ()  # layers of the static module FiLM-ed with --film (named_modules() names)
    defaults: Mapping[str, Any] = field(default_factory=lambda: {"encoder": "mean", "batch_size": 128})
    sources: tuple[str, ...] = ()

    @property
    def select_metric(self) -> str:
        return self.metric_name

    # --- data
    def facts(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        shape = manifest.get("sample_shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ArtifactError(f"dataset of task {self.name!r}: sample_shape {shape!r} is not a list of sizes")
        return {"sample_shape": shape}

    def load(self, path: str | Path, splits: tuple[str, ...]) -> ImageData:
        return load_images(path, splits)

    def batcher(self, data: ImageData, config) -> ImageBatcher:
        return ImageBatcher(data["train"], config.train.batch_size, config.window_len)

    # --- model
    def build(self, config) -> nn.Module:
        if config.train.method not in self.methods:
            raise ArtifactError(f"method {config.train.method!r}: {self.name} runs are base or duet")
        if config.model.film and not self.film_layers:
            raise ArtifactError(f"--film: task {self.name!r} names no layers of its static module to FiLM; "
                                "give OwnTask(film_layers=(...)) the named_modules() names")
        if config.model.device_history is not None:
            raise ArtifactError(f"--device-history: task {self.name!r} brings its own static module; "
                                "shorten its input there")
        try:
            return OwnDeviceModel(self.static(), self.head(), tuple(config.facts["sample_shape"]),
                                  self.film_layers if config.model.film else ())
        except ValueError as exc:
            raise ArtifactError(f"task {self.name!r}: {exc}") from None

    def fit_without_gradients(self, config, data: ImageData) -> nn.Module:  # noqa: ARG002
        raise DuetError(f"--method {config.train.method}: {self.name} methods are base and duet")

    def loss(self, model: nn.Module, batch: ImageBatch, data: ImageData, config,  # noqa: ARG002
             device: torch.device) -> tuple[Tensor, int]:
        batch = batch.to(device)
        return self.loss_fn(logits_of(model, batch), batch.y), len(batch.y)

    def scores(self, split: ImageSplit, outputs: np.ndarray) -> tuple[dict[str, float], dict[int, float]]:
        """The metric overall and per device (the unit paired intervals resample)."""
        per_device = {int(d): float(self.metric(split.y[split.device == d], outputs[split.device == d]))
                      for d in np.unique(split.device)}
        return {self.metric_name: float(self.metric(split.y, outputs)), "records": float(len(split))}, per_device

    def evaluate(self, model: nn.Module, split: ImageSplit, config) -> dict[str, float]:
        return self.scores(split, predict_images(model, split, config.train.eval_batch_size, config.window_len))[0]

    def evaluate_run(self, run: Path, config, model: nn.Module, split: str, data: str | Path | None,
                     suffix: str) -> dict[str, float]:
        from duet.atomic import write_json

        dataset = load_images(data or config.data, (split,))
        if dataset.hash != config.data_hash:
            raise ArtifactError(f"{dataset.path}: not the dataset this run was trained on (manifest hash differs)")
        records = dataset[split]
        metrics, per_device = self.scores(records, predict_images(model, records, config.train.eval_batch_size,
                                                                  config.window_len))
        write_json(Path(run) / f"metrics_{split}{suffix}.json", metrics)
        write_json(Path(run) / f"device_{self.metric_name}_{split}{suffix}.json",
                   {str(d): round(v, 6) for d, v in per_device.items()})
        return metrics

    # --- device
    def sample(self, config) -> SampleSpec:
        return SampleSpec("float32", tuple(config.facts["sample_shape"]))

    def device_graph(self, model: nn.Module) -> DeviceGraph:
        def examples(count: int, gen: torch.Generator) -> tuple[Tensor]:
            return (torch.randn(count, *model.sample_shape, generator=gen),)

        return DeviceGraph(_Graph(model), inputs=(GraphInput("x", "float32", (None, *model.sample_shape)),),
                           outputs=("outputs",), examples=examples)

    def bundle_extras(self, config, model: nn.Module, data: str | Path | None) -> Extras:  # noqa: ARG002
        return Extras()

    def simulation(self, config, model: nn.Module, data: str | Path | None, devices: int) -> Simulation:
        from duet.tasks.images.task import fleet_simulation

        return fleet_simulation(config, model, data, devices, lambda split, outputs: self.scores(split, outputs)[0])

    # --- command line: datasets come from arrays (duet.tasks.own.write_dataset), not `duet prepare`
    def prepare(self, source: str, out: Path, options: dict[str, Any], overwrite: bool) -> None:  # noqa: ARG002
        raise DuetError(f"task {self.name!r} is prepared from arrays with duet.tasks.own.write_dataset")

    def compare(self, data: Path, out: Path, options: dict[str, Any], progress: bool) -> Path:
        from duet.tasks.own.workflow import compare_with_global

        refused = sorted(k for k in options if k not in ("seeds", "epochs", "duet_epochs", "threads", "quick"))
        if refused:
            raise DuetError(f"{data}: options {', '.join('--' + k.replace('_', '-') for k in refused)} do not apply")
        return compare_with_global(data, out, seeds=options.get("seeds") or 1, epochs=options.get("epochs"),
                                   duet_epochs=options.get("duet_epochs"), threads=options.get("threads"),
                                   progress=progress)["report"]

    def describe(self, data: Path, plot: Path | None, top: int) -> None:  # noqa: ARG002
        from rich.console import Console

        from duet.manifest import read_any_manifest

        manifest = read_any_manifest(data, "duet dataset", ("counts",))
        console = Console()
        console.print(f"[bold]{data}[/bold]  task {self.name}, samples {tuple(manifest['sample_shape'])}, "
                      f"W={manifest['window_len']}")
        for name, c in manifest["counts"].items():
            console.print(f"  {name}: {c['samples']:,} samples on {c['devices']:,} devices")
