"""The task seam: all that the core (training, checkpoints, export, the service, simulation)
needs from a task, behind one interface.

A task is a folder under `duet/tasks/` (or a user's own module) that exposes a `Task` object
through a builder function `package.module:function`. Every dataset, run and bundle records
the task's name and that builder, so loading, serving and exporting find the task again by
importing the builder: nothing is ever unpickled, and the core never names a task.

The interface follows Lightning's split (a module for the model and its loss, a data
module for loading and batching) and Hugging Face's `model_type` in config.json (the
recorded name picks the code); a head's parameters are named tensors, as in hypnettorch's
`param_shapes`. It is a Protocol of plain methods, not a plugin framework.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from duet.errors import ArtifactError
from duet.spec import GraphInput, SampleSpec

if TYPE_CHECKING:
    from torch import Tensor, nn

    from duet.config import RunConfig


@dataclass
class DeviceGraph:
    """What `duet export` turns into the device's ONNX graph.

    `module(*inputs, params)` takes the task's graph inputs (in `inputs` order) and the
    head's parameters {spec name: (1, *shape)} and returns the outputs named in `outputs`
    (the first is what the device scores with). `examples(n)` gives example inputs with a
    dynamic size of n (export traces n = 4; verification compares torch and onnxruntime
    at several n).
    """

    module: nn.Module
    inputs: tuple[GraphInput, ...]
    outputs: tuple[str, ...]
    examples: Any  # Callable[[int, torch.Generator], tuple[Tensor, ...]]


@dataclass
class DeviceStep:
    """One scored moment of a device's stream in `duet simulate`: the samples it observed since
    the previous step (oldest first), or the `window` it refreshes with (None: the observed one),
    then what it scores (graph inputs) and the rows of the offline logits those scores are."""

    observed: list[Any]
    window: Any
    inputs: dict[str, Any]
    records: Any  # np.ndarray of rows of `Simulation.offline`


@dataclass
class Simulation:
    """A fleet to replay: the offline logits of its scored records (torch), every device's
    steps, the number of scoring events, and the task's metrics of a set of logits."""

    offline: Any  # np.ndarray (records, ...) of logits
    streams: dict[str, list[DeviceStep]]
    events: int
    metrics: Callable[[Any], dict[str, float]]


@dataclass
class Extras:
    """Files a task adds to a bundle ({name: {tensor name: array}}) and facts for its manifest."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """What the core needs from a task. See `duet/tasks/` for the built-in ones and
    `duet.own` for a task built from a user's own modules."""

    name: str  # recorded in every manifest
    builder: str  # `package.module:function` returning this task (recorded in every manifest)
    select_metric: str  # the validation metric that selects the epoch (higher is better)
    unit: str  # what paired intervals resample: "user", "device", ...
    backbones: tuple[str, ...]  # the static parts it offers; the first is the default
    methods: tuple[str, ...]  # base, duet and the task's own (fitted by `fit_without_gradients`)
    # Those of its own methods the shared loop trains (its batcher, loss and evaluate read the method).
    gradient_methods: tuple[str, ...]
    defaults: Mapping[str, Any]  # defaults of options left unset (e.g. encoder, batch_size)

    # --- data
    def facts(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """The data facts a run needs, from a dataset manifest, validated (the task's own typed config)."""

    def load(self, path: str | Path, splits: tuple[str, ...]) -> Any:
        """A dataset with `.hash` (sha256 of its manifest) and `[split]`."""

    def batcher(self, data: Any, config: RunConfig) -> Any:
        """An object with `num_batches()` and `shuffled(seed, epoch, rank, world)` over train batches."""

    # --- model
    def build(self, config: RunConfig) -> nn.Module:
        """The device model: static part + dynamic head. It gives `param_spec`, `theta_g()`,
        `feature_dim`, `window_features(window, mask)` and `forward(*inputs, params=None)`.
        For a method of the task's own (not base or duet), that method's model (to load weights into)."""

    def fit_without_gradients(self, config: RunConfig, data: Any) -> nn.Module:
        """Fit a method of the task's own (e.g. popularity) from the train split; DuetError if it has none."""

    def loss(self, model: nn.Module, batch: Any, data: Any, config: RunConfig, device: Any) -> tuple[Tensor, int]:
        """(mean loss of the batch on `device`, number of records in it)."""

    def evaluate(self, model: nn.Module, split: Any, config: RunConfig) -> dict[str, float]:
        """Metrics of a split (validation during training)."""

    def evaluate_run(self, run: Path, config: RunConfig, model: nn.Module, split: str, data: str | Path | None,
                     suffix: str) -> dict[str, float]:
        """`duet evaluate`: score a split, write RUN/metrics_<split><suffix>.json and the per-unit scores."""

    # --- command line
    sources: tuple[str, ...]  # `duet prepare --source` names it builds

    def prepare(self, source: str, out: Path, options: dict[str, Any], overwrite: bool) -> None:
        """`duet prepare`: build a dataset from `source`; `options` are the options given (refuse the others)."""

    def compare(self, data: Path, out: Path, options: dict[str, Any], progress: bool) -> Path:
        """`duet compare`: every method and baseline on the same splits, with paired intervals over
        `unit`s and seeds; returns the report's results.md."""

    def describe(self, data: Path, plot: Path | None, top: int) -> None:
        """`duet data info`: print what a prepared dataset holds."""

    # --- device
    def sample(self, config: RunConfig) -> SampleSpec:
        """One raw window sample as the service and the device see it (dtype, shape, valid range)."""

    def device_graph(self, model: nn.Module) -> DeviceGraph | None:
        """The device model as an exportable graph, with its inputs described for the device.
        A task with no device side returns None (or raises NotImplementedError): `duet export`
        and `duet simulate` then say so in one line."""

    def bundle_extras(self, config: RunConfig, model: nn.Module, data: str | Path | None) -> Extras:
        """Files and manifest facts a bundle of this task adds (e.g. a vocabulary)."""

    def simulation(self, config: RunConfig, model: nn.Module, data: str | Path | None, devices: int) -> Simulation:
        """`duet simulate`: the test streams of `devices` devices, with their offline logits."""


def load_task(builder: str) -> Task:
    """Import a task from its recorded builder `package.module:function` (never unpickled)."""
    module_name, _, function = builder.partition(":")
    if not module_name or not function:
        raise ArtifactError(f"task builder {builder!r} is not `package.module:function`")
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise ArtifactError(f"task builder {builder!r} cannot be imported ({exc})") from None
    task = factory()
    if not isinstance(task, Task):
        raise ArtifactError(f"task builder {builder!r} did not return a duet Task")
    return task


def builder_of(record: Mapping[str, Any], where: str | Path) -> str:
    """The task builder a manifest or run config records (refusing artifacts written before tasks were plug-ins)."""
    builder = record.get("builder")
    if not isinstance(builder, str):
        raise ArtifactError(f"{where}: records no task builder (written by duet before tasks were plug-ins); "
                            "redo it with this version (`duet prepare`, `duet train` or `duet export`)")
    return builder


def task_of(record: Mapping[str, Any], where: str | Path) -> Task:
    return load_task(builder_of(record, where))
