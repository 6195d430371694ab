"""A device bundle on disk (written by `duet export`), verified and ready to score.

numpy + onnxruntime + safetensors (+ PyNaCl for signatures) only: no torch on the device.

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
from duet.manifest import parse_manifest, verify_all
from duet.signing import Keyring, listed_keys, verify_manifest
from duet.spec import ParamSpec

BUNDLE_FORMAT = "duet-bundle/1"
PAD = 0
BUNDLE_FILES = ("model.onnx", "theta_g.safetensors", "vocab.safetensors", "param_spec.json")
MANIFEST_KEYS = ("model_version", "num_items", "history_len", "window_len", "spec_hash", "inputs", "files")


def left_aligned(items: object, length: int) -> np.ndarray:
    """Item ids oldest first (padding anywhere is dropped) -> the last `length` ids, left-aligned, 0-padded."""
    ids = np.asarray(items, dtype=np.int64).reshape(-1)
    ids = ids[ids != PAD][-length:] if length else ids[:0]
    out = np.zeros(length, dtype=np.int64)
    out[: len(ids)] = ids
    return out


class Bundle:
    """The bundle's manifest, ParamSpec, global head, vocabulary and an onnxruntime session.

    One Bundle can be shared by many DeviceRuntimes (onnxruntime sessions are thread-safe).
    `trusted_keys` (a Keyring or a public key file): refuse a bundle not signed by one
    of them; None checks the sha256 of every file only (integrity, not origin).
    """

    def __init__(self, path: str | Path, threads: int = 1, trusted_keys: Keyring | str | Path | None = None):
        import onnxruntime as ort

        self.path, self.threads = Path(path), threads
        self.trusted_keys = Keyring.of(trusted_keys)
        self.manifest = self._verified_manifest()
        # Keys whose answers this device accepts: its own, plus those the signed manifest vouches for.
        self.answer_keys = None if self.trusted_keys is None else self.trusted_keys.union(
            listed_keys(self.manifest, str(self.path / "manifest.json")))
        try:
            spec_json = json.loads((self.path / "param_spec.json").read_text())
            self.spec = ParamSpec.from_json(spec_json["params"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{self.path / 'param_spec.json'}: not a ParamSpec ({exc})") from None
        self.spec_hash = self.spec.hash  # a property that hashes JSON: computed once
        if self.spec_hash != self.manifest["spec_hash"] or spec_json.get("hash") != self.spec_hash:
            raise ArtifactError(f"{self.path}: param_spec.json does not match the manifest's spec hash")
        theta_g = self._tensors("theta_g.safetensors")
        try:
            self.spec.check(theta_g, batched=False)
        except ValueError as exc:
            raise ArtifactError(f"{self.path / 'theta_g.safetensors'}: does not fit param_spec.json ({exc})") from None
        # Graph inputs are (1, *shape) float32; keep the fallback ready to feed.
        self.theta_g = {name: np.ascontiguousarray(theta_g[name], dtype=np.float32)[None] for name in self.spec.names}
        vocab = self._tensors("vocab.safetensors")
        if "item_raw" not in vocab or vocab["item_raw"].shape != (self.num_items,):
            raise ArtifactError(f"{self.path / 'vocab.safetensors'}: no item_raw of {self.num_items} ids")
        self.item_raw = vocab["item_raw"]
        # Bundles exported before the drift policy have none; only that policy needs it.
        self.item_embedding: np.ndarray | None = vocab.get("item_embedding")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path / "model.onnx"), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
            raise ArtifactError(f"{self.path / 'model.onnx'}: not a loadable ONNX graph "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        self.input_names = dict(self.manifest["inputs"]["params"])
        self._check_graph()
        self._raw_to_internal: dict[int, int] | None = None

    def _tensors(self, name: str) -> dict[str, np.ndarray]:
        try:
            return load_file(str(self.path / name))
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise ArtifactError(f"{self.path / name}: not a readable safetensors file ({exc})") from None

    def _check_graph(self) -> None:
        """The graph's inputs are the manifest's, with the spec's shapes: a head that fits the parameters."""
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        if set(self.input_names) != set(self.spec.names):
            raise ArtifactError(f"{self.path / 'manifest.json'}: input names do not cover param_spec.json")
        for name, shape in self.spec.entries:
            got = inputs.get(self.input_names[name])
            if got is None or list(got) != [1, *shape]:
                raise ArtifactError(f"{self.path / 'model.onnx'}: input for {name!r} is {got}, the spec says "
                                    f"{[1, *shape]} (graph and param_spec.json are from different heads)")
        if "history" not in inputs or list(inputs["history"]) != [1, self.history_len] or "items" not in inputs:
            raise ArtifactError(f"{self.path / 'model.onnx'}: history/items inputs do not match the manifest")

    def _verified_manifest(self) -> dict:
        file = self.path / "manifest.json"
        if not file.is_file():
            raise ArtifactError(f"{self.path}: not a duet bundle (no manifest.json); run `duet export` first")
        body = file.read_bytes()
        # The signature first, over the very bytes parsed below: nothing in an unverified manifest is believed.
        self.signed_by = None if self.trusted_keys is None else verify_manifest(self.path, body, self.trusted_keys)
        manifest = parse_manifest(body, file, BUNDLE_FORMAT)
        missing = [key for key in MANIFEST_KEYS if key not in manifest]
        if missing:
            raise ArtifactError(f"{file}: missing {', '.join(missing)}")
        files = manifest["files"]
        unlisted = [name for name in BUNDLE_FILES if not isinstance(files, dict) or name not in files]
        if unlisted:  # an unlisted file would be loaded unverified
            raise ArtifactError(f"{file}: does not list the sha256 of {', '.join(unlisted)}")
        verify_all(self.path, manifest)
        return manifest

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    @property
    def history_len(self) -> int:
        return int(self.manifest["history_len"])

    @property
    def window_len(self) -> int:
        return int(self.manifest["window_len"])

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    def internal_ids(self, raw_ids: object) -> np.ndarray:
        """Raw item ids -> internal ids (unknown items -> 0, padding)."""
        if self._raw_to_internal is None:
            self._raw_to_internal = {int(raw): i for i, raw in enumerate(self.item_raw) if i != PAD}
        return np.array([self._raw_to_internal.get(int(r), PAD) for r in np.asarray(raw_ids).reshape(-1)],
                        dtype=np.int64)

    def score(self, history: object, items: object, params: dict[str, np.ndarray]) -> np.ndarray:
        """history: item ids oldest first; items (C,); params {name: (1, *shape) float32} -> logits (C,)."""
        feed = {
            "history": left_aligned(history, self.history_len)[None],
            "items": np.ascontiguousarray(items, dtype=np.int64).reshape(-1),
        }
        for name, value in params.items():
            feed[self.input_names[name]] = value
        return self.session.run(["logits"], feed)[0]
