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

import difflib
import importlib
import json
import sys
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
    select_metric: str  # the validation metric that selects the epoch
    higher_is_better: bool  # of select_metric (False: an error, e.g. a regression's mean absolute error)
    unit: str  # what paired intervals resample: "user", "device", ...
    backbones: tuple[str, ...]  # the static parts it offers; the first is the default
    methods: tuple[str, ...]  # base, duet and the task's own (fitted by `fit_without_gradients`)
    # Those of its own methods the shared loop trains (its batcher, loss and evaluate read the method).
    gradient_methods: tuple[str, ...]
    defaults: Mapping[str, Any]  # defaults of options left unset (e.g. encoder, batch_size)
    options: Any  # a pydantic model of the task's own training options (RunConfig.options), or None

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

    def unit_scores(self, run: Path, split: str, suffix: str) -> dict[str, float]:
        """The per-unit scores `evaluate_run` wrote ({unit: select metric}, NaN where undefined)."""

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


def load_task(builder: str, options: Mapping[str, Any] | None = None) -> Task:
    """Import a task from its recorded builder `package.module:function` and call it with the recorded
    keyword `options` (never unpickled); a builder that cannot be imported is one line with a hint."""
    module_name, _, function = builder.partition(":")
    if not module_name or not function:
        raise ArtifactError(f"task builder {builder!r} is not `package.module:function`")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArtifactError(f"task builder {builder!r} cannot be imported ({exc}); {_import_hint(module_name)}"
                            ) from None
    factory = getattr(module, function, None)
    if not callable(factory):
        close = difflib.get_close_matches(function, [n for n in dir(module) if not n.startswith("_")], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ArtifactError(f"task builder {builder!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
                            f"has no function {function!r}{hint}")
    try:
        task = factory(**dict(options or {}))
    except TypeError as exc:
        raise ArtifactError(f"task builder {builder!r} does not take the recorded options {dict(options or {})} "
                            f"({exc})") from None
    if not isinstance(task, Task):
        raise ArtifactError(f"task builder {builder!r} did not return a duet Task")
    return task


def _import_hint(module_name: str) -> str:
    """Where the module of a builder must be for `duet` (another process, e.g. `duet serve`) to import it."""
    main = sys.modules.get("__main__")
    script = Path(getattr(main, "__file__", "") or "")
    if script.suffix == ".py":
        return (f"the builder's module must be importable in every process that reads the artifact: put its "
                f"folder on PYTHONPATH, e.g. a builder in {script} is `{script.stem}:<function>` with "
                f"PYTHONPATH={script.parent.resolve()}")
    return (f"the builder's module {module_name!r} must be importable in every process that reads the "
            "artifact: put its folder on PYTHONPATH or install its package")


def builder_of(record: Mapping[str, Any], where: str | Path) -> str:
    """The task builder a manifest or run config records (refusing artifacts written before tasks were plug-ins)."""
    builder = record.get("builder")
    if not isinstance(builder, str):
        raise ArtifactError(f"{where}: records no task builder (written by duet before tasks were plug-ins); "
                            "redo it with this version (`duet prepare`, `duet train` or `duet export`)")
    return builder


def task_of(record: Mapping[str, Any], where: str | Path) -> Task:
    """The task a manifest or run config records (its builder, called with its recorded options)."""
    return load_task(builder_of(record, where), record.get("builder_options"))


def task_of_run(config: RunConfig) -> Task:
    """The task of a run's config."""
    return load_task(config.builder, config.builder_options)


def check_dataset(config: RunConfig, manifest: Mapping[str, Any], data_hash: str, where: str | Path) -> None:
    """A dataset a run may be scored or replayed on: its own (`data_hash` is the run's), or any other of
    the same task (builder and builder options) with the same facts (shapes, classes: what the model is
    built from), e.g. new devices written by the same code. Anything else is one line."""
    if data_hash == config.data_hash:
        return
    builder, options = builder_of(manifest, where), dict(manifest.get("builder_options") or {})
    if (builder, options) != (config.builder, config.builder_options):
        raise ArtifactError(f"{where}: a dataset of task {manifest.get('task')!r} ({builder}"
                            f"{f' {options}' if options else ''}), not of this run's ({config.builder}"
                            f"{f' {config.builder_options}' if config.builder_options else ''})")
    facts = json.loads(json.dumps(load_task(builder, options).facts(manifest)))
    for key in sorted(set(facts) | set(config.facts)):
        if facts.get(key) != config.facts.get(key):
            raise ArtifactError(f"{where}: a dataset of the same task, but its {key} {facts.get(key)!r} is not the "
                                f"run's {config.facts.get(key)!r}")


def task_options(task: Task, config: RunConfig) -> Any:
    """The run's own task options, validated by the task's `options` model (defaults for those not
    given); options given to a task that takes none, or that its model refuses, are one line."""
    if task.options is None:
        if config.options:
            raise ArtifactError(f"task {task.name!r} takes no options of its own, got {sorted(config.options)}")
        return None
    from pydantic import ValidationError

    try:
        return task.options.model_validate(config.options)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = f"--{str(err['loc'][0]).replace('_', '-')}: " if err["loc"] else ""
        raise ArtifactError(f"{where}{err['msg']} (an option of {task.name} datasets)") from None
