"""A device bundle on disk (written by `duet export`), verified and ready to score, for any task.

numpy + onnxruntime + safetensors (+ PyNaCl for signatures) only: no torch on the device.
The manifest describes the task's graph (inputs, outputs) and raw window sample, so this
one class serves every task without knowing any.

Given trusted public keys, a bundle must be signed (`duet export --sign`) by
one of them: the signature over manifest.json is checked before anything in
the manifest is believed, then every file against the manifest's sha256.
Answers may then be signed by any of those keys or by a key the signed
manifest lists in `trusted_keys` (so the cloud can rotate its serving key by
shipping a bundle that lists the old and the new one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from duet.errors import ArtifactError
from duet.manifest import verify_all
from duet.signing import Keyring, listed_keys, verify_manifest
from duet.spec import GraphInput, ParamSpec, SampleSpec

BUNDLE_FORMAT = "duet-bundle/2"
FILES = ("model.onnx", "features.onnx", "theta_g.safetensors", "param_spec.json")
MANIFEST_KEYS = ("task", "builder", "model_version", "sample", "graph", "features", "feature_dim", "window_len",
                 "spec_hash", "files")
VOCAB_FILE = "vocab.safetensors"
PAD = 0  # a token window's padding id


class Bundle:
    """A verified bundle: manifest, ParamSpec, global head, the device graph and the features graph.

    One bundle can be shared by many runtimes (onnxruntime sessions are thread-safe).
    `trusted_keys` (a Keyring or a public key file): refuse a bundle not signed by one
    of them; None checks the sha256 of every file only (integrity, not origin).
    """

    def __init__(self, path: str | Path, threads: int = 1, trusted_keys: Keyring | str | Path | None = None):
        self.path, self.threads = Path(path), threads
        self.trusted_keys = Keyring.of(trusted_keys)
        self.manifest = self._verified_manifest()
        # Keys whose answers this device accepts: its own, plus those the signed manifest vouches for.
        self.answer_keys = None if self.trusted_keys is None else self.trusted_keys.union(
            listed_keys(self.manifest, str(self.path / "manifest.json")))
        self.spec = self._spec()
        self.spec_hash = self.spec.hash  # a property that hashes JSON: computed once
        theta_g = self._tensors("theta_g.safetensors")
        try:
            self.spec.check(theta_g, batched=False)
        except ValueError as exc:
            raise ArtifactError(f"{self.path / 'theta_g.safetensors'}: does not fit param_spec.json ({exc})") from None
        # Graph inputs are (1, *shape) float32; keep the fallback ready to feed.
        self.theta_g = {name: np.ascontiguousarray(theta_g[name], dtype=np.float32)[None] for name in self.spec.names}
        try:
            graph = self.manifest["graph"]
            self.sample = SampleSpec.from_json(self.manifest["sample"])
            self.inputs = tuple(GraphInput.from_json(i) for i in graph["inputs"])
            self.outputs = tuple(str(o) for o in graph["outputs"])
            self.input_names = {str(k): str(v) for k, v in graph["params"].items()}
            self._features_io = (str(self.manifest["features"]["input"]), str(self.manifest["features"]["output"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{self.path / 'manifest.json'}: invalid sample or graph description ({exc!r})") from None
        self._vocab = self._tensors(VOCAB_FILE) if VOCAB_FILE in self.manifest["files"] else {}
        self._raw_to_internal: dict[int, int] | None = None
        self.session = self._load_session("model.onnx")
        self.features_session = self._load_session("features.onnx")
        self._check_graph()
        self._check_features()

    # ------------------------------------------------------------ loading and checks

    def _verified_manifest(self) -> dict:
        file = self.path / "manifest.json"
        if not file.is_file():
            raise ArtifactError(f"{self.path}: not a duet bundle (no manifest.json); run `duet export` first")
        body = file.read_bytes()
        # The signature first, over the very bytes parsed below: nothing in an unverified manifest is believed.
        self.signed_by = None if self.trusted_keys is None else verify_manifest(self.path, body, self.trusted_keys)
        try:
            manifest = json.loads(body)
        except ValueError as exc:
            raise ArtifactError(f"{file}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
        found = manifest.get("format") if isinstance(manifest, dict) else None
        if found != BUNDLE_FORMAT:
            raise ArtifactError(f"{file}: bundle format {found!r}, this duet reads {BUNDLE_FORMAT!r} "
                                "(an older bundle?); re-export with `duet export`")
        missing = [key for key in MANIFEST_KEYS if key not in manifest]
        if missing:
            raise ArtifactError(f"{file}: missing {', '.join(missing)}")
        files = manifest["files"]
        unlisted = [name for name in FILES if not isinstance(files, dict) or name not in files]
        if unlisted:  # an unlisted file would be loaded unverified
            raise ArtifactError(f"{file}: does not list the sha256 of {', '.join(unlisted)}")
        verify_all(self.path, manifest)
        return manifest

    def _spec(self) -> ParamSpec:
        try:
            spec_json = json.loads((self.path / "param_spec.json").read_text())
            spec = ParamSpec.from_json(spec_json["params"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{self.path / 'param_spec.json'}: not a ParamSpec ({exc})") from None
        if spec.hash != self.manifest["spec_hash"] or spec_json.get("hash") != spec.hash:
            raise ArtifactError(f"{self.path}: param_spec.json does not match the manifest's spec hash")
        return spec

    def _tensors(self, name: str) -> dict[str, np.ndarray]:
        try:
            return load_file(str(self.path / name))
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise ArtifactError(f"{self.path / name}: not a readable safetensors file ({exc})") from None

    def _load_session(self, name: str) -> object:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(str(self.path / name), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
            raise ArtifactError(f"{self.path / name}: not a loadable ONNX graph "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None

    def _check_graph(self) -> None:
        """The graph's inputs and outputs are the manifest's: task inputs with their shapes, then the head's."""
        inputs = {i.name: list(i.shape) for i in self.session.get_inputs()}
        if set(self.input_names) != set(self.spec.names):
            raise ArtifactError(f"{self.path / 'manifest.json'}: input names do not cover param_spec.json")
        for name, shape in self.spec.entries:
            got = inputs.get(self.input_names[name])
            if got is None or got != [1, *shape]:
                raise ArtifactError(f"{self.path / 'model.onnx'}: input for {name!r} is {got}, the spec says "
                                    f"{[1, *shape]} (graph and param_spec.json are from different heads)")
        expected = {i.name for i in self.inputs} | set(self.input_names.values())
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != expected or outputs != list(self.outputs) or not self.outputs:
            raise ArtifactError(f"{self.path / 'model.onnx'}: inputs {sorted(inputs)} and outputs {outputs} do not "
                                "match the manifest's graph")
        for graph_input in self.inputs:
            if not _fits(inputs[graph_input.name], graph_input.shape):
                raise ArtifactError(f"{self.path / 'model.onnx'}: input {graph_input.name!r} is "
                                    f"{inputs[graph_input.name]}, the manifest says {list(graph_input.shape)}")

    def _check_features(self) -> None:
        given, outputs = self.features_session.get_inputs(), self.features_session.get_outputs()
        name, output = self._features_io
        if ([i.name for i in given] != [name] or not _fits(given[0].shape, (None, *self.sample.shape))
                or [o.name for o in outputs] != [output] or list(outputs[0].shape)[1:] != [self.feature_dim]):
            raise ArtifactError(f"{self.path / 'features.onnx'}: does not map {list(self.sample.shape)} samples "
                                f"to {self.feature_dim} features as the manifest says")

    # ------------------------------------------------------------ what the manifest says

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def window_len(self) -> int:
        return int(self.manifest["window_len"])

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["feature_dim"])

    @property
    def facts(self) -> dict:
        return dict(self.manifest.get("facts") or {})

    # ------------------------------------------------------------ running

    def encode(self, name: str, value: object) -> np.ndarray:
        """A value for graph input `name`, in any layout -> its dtype and shape (sequences padded)."""
        for graph_input in self.inputs:
            if graph_input.name == name:
                return graph_input.encode(value)
        raise ValueError(f"the graph has no input {name!r} (inputs: {', '.join(i.name for i in self.inputs)})")

    def named(self, args: tuple, inputs: dict[str, object]) -> dict[str, object]:
        """Positional values (graph input order) and named ones -> {input name: value}."""
        if len(args) > len(self.inputs):
            raise ValueError(f"{len(args)} values for {len(self.inputs)} graph inputs")
        named = {i.name: value for i, value in zip(self.inputs, args, strict=False)}
        twice = sorted(set(named) & set(inputs))
        if twice:
            raise ValueError(f"graph inputs given twice: {', '.join(twice)}")
        return {**named, **inputs}

    def run(self, inputs: dict[str, object], params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph on `inputs` {graph input: value} with head `params` {name: (1, *shape)} -> {output: array}."""
        wanted = {i.name for i in self.inputs}
        if set(inputs) != wanted:
            raise ValueError(f"graph inputs {sorted(wanted)} expected, got {sorted(inputs)}")
        feed = {i.name: i.encode(inputs[i.name]) for i in self.inputs}
        feed.update({self.input_names[name]: value for name, value in params.items()})
        return dict(zip(self.outputs, self.session.run(list(self.outputs), feed), strict=True))

    def features(self, samples: object) -> np.ndarray:
        """Raw window samples -> their features (n, D): what privacy mode uploads instead of the samples."""
        rows = self.sample.rows(samples)
        name, output = self._features_io
        return self.features_session.run([output], {name: rows})[0]

    def internal_ids(self, raw_ids: object) -> np.ndarray:
        """Raw ids -> internal ids (unknown -> 0, padding), for a bundle that ships `item_raw` in its vocabulary."""
        if "item_raw" not in self._vocab:
            raise ValueError(f"{self.path}: this bundle has no id vocabulary ({VOCAB_FILE} with item_raw)")
        if self._raw_to_internal is None:
            self._raw_to_internal = {int(raw): i for i, raw in enumerate(self._vocab["item_raw"]) if i != PAD}
        return np.array([self._raw_to_internal.get(int(r), PAD) for r in np.asarray(raw_ids).reshape(-1)],
                        dtype=np.int64)

    @property
    def item_raw(self) -> np.ndarray:
        """The raw id of each internal id (0 = padding), for a bundle with a vocabulary."""
        if "item_raw" not in self._vocab:
            raise ValueError(f"{self.path}: this bundle has no id vocabulary ({VOCAB_FILE} with item_raw)")
        return self._vocab["item_raw"]


def _fits(got: list, declared: tuple) -> bool:
    """An ONNX input shape (ints, or names for dynamic dims) against a declared one (None: dynamic)."""
    got = list(got)
    return len(got) == len(declared) and all(
        not isinstance(g, int) if d is None else g == d for g, d in zip(got, declared, strict=True))


def load_bundle(path: str | Path, threads: int = 1, trusted_keys: Keyring | str | Path | None = None) -> Bundle:
    """The bundle at `path`, fully verified."""
    return Bundle(path, threads=threads, trusted_keys=trusted_keys)
