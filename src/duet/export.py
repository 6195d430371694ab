"""`duet export`: the device bundle, the static part plus the dynamic head as one ONNX graph.

A bundle directory holds:

    model.onnx             static part + dynamic head; the head parameters are graph inputs
    theta_g.safetensors    the global head (the device's fallback), spec names, unbatched shapes
    vocab.safetensors      `item_raw`: the raw item id of each internal id (0 = padding -> -1);
                           `item_embedding` (num_items, D): the static part's item embedding
    param_spec.json        the head's ParamSpec and its hash
    manifest.json          format, model version, input names, shapes and the sha256 of every file;
                           signed: also `trusted_keys`, the public keys whose answers devices accept
    manifest.sig           signed bundles only (`--sign`): Ed25519 signature over manifest.json's bytes

Graph inputs: `history` (1, L) int64 (oldest first, left-aligned, 0 = padding),
`items` (C,) int64 with C dynamic, and one float32 input of shape (1, *shape) per
head parameter, named after the spec name with dots replaced (the manifest records
the mapping). Output: `logits` (C,). The static weights live inside the graph.
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
from duet.signing import PublicKey, SigningKey, sign_manifest

log = logging.getLogger("duet.export")

BUNDLE_FORMAT = "duet-bundle/1"
MODEL_FILE = "model.onnx"
THETA_G_FILE = "theta_g.safetensors"
VOCAB_FILE = "vocab.safetensors"
SPEC_FILE = "param_spec.json"
CANDIDATES_DIM = "candidates"
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


class DeviceGraph(nn.Module):
    """What the device runs: one history, C candidates, one head given as inputs."""

    def __init__(self, recommender: nn.Module):
        super().__init__()
        self.recommender = recommender
        self.names = recommender.param_spec.names
        self.inputs = {name: input_name(name) for name in self.names}

    def forward(self, history: Tensor, items: Tensor, params: dict[str, Tensor]) -> Tensor:
        """history (1, L), items (C,), params {input name: (1, *shape)} -> logits (C,)."""
        inverse = torch.zeros_like(items)  # every candidate belongs to the one event
        return self.recommender(history, items, inverse, {n: params[self.inputs[n]] for n in self.names})


def device_recommender(model: nn.Module, method: str) -> nn.Module:
    """The model a device runs: a DUET run's recommender, or a base run itself."""
    if method == "duet":
        return model.recommender
    if method == "base":
        return model
    raise ArtifactError(f"cannot export a {method!r} run: export needs a base or DUET run")


def export_onnx(recommender: nn.Module, file: Path, example_candidates: int = 8) -> None:
    """Export `DeviceGraph(recommender)` with a dynamic candidate count."""
    graph = DeviceGraph(recommender).eval()
    history = torch.zeros(1, recommender.history_len, dtype=torch.long)
    history[0, :3] = torch.tensor([1, 2, 3]) % recommender.num_items
    items = torch.arange(1, example_candidates + 1) % recommender.num_items
    params = {graph.inputs[n]: t.detach().unsqueeze(0).clone() for n, t in recommender.theta_g().items()}
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
    _name_candidate_dim(file)


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


def _name_candidate_dim(file: Path) -> None:
    """torch.export names the dynamic dim `s<N>`; call it `candidates` in the graph's interface."""
    import onnx

    model = onnx.load(str(file))
    symbol = model.graph.input[1].type.tensor_type.shape.dim[0].dim_param
    if symbol:
        for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param == symbol:
                    dim.dim_param = CANDIDATES_DIM
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


def export_bundle(run: str | Path, out: str | Path, data: str | Path | None = None, overwrite: bool = False,
                  sign: SigningKey | None = None, trust: Iterable[PublicKey] = ()) -> dict:
    """Write the device bundle of a base or DUET run into `out` (atomically); return its manifest.

    `sign`: sign the manifest with this key and list its public key, then those
    of `trust`, as the keys whose answers devices may accept (key rotation).
    """
    from safetensors.numpy import save_file

    from duet.checkpoint import load_run
    from duet.data.store import load_vocab, manifest_hash

    run, out = Path(run), Path(out)
    config, model, _ = load_run(run)
    recommender = device_recommender(model, config.train.method)
    data = Path(data or config.data)
    if manifest_hash(data) != config.data_hash:
        raise ArtifactError(f"{data}: not the dataset this run was trained on (manifest hash differs)")
    item_raw = load_vocab(data)["item_raw"]
    spec = recommender.param_spec
    with atomic_dir(out, overwrite=overwrite) as tmp:
        export_onnx(recommender, tmp / MODEL_FILE)
        diff = verify_onnx(recommender, tmp / MODEL_FILE)
        if not diff <= EXPORT_ATOL:
            raise ArtifactError(f"{run}: exported graph differs from torch by {diff:.2e} (> {EXPORT_ATOL})")
        theta_g = {name: t.detach().float().numpy() for name, t in recommender.theta_g().items()}
        save_file(theta_g, str(tmp / THETA_G_FILE), metadata={"spec_hash": spec.hash})
        # Only items: the user vocabulary has no business on a device. The item embedding
        # (also inside the graph) lets a device measure how far its window moved (drift policy).
        embedding = recommender.item_embedding.weight.detach().float().numpy()
        save_file({"item_raw": np.ascontiguousarray(item_raw, dtype=np.int64),
                   "item_embedding": np.ascontiguousarray(embedding)}, str(tmp / VOCAB_FILE))
        write_json(tmp / SPEC_FILE, {"hash": spec.hash, "params": spec.to_json()})
        files = {name: sha256_file(tmp / name) for name in (MODEL_FILE, THETA_G_FILE, VOCAB_FILE, SPEC_FILE)}
        manifest = {
            "format": BUNDLE_FORMAT,
            "model_version": model_version(run),
            "run": str(run.resolve()),
            "method": config.train.method,
            "backbone": config.model.backbone,
            "num_items": config.num_items,
            "history_len": config.history_len,
            "window_len": config.window_len,
            "spec_hash": spec.hash,
            "inputs": {"history": "history", "items": "items",
                       "params": {name: input_name(name) for name in spec.names}},
            "output": "logits",
            "verified_max_abs_diff": diff,
            "files": files,
        }
        write_json(tmp / "manifest.json", manifest)
        if sign is not None:
            sign_manifest(tmp, sign, trust)
    log.info("exported %s -> %s (version %s, max |diff| %.1e)", run, out, manifest["model_version"], diff)
    return json.loads((out / "manifest.json").read_text())
