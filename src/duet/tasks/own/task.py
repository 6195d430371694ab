"""A task built from a user's own modules: any static `nn.Module` (samples -> features), any head
`nn.Module` (features -> outputs; its parameters are what the cloud generates), a loss and a metric.

The user writes a builder function that returns an `OwnTask` (it may take keyword options, e.g. a
vocabulary size: `write_dataset(..., builder_options=...)` records them); its dotted path
(`package.module:function`) and options are recorded in the dataset, the run and the bundle, so
that `duet train`, `duet serve`, `duet export` and `duet simulate` rebuild the modules by
importing it: nothing is ever pickled. Samples of any shape, integer class labels or float
targets (regression), devices and their order are laid out as a sample fleet (each device's W most
recent samples are its window; `duet.tasks.fleet`). The task may describe its sample's values
(`columns`: each value's range, and which are categorical codes): the data, the service's request
schema, the device and export's checks all hold samples to it.
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
from duet.spec import Column, SampleSpec
from duet.tasks.fleet.batches import sample_window_features
from duet.tasks.fleet.store import FleetSplit
from duet.tasks.fleet.task import FleetTask


class OwnDeviceModel(WithGlobalHead):
    """The user's static module and head, as a duet device model (`params=None` uses theta_g).

    With `film_layers`, the output of each named layer of the static module gets a per-channel
    scale and shift (channels along dim 1) that are dynamic too: generation inside the static part.
    """

    def __init__(self, static: nn.Module, head: nn.Module, sample_shape: tuple[int, ...],
                 film_layers: tuple[str, ...] = (), sample: SampleSpec | None = None):
        super().__init__()
        self.backbone, self.sample_shape = static, tuple(sample_shape)
        self.sample = sample or SampleSpec("float32", self.sample_shape)
        with torch.no_grad():
            was = static.training
            static.eval()
            self._feature_dim = int(static(self._probe()).shape[-1])
            static.train(was)
        self._set_head(ModuleHead(head))
        self.films = None
        if film_layers:
            self.films = LayerFilm(static, film_layers, lambda: static(self._probe()))
            self._add_films(self.films)

    def _probe(self) -> Tensor:
        """Two samples to find the static module's shapes with: zeros, moved into each column's range
        where the task describes its columns (a code column may not take 0)."""
        zeros = np.zeros((2, self.sample.width), dtype=np.float32)
        if self.sample.columns:
            low, high = (np.array([np.nan if b is None else b for b in bounds], dtype=np.float32)
                         for bounds in zip(*((c.low, c.high) for c in self.sample.columns), strict=True))
            zeros = np.clip(zeros, np.nan_to_num(low, nan=-np.inf), np.nan_to_num(high, nan=np.inf))
        return torch.from_numpy(np.ascontiguousarray(zeros.reshape(2, *self.sample_shape)))

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


@dataclass
class OwnTask(FleetTask):
    """A user's task. `static()` and `head()` build fresh modules; `loss_fn(outputs, labels)` is a
    scalar tensor; `metric(labels, outputs)` (numpy) selects epochs and settings: higher is better,
    or lower with `higher_is_better=False` (an error such as a mean absolute error). Labels are
    integer classes, or float targets for a regression (the loss and metric say what they mean).

    `columns` describes each value of a (flattened) sample: its range and whether it is a
    categorical code (`Column.code(n)`: 0..n-1, e.g. the row of an embedding table); samples outside
    them are refused by `write_dataset`, the service (422) and the device, and `duet export` checks
    the model on samples inside them. `sample_shape`, where given, is checked against the data."""

    name: str
    builder: str
    static: Callable[[], nn.Module]
    head: Callable[[], nn.Module]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    metric: Callable[[np.ndarray, np.ndarray], float]
    metric_name: str = "metric"
    higher_is_better: bool = True
    unit: str = "device"
    backbones: tuple[str, ...] = ("own",)
    methods: tuple[str, ...] = ("base", "duet")
    gradient_methods: tuple[str, ...] = ()
    film_layers: tuple[str, ...] = ()  # layers of the static module FiLM-ed with --film (named_modules() names)
    defaults: Mapping[str, Any] = field(default_factory=lambda: {"encoder": "mean", "batch_size": 128})
    sources: tuple[str, ...] = ()
    sample_shape: tuple[int, ...] | None = None  # one sample's shape, checked against the data where given
    columns: tuple[Column, ...] = ()
    outputs: tuple[str, ...] = ("outputs",)

    def __post_init__(self) -> None:
        self.columns = tuple(self.columns)
        if self.columns and self.sample_shape is not None and len(self.columns) != int(np.prod(self.sample_shape)):
            raise DuetError(f"task {self.name!r}: {len(self.columns)} columns for samples of shape {self.sample_shape}")

    @property
    def select_metric(self) -> str:
        return self.metric_name

    def spec(self, shape: tuple[int, ...]) -> SampleSpec:
        """The sample this task declares, for samples of `shape`: one line where they do not fit."""
        if self.sample_shape is not None and tuple(self.sample_shape) != tuple(shape):
            raise DuetError(f"task {self.name!r} declares samples of shape {tuple(self.sample_shape)}, the data "
                            f"has {tuple(shape)}")
        try:
            return SampleSpec("float32", tuple(shape), columns=self.columns)
        except ValueError as exc:
            raise DuetError(f"task {self.name!r}: {exc}") from None

    # --- data
    def facts(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        shape = manifest.get("sample_shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ArtifactError(f"dataset of task {self.name!r}: sample_shape {shape!r} is not a list of sizes")
        target = manifest.get("target", "class")
        return {"sample_shape": shape, **({"target": target} if target != "class" else {})}

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
                                  self.film_layers if config.model.film else (), self.spec(config.facts["sample_shape"]))
        except ValueError as exc:
            raise ArtifactError(f"task {self.name!r}: {exc}") from None

    def loss_of(self, outputs: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(outputs, y)

    def scores(self, split: FleetSplit, outputs: np.ndarray) -> tuple[dict[str, float], dict[int, float]]:
        """The metric overall and per device (the unit paired intervals resample; NaN where the metric
        is undefined for a device, e.g. an AUC over one class)."""
        per_device = {int(d): float(self.metric(split.y[split.device == d], outputs[split.device == d]))
                      for d in np.unique(split.device)}
        return {self.metric_name: float(self.metric(split.y, outputs)), "records": float(len(split))}, per_device

    # --- device
    def sample(self, config) -> SampleSpec:
        return self.spec(tuple(config.facts["sample_shape"]))

    def graph_sample(self, model: nn.Module) -> SampleSpec:
        return model.sample

    # --- command line: datasets come from arrays (duet.tasks.own.write_dataset), not `duet prepare`
    def prepare(self, source: str, out: Path, options: dict[str, Any], overwrite: bool) -> None:  # noqa: ARG002
        raise DuetError(f"task {self.name!r} is prepared from arrays with duet.tasks.own.write_dataset")

    def describe(self, data: Path, plot: Path | None, top: int) -> None:  # noqa: ARG002
        from rich.console import Console

        from duet.manifest import read_any_manifest

        manifest = read_any_manifest(data, "duet dataset", ("counts",))
        console = Console()
        console.print(f"[bold]{data}[/bold]  task {self.name}, samples {tuple(manifest['sample_shape'])}, "
                      f"{manifest.get('target', 'class')} labels, W={manifest['window_len']}")
        for name, c in manifest["counts"].items():
            console.print(f"  {name}: {c['samples']:,} samples on {c['devices']:,} devices")
