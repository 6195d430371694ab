"""`duet export`: the device bundle, the static part plus the dynamic head as one ONNX graph.

A bundle directory holds:

    model.onnx             static part + dynamic head; the head parameters are graph inputs
    theta_g.safetensors    the global head (the device's fallback), spec names, unbatched shapes
    vocab.safetensors      recommendation: `item_raw`, the raw item id of each internal id (0 = padding -> -1)
    item_embedding.safetensors  recommendation: `embedding` (num_items, D), the item embeddings a device in
                           privacy mode uploads instead of item ids (the generator's input)
    param_spec.json        the head's ParamSpec and its hash
    manifest.json          format, model version, input names, shapes and the sha256 of every file;
                           signed: also `trusted_keys`, the public keys whose answers devices accept
    manifest.sig           signed bundles only (`--sign`): Ed25519 signature over manifest.json's bytes

Graph inputs: `history` (1, L) int64 (oldest first, left-aligned, 0 = padding),
`items` (C,) int64 with C dynamic, and one float32 input of shape (1, *shape) per
head parameter, named after the spec name with dots replaced (the manifest records
the mapping). Output: `logits` (C,). The static weights live inside the graph.

An image run's bundle (format `duet-image-bundle/1`, no vocabulary or item
embeddings) has one graph input `x` (N, C, H, W) float32 with N dynamic, the same
head inputs, and two outputs: `logits` (N, classes) and `features` (N, D), the
static part's features, which a device in privacy mode uploads instead of images.
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
from duet.errors import ArtifactError
from duet.freshness import release_fields
from duet.signing import PublicKey, SigningKey, sign_manifest

log = logging.getLogger("duet.export")

BUNDLE_FORMAT = "duet-bundle/1"
IMAGE_BUNDLE_FORMAT = "duet-image-bundle/1"
MODEL_FILE = "model.onnx"
THETA_G_FILE = "theta_g.safetensors"
VOCAB_FILE = "vocab.safetensors"
EMBEDDING_FILE = "item_embedding.safetensors"
SPEC_FILE = "param_spec.json"
CANDIDATES_DIM = "candidates"
SAMPLES_DIM = "samples"
# The exported graph must reproduce torch within this (fp32, max |logit diff|).
EXPORT_ATOL = 1e-5


def model_version(run: str | Path) -> str:
    """Short id of a finished run: `<run dir name>-<12 hex of sha256(manifest.json)>`.

    The manifest lists the sha256 of the weights and config, so a retrained or
    modified run gets a new version; the cloud and the bundle derive it alike.
    """
    run = Path(run).resolve()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run.name).strip("-.")[:40] or "run"
    return f"{name}-{sha256_file(run / 'manifest.json')[:12]}"


def input_name(param: str) -> str:
    """ONNX input name of a head parameter (`layers.0.weight` -> `layers_0_weight`)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", param)


class HeadInputs(nn.Module):
    """A device graph's head parameters are graph inputs, one per spec name (`inputs`: name -> input name)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = model.param_spec.names
        self.inputs = {name: input_name(name) for name in self.names}


class DeviceGraph(HeadInputs):
    """What the device runs: one history, C candidates, one head given as inputs."""

    def __init__(self, recommender: nn.Module):
        super().__init__(recommender)
        self.recommender = recommender

    def forward(self, history: Tensor, items: Tensor, params: dict[str, Tensor]) -> Tensor:
        """history (1, L), items (C,), params {input name: (1, *shape)} -> logits (C,)."""
        inverse = torch.zeros_like(items)  # every candidate belongs to the one event
        return self.recommender(history, items, inverse, {n: params[self.inputs[n]] for n in self.names})


def device_model(model: nn.Module, method: str) -> nn.Module:
    """The model a device runs: a DUET run's device model, or a base run itself."""
    if method == "duet":
        return model.device_model
    if method == "base":
        return model
    raise ArtifactError(f"cannot export a {method!r} run: export needs a base or DUET run")


class ImageDeviceGraph(HeadInputs):
    """What an image device runs: N images, one head given as inputs -> logits and static features."""

    def __init__(self, classifier: nn.Module):
        super().__init__(classifier)
        self.classifier = classifier

    def forward(self, x: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """x (N, C, H, W), params {input name: (1, *shape)} -> logits (N, classes), features (N, D)."""
        features = self.classifier.features(x)
        head = {n: params[self.inputs[n]][0] for n in self.names}  # one head shared by the N images
        return self.classifier.head(features, head), features


def example_params(model: nn.Module) -> dict[str, Tensor]:
    """theta_g as graph inputs: {input name: (1, *shape)}."""
    return {input_name(n): t.detach().unsqueeze(0).clone() for n, t in model.theta_g().items()}


def export_image_onnx(classifier: nn.Module, file: Path, example_samples: int = 4) -> None:
    """Export `ImageDeviceGraph(classifier)` with a dynamic sample count."""
    graph = ImageDeviceGraph(classifier).eval()
    x = torch.rand(example_samples, *classifier.image_shape, generator=torch.Generator().manual_seed(0))
    params = example_params(classifier)
    samples = torch.export.Dim(SAMPLES_DIM, min=1, max=1 << 20)
    with torch.no_grad(), _quiet_exporter():
        program = torch.export.export(graph, (x, params), dynamic_shapes=({0: samples}, dict.fromkeys(params)))
    with _quiet_exporter():
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=["x", *params],
                                         output_names=["logits", "features"], verbose=False)
    onnx_program.save(str(file))
    _name_dynamic_dim(file, 0, SAMPLES_DIM)


def verify_image_onnx(classifier: nn.Module, file: Path, seed: int = 0) -> float:
    """Max |diff| of logits and features between onnxruntime and torch, random params and images."""
    import onnxruntime as ort

    graph = ImageDeviceGraph(classifier).eval()
    gen = torch.Generator().manual_seed(seed)
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in (1, 7, 64):
        x = torch.rand(n, *classifier.image_shape, generator=gen)
        params = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in example_params(classifier).items()}
        with torch.no_grad():
            expected = [t.numpy() for t in graph(x, params)]
        got = session.run(["logits", "features"], {"x": x.numpy(), **{k: v.numpy() for k, v in params.items()}})
        worst = max(worst, *(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True)))
    return worst


def export_onnx(recommender: nn.Module, file: Path, example_candidates: int = 8) -> None:
    """Export `DeviceGraph(recommender)` with a dynamic candidate count."""
    graph = DeviceGraph(recommender).eval()
    history = torch.zeros(1, recommender.history_len, dtype=torch.long)
    history[0, :3] = torch.tensor([1, 2, 3]) % recommender.num_items
    items = torch.arange(1, example_candidates + 1) % recommender.num_items
    params = example_params(recommender)
    candidates = torch.export.Dim(CANDIDATES_DIM, min=1, max=1 << 24)
    # torch.export first: torch.onnx.export's own dynamic_shapes handling rejects a dict argument.
    with torch.no_grad(), _quiet_exporter():
        program = torch.export.export(
            graph, (history, items, params),
            dynamic_shapes=(None, {0: candidates}, dict.fromkeys(params)),
        )
    names = ["history", "items", *params]
    with _quiet_exporter():
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=names, output_names=["logits"],
                                         verbose=False)
    onnx_program.save(str(file))
    _name_dynamic_dim(file, 1, CANDIDATES_DIM)


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


def _name_dynamic_dim(file: Path, input_index: int, name: str) -> None:
    """torch.export names a dynamic dim `s<N>`; give the first dim of input `input_index` its name."""
    import onnx

    model = onnx.load(str(file))
    symbol = model.graph.input[input_index].type.tensor_type.shape.dim[0].dim_param
    if symbol:
        for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param == symbol:
                    dim.dim_param = name
        onnx.save(model, str(file))


def verify_onnx(recommender: nn.Module, file: Path, seed: int = 0) -> float:
    """Max |logit diff| between onnxruntime and torch on random params and candidates."""
    import onnxruntime as ort

    graph = DeviceGraph(recommender).eval()
    gen = torch.Generator().manual_seed(seed)
    L, n = recommender.history_len, recommender.num_items
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    worst = 0.0
    for length, candidates in ((0, 1), (max(1, L // 2), 7), (L, 100)):
        history = torch.zeros(1, L, dtype=torch.long)
        history[0, :length] = torch.randint(1, n, (length,), generator=gen)
        items = torch.randint(1, n, (candidates,), generator=gen)
        params = {graph.inputs[name]: (t.detach() + 0.1 * torch.randn(t.shape, generator=gen)).unsqueeze(0)
                  for name, t in recommender.theta_g().items()}
        with torch.no_grad():
            expected = graph(history, items, params).numpy()
        feed = {"history": history.numpy(), "items": items.numpy(), **{k: v.numpy() for k, v in params.items()}}
        (got,) = session.run(["logits"], feed)
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def recommendation_files(config: object, recommender: nn.Module, data: str | Path | None,
                         tmp: Path) -> dict:
    """Graph, vocabulary and item embeddings of a recommendation bundle; returns its manifest facts."""
    from safetensors.numpy import save_file

    from duet.data.store import load_vocab, manifest_hash

    data = Path(data or config.data)
    if manifest_hash(data) != config.data_hash:
        raise ArtifactError(f"{data}: not the dataset this run was trained on (manifest hash differs)")
    item_raw = load_vocab(data)["item_raw"]
    export_onnx(recommender, tmp / MODEL_FILE)
    diff = verify_onnx(recommender, tmp / MODEL_FILE)
    # Only items: the user vocabulary has no business on a device.
    save_file({"item_raw": np.ascontiguousarray(item_raw, dtype=np.int64)}, str(tmp / VOCAB_FILE))
    table = recommender.item_embedding.weight.detach().float().numpy()
    save_file({"embedding": np.ascontiguousarray(table)}, str(tmp / EMBEDDING_FILE))
    return {"format": BUNDLE_FORMAT, "task": "recommendation", "num_items": config.num_items,
            "history_len": config.history_len, "feature_dim": int(table.shape[1]),
            "inputs": {"history": "history", "items": "items"}, "output": "logits",
            "verified_max_abs_diff": diff, "extra_files": [VOCAB_FILE, EMBEDDING_FILE]}


def image_files(config: object, classifier: nn.Module, tmp: Path) -> dict:
    """Graph of an image bundle; returns its manifest facts."""
    export_image_onnx(classifier, tmp / MODEL_FILE)
    diff = verify_image_onnx(classifier, tmp / MODEL_FILE)
    return {"format": IMAGE_BUNDLE_FORMAT, "task": "images", "image_shape": list(config.image_shape),
            "num_classes": config.num_classes, "feature_dim": classifier.feature_dim,
            "inputs": {"x": "x"}, "outputs": ["logits", "features"], "verified_max_abs_diff": diff,
            "extra_files": []}


def export_bundle(run: str | Path, out: str | Path, data: str | Path | None = None, overwrite: bool = False,
                  sign: SigningKey | None = None, trust: Iterable[PublicKey] = (), sequence: int | None = None,
                  expires_in_days: float | None = None) -> dict:
    """Write the device bundle of a base or DUET run into `out` (atomically); return its manifest.

    `sign`: sign the manifest with this key and list its public key, then those
    of `trust`, as the keys whose answers devices may accept (key rotation).
    `data` (recommendation): the dataset of the item vocabulary (default: the run's).
    `sequence` (default: export time in ms) and `expires_in_days`: see duet.freshness.
    """
    from safetensors.numpy import save_file

    from duet.checkpoint import load_run

    run, out = Path(run), Path(out)
    config, model, _ = load_run(run)
    device = device_model(model, config.train.method)
    spec = device.param_spec
    release = release_fields(sequence, expires_in_days)  # rollback protection (duet.freshness); checked first
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if config.task == "images":
            facts = image_files(config, device, tmp)
        else:
            facts = recommendation_files(config, device, data, tmp)
        diff = facts["verified_max_abs_diff"]
        if not diff <= EXPORT_ATOL:
            raise ArtifactError(f"{run}: exported graph differs from torch by {diff:.2e} (> {EXPORT_ATOL})")
        theta_g = {name: t.detach().float().numpy() for name, t in device.theta_g().items()}
        save_file(theta_g, str(tmp / THETA_G_FILE), metadata={"spec_hash": spec.hash})
        write_json(tmp / SPEC_FILE, {"hash": spec.hash, "params": spec.to_json()})
        names = (MODEL_FILE, THETA_G_FILE, *facts.pop("extra_files"), SPEC_FILE)
        inputs = {**facts.pop("inputs"), "params": {name: input_name(name) for name in spec.names}}
        manifest = {
            "format": facts.pop("format"),
            "model_version": model_version(run),
            **release,
            "run": str(run.resolve()),
            "method": config.train.method,
            "backbone": config.model.backbone,
            **{k: v for k, v in facts.items() if k != "verified_max_abs_diff"},
            "window_len": config.window_len,
            "spec_hash": spec.hash,
            "inputs": inputs,
            "verified_max_abs_diff": diff,
            "files": {name: sha256_file(tmp / name) for name in names},
        }
        write_json(tmp / "manifest.json", manifest)
        if sign is not None:
            sign_manifest(tmp, sign, trust)
    log.info("exported %s -> %s (version %s, max |diff| %.1e)", run, out, manifest["model_version"], diff)
    return json.loads((out / "manifest.json").read_text())
