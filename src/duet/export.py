"""`duet export`: the device bundle of a run, for any task (the task describes its graph, the core exports it).

A bundle directory holds:

    model.onnx             the task's device graph: static part + dynamic head, head parameters as inputs
    features.onnx          raw window samples (N, *sample shape) -> the generator's input features (N, D):
                           what a device in privacy mode uploads and what the drift policy compares
    theta_g.safetensors    the global head (the device's fallback), spec names, unbatched shapes
    param_spec.json        the head's ParamSpec and its hash
    <task files>           what the task adds (`Task.bundle_extras`), e.g. vocab.safetensors
    manifest.json          format, task and builder, sample and graph description, model version,
                           spec hash and the sha256 of every file; signed: also `trusted_keys`
    manifest.sig           signed bundles only (`--sign`): Ed25519 signature over manifest.json's bytes

model.onnx's inputs are the task's graph inputs (`GraphInput`, in order; a dimension that is
None there is dynamic, named after its input), then one float32 input of shape (1, *shape)
per head parameter, named `input_name(spec name)` (the manifest records the mapping). Its
outputs are the task's; the first is what a device scores with. The static weights live
inside the graphs. Both graphs are checked against torch before the bundle is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from duet.atomic import atomic_dir, sha256_file, write_json
from duet.checkpoint import model_version
from duet.errors import ArtifactError, DuetError
from duet.freshness import release_fields
from duet.signing import PublicKey, SigningKey, sign_manifest
from duet.spec import GraphInput, ParamSpec, SampleSpec
from duet.task import DeviceGraph, Task, task_of_run

log = logging.getLogger("duet.export")

BUNDLE_FORMAT = "duet-bundle/2"
MODEL_FILE = "model.onnx"
FEATURES_FILE = "features.onnx"
THETA_G_FILE = "theta_g.safetensors"
SPEC_FILE = "param_spec.json"
FEATURES_INPUT, FEATURES_OUTPUT = "samples", "features"
# The exported graphs must reproduce torch within this (fp32, max |diff|).
EXPORT_ATOL = 1e-5
VERIFY_SIZES = (1, 7, 64)
MAX_DYNAMIC = 1 << 24


def input_name(param: str) -> str:
    """ONNX input name of a head parameter (`layers.0.weight` -> `layers_0_weight`)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", param)


def dim_name(graph_input: GraphInput, axis: int) -> str:
    """Name of a dynamic dimension: its input's name (then the axis, for a second dynamic one)."""
    first = next(i for i, d in enumerate(graph_input.shape) if d is None)
    return graph_input.name if axis == first else f"{graph_input.name}_{axis}"


class GraphWithHeadInputs(nn.Module):
    """The task's device graph with the head parameters as graph inputs {input name: (1, *shape)}."""

    def __init__(self, graph: DeviceGraph, spec: ParamSpec):
        super().__init__()
        self.module, self.names = graph.module, spec.names

    def forward(self, *args: Tensor | dict[str, Tensor]) -> tuple[Tensor, ...]:
        *inputs, params = args
        out = self.module(*inputs, {name: params[input_name(name)] for name in self.names})
        return tuple(out) if isinstance(out, tuple | list) else (out,)


class FeaturesGraph(nn.Module):
    """Raw window samples (N, *shape) -> the generator's input features (N, D), as the device model makes them."""

    def __init__(self, device_model: nn.Module):
        super().__init__()
        self.device_model = device_model

    def forward(self, samples: Tensor) -> Tensor:
        return self.device_model.window_features(samples[None], None)[0][0]


def device_model(model: nn.Module, method: str) -> nn.Module:
    """The model a device runs: a DUET run's device model, or a base run itself."""
    if method == "duet":
        return model.device_model
    if method == "base":
        return model
    raise ArtifactError(f"cannot export a {method!r} run: export needs a base or DUET run")


def example_params(spec: ParamSpec, theta_g: dict[str, Tensor], gen: torch.Generator | None = None,
                   noise: float = 0.1) -> dict[str, Tensor]:
    """theta_g (plus noise when `gen` is given) as graph inputs {input name: (1, *shape)}."""
    out = {}
    for name in spec.names:
        value = theta_g[name].detach().float()
        if gen is not None:
            value = value + noise * torch.randn(value.shape, generator=gen)
        out[input_name(name)] = value.unsqueeze(0).clone()
    return out


def example_samples(sample: SampleSpec, count: int, gen: torch.Generator) -> Tensor:
    """`count` random raw samples of this spec (valid ids for tokens, uniform floats otherwise; a spec
    that describes its columns: values in each column's range, whole numbers for codes)."""
    if sample.columns:
        return torch.from_numpy(sample.examples(count, np.random.default_rng(int(torch.randint(
            0, 2**31 - 1, (1,), generator=gen)))))
    if sample.dtype == "int64":
        low = 0 if sample.low is None else sample.low
        high = low + 1000 if sample.high is None else sample.high
        return torch.randint(low, high + 1, (count, *sample.shape), generator=gen)
    return torch.rand(count, *sample.shape, generator=gen)


def _dynamic(graph_input: GraphInput) -> dict[int, torch.export.Dim] | None:
    dims = {axis: torch.export.Dim(dim_name(graph_input, axis), min=1, max=MAX_DYNAMIC)
            for axis, d in enumerate(graph_input.shape) if d is None}
    return dims or None


def export_graph(graph: DeviceGraph, spec: ParamSpec, theta_g: dict[str, Tensor], file: Path,
                 example_size: int = 4) -> None:
    """Export the task's device graph (head parameters as inputs) with its dynamic dimensions."""
    wrapper = GraphWithHeadInputs(graph, spec).eval()
    inputs = tuple(graph.examples(example_size, torch.Generator().manual_seed(0)))
    params = example_params(spec, theta_g)
    if len(inputs) != len(graph.inputs):
        raise ArtifactError(f"the task's graph examples give {len(inputs)} inputs, it declares {len(graph.inputs)}")
    dynamic = (*(_dynamic(i) for i in graph.inputs), dict.fromkeys(params))
    # torch.export first: torch.onnx.export's own dynamic_shapes handling rejects a dict argument.
    with torch.no_grad(), _quiet_exporter():
        program = torch.export.export(wrapper, (*inputs, params), dynamic_shapes={"args": dynamic})
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=[i.name for i in graph.inputs] + list(params),
                                         output_names=list(graph.outputs), verbose=False)
    onnx_program.save(str(file))
    _name_dynamic_dims(file, {index: {axis: dim_name(i, axis) for axis, d in enumerate(i.shape) if d is None}
                              for index, i in enumerate(graph.inputs)})


def export_features(model: nn.Module, sample: SampleSpec, file: Path, example_size: int = 4) -> None:
    """Export `FeaturesGraph(model)`: samples (N, *shape) with N dynamic -> features (N, D)."""
    samples = example_samples(sample, example_size, torch.Generator().manual_seed(0))
    count = torch.export.Dim(FEATURES_INPUT, min=1, max=MAX_DYNAMIC)
    with torch.no_grad(), _quiet_exporter():
        program = torch.export.export(FeaturesGraph(model).eval(), (samples,), dynamic_shapes=({0: count},))
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=[FEATURES_INPUT],
                                         output_names=[FEATURES_OUTPUT], verbose=False)
    onnx_program.save(str(file))
    _name_dynamic_dims(file, {0: {0: FEATURES_INPUT}})


def verify_graph(graph: DeviceGraph, spec: ParamSpec, theta_g: dict[str, Tensor], file: Path, seed: int = 0) -> float:
    """Max |diff| of every output between onnxruntime and torch, at several sizes with random head parameters."""
    wrapper = GraphWithHeadInputs(graph, spec).eval()
    gen = torch.Generator().manual_seed(seed)
    session = _session(file)
    worst = 0.0
    for size in VERIFY_SIZES:
        inputs = tuple(graph.examples(size, gen))
        params = example_params(spec, theta_g, gen)
        with torch.no_grad():
            expected = wrapper(*inputs, params)
        feed = {i.name: t.numpy() for i, t in zip(graph.inputs, inputs, strict=True)}
        got = session.run(list(graph.outputs), {**feed, **{k: v.numpy() for k, v in params.items()}})
        worst = max(worst, _max_diff(got, expected))
    return worst


def verify_features(model: nn.Module, sample: SampleSpec, file: Path, seed: int = 0) -> float:
    """Max |diff| of the features graph against torch at several sizes."""
    gen = torch.Generator().manual_seed(seed)
    session = _session(file)
    worst = 0.0
    for size in VERIFY_SIZES:
        samples = example_samples(sample, size, gen)
        with torch.no_grad():
            expected = FeaturesGraph(model).eval()(samples)
        worst = max(worst, _max_diff(session.run([FEATURES_OUTPUT], {FEATURES_INPUT: samples.numpy()}), (expected,)))
    return worst


def _max_diff(got: list[np.ndarray], expected: Iterable[Tensor]) -> float:
    diffs = []
    for g, e in zip(got, expected, strict=True):
        e = e.numpy()
        if g.shape != e.shape:
            return float("inf")
        diffs.append(float(np.abs(g.astype(np.float64) - e).max()) if e.size else 0.0)
    return max(diffs, default=0.0)


def _session(file: Path) -> object:
    import onnxruntime as ort

    return ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs every optimisation pass at INFO and warns about torchvision ops; mute both."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecations inside torch's exporter
            # nn.GRU re-assigns its flat weight list while being traced; harmless here.
            warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned during export")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _name_dynamic_dims(file: Path, names: dict[int, dict[int, str]]) -> None:
    """torch.export names a dynamic dim `s<N>`; give each its input's name ({input index: {axis: name}})."""
    import onnx

    model = onnx.load(str(file))
    renames = {}
    for index, axes in names.items():
        dims = model.graph.input[index].type.tensor_type.shape.dim
        renames.update({dims[axis].dim_param: name for axis, name in axes.items() if dims[axis].dim_param})
    if renames:
        for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param in renames:
                    dim.dim_param = renames[dim.dim_param]
        onnx.save(model, str(file))


def device_graph_of(task: Task, device: nn.Module, run: Path, task_name: str) -> DeviceGraph:
    """The task's device graph; a task without a device side (device_graph raises NotImplementedError
    or returns None) is refused in one line."""
    try:
        graph = task.device_graph(device)
    except NotImplementedError:
        graph = None
    if graph is None:
        raise DuetError(f"{run}: task {task_name!r} has no device side (no device graph): nothing to export")
    return graph


def check_valid_samples(graph: DeviceGraph, spec: ParamSpec, theta_g: dict[str, Tensor], device: nn.Module,
                        sample: SampleSpec, where: str) -> None:
    """Run the device graph and the features graph in torch on inputs its task declares valid; a model
    that fails on one (an embedding row out of range, say) is a one-line DuetError, not a traceback
    from inside the exporter."""
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            GraphWithHeadInputs(graph, spec).eval()(*graph.examples(4, gen), example_params(spec, theta_g))
            FeaturesGraph(device).eval()(example_samples(sample, 4, gen))
    except (IndexError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DuetError(f"{where}: the model fails on samples its task declares valid ({type(exc).__name__}: "
                        f"{reason}); the task's sample ({sample.dtype}, shape {list(sample.shape)}) must "
                        "describe every value the model takes (own tasks: OwnTask(sample=SampleSpec(..., "
                        "columns=...)), e.g. Column.code(n) for a column that indexes an embedding of n rows)"
                        ) from None


def _save_extras(files: dict[str, dict[str, object]], tmp: Path) -> list[str]:
    from safetensors.numpy import save_file

    reserved = {MODEL_FILE, FEATURES_FILE, THETA_G_FILE, SPEC_FILE, "manifest.json", "manifest.sig"}
    for name, tensors in files.items():
        if Path(name).name != name or name in reserved or not name.endswith(".safetensors"):
            raise ArtifactError(f"task bundle file {name!r}: must be a plain new *.safetensors name")
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / name))
    return sorted(files)


def export_bundle(run: str | Path, out: str | Path, data: str | Path | None = None, overwrite: bool = False,
                  sign: SigningKey | None = None, trust: Iterable[PublicKey] = (), sequence: int | None = None,
                  expires_in_days: float | None = None) -> dict:
    """Write the device bundle of a base or DUET run into `out` (atomically); return its manifest.

    `sign`: sign the manifest with this key and list its public key, then those
    of `trust`, as the keys whose answers devices may accept (key rotation).
    `data`: the dataset the task's bundle files come from (default: the run's).
    `sequence` (default: export time in ms) and `expires_in_days`: see duet.freshness.
    """
    from safetensors.numpy import save_file

    from duet.checkpoint import load_run

    run, out = Path(run), Path(out)
    config, model, _ = load_run(run)
    task = task_of_run(config)
    device = device_model(model, config.train.method)
    graph = device_graph_of(task, device, run, config.task)
    sample, extras = task.sample(config), task.bundle_extras(config, device, data)
    spec, theta_g = device.param_spec, device.theta_g()
    release = release_fields(sequence, expires_in_days)  # rollback protection (duet.freshness); checked first
    check_valid_samples(graph, spec, theta_g, device, sample, f"{run}: task {config.task!r}")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        export_graph(graph, spec, theta_g, tmp / MODEL_FILE)
        export_features(device, sample, tmp / FEATURES_FILE)
        diff = max(verify_graph(graph, spec, theta_g, tmp / MODEL_FILE),
                   verify_features(device, sample, tmp / FEATURES_FILE))
        if not diff <= EXPORT_ATOL:
            raise ArtifactError(f"{run}: exported graph differs from torch by {diff:.2e} (> {EXPORT_ATOL})")
        save_file({name: t.detach().float().numpy() for name, t in theta_g.items()}, str(tmp / THETA_G_FILE),
                  metadata={"spec_hash": spec.hash})
        write_json(tmp / SPEC_FILE, {"hash": spec.hash, "params": spec.to_json()})
        names = (MODEL_FILE, FEATURES_FILE, THETA_G_FILE, SPEC_FILE, *_save_extras(extras.files, tmp))
        manifest = {
            "format": BUNDLE_FORMAT,
            "task": config.task,
            "builder": config.builder,
            **({"builder_options": config.builder_options} if config.builder_options else {}),
            "model_version": model_version(run),
            **release,
            "run": str(run.resolve()),
            "method": config.train.method,
            "backbone": config.model.backbone,
            "facts": {**config.facts, **extras.facts},
            "sample": sample.to_json(),
            "graph": {"inputs": [i.to_json() for i in graph.inputs], "outputs": list(graph.outputs),
                      "params": {name: input_name(name) for name in spec.names}},
            "features": {"input": FEATURES_INPUT, "output": FEATURES_OUTPUT},
            "feature_dim": int(device.feature_dim),
            "window_len": config.window_len,
            "spec_hash": spec.hash,
            "verified_max_abs_diff": diff,
            "files": {name: sha256_file(tmp / name) for name in names},
        }
        write_json(tmp / "manifest.json", manifest)
        if sign is not None:
            sign_manifest(tmp, sign, trust)
    log.info("exported %s -> %s (version %s, max |diff| %.1e)", run, out, manifest["model_version"], diff)
    return json.loads((out / "manifest.json").read_text())
