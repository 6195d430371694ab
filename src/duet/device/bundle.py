"""A device bundle on disk (written by `duet export`), verified and ready to score.

numpy + onnxruntime + safetensors only: no torch on the device.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from duet.errors import ArtifactError
from duet.manifest import read_manifest, verify_all
from duet.spec import ParamSpec

BUNDLE_FORMAT = "duet-bundle/1"
PAD = 0


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
    """

    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        self.path = Path(path)
        self.manifest = self._verified_manifest()
        spec_json = json.loads((self.path / "param_spec.json").read_text())
        self.spec = ParamSpec.from_json(spec_json["params"])
        self.spec_hash = self.spec.hash  # a property that hashes JSON: computed once
        if self.spec_hash != self.manifest["spec_hash"] or spec_json["hash"] != self.spec_hash:
            raise ArtifactError(f"{self.path}: param_spec.json does not match the manifest's spec hash")
        theta_g = load_file(str(self.path / "theta_g.safetensors"))
        self.spec.check(theta_g, batched=False)
        # Graph inputs are (1, *shape) float32; keep the fallback ready to feed.
        self.theta_g = {name: np.ascontiguousarray(theta_g[name], dtype=np.float32)[None] for name in self.spec.names}
        self.item_raw = load_file(str(self.path / "vocab.safetensors"))["item_raw"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = dict(self.manifest["inputs"]["params"])
        self._raw_to_internal: dict[int, int] | None = None

    def _verified_manifest(self) -> dict:
        try:
            manifest = read_manifest(self.path, BUNDLE_FORMAT, "duet bundle")
        except ArtifactError as exc:
            if "no manifest.json" in str(exc):
                raise ArtifactError(f"{exc}; run `duet export` first") from None
            raise
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
