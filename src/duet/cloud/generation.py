"""The generator service: a loaded DUET run that turns windows into head parameters,
and the codecs that turn one device's parameters into an answer body.

Framework-free (no FastAPI here), so the benchmark can time generation alone.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from duet.errors import ArtifactError
from duet.generate import last_rows
from duet.spec import ParamSpec, SampleSpec

__all__ = ["DTYPES", "OCTET_STREAM", "AnswerCodec", "FlatGenerator", "GeneratorService", "last_rows", "sha256_hex"]

DTYPES = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2")}  # safetensors is little-endian
SAFETENSORS_DTYPES = {"fp32": "F32", "fp16": "F16"}
OCTET_STREAM = "application/octet-stream"


class AnswerCodec:
    """One device's flat parameters (numel,) -> a safetensors blob, with no per-answer header work.

    Every answer of a model and dtype has the same header (names, shapes, offsets,
    metadata), so it is written once, here, with sorted keys: the bytes of an
    answer depend only on the parameters (`safetensors.numpy.save` orders the
    metadata differently from call to call). Tensors are laid out in spec order,
    so an answer is that prefix plus the flat parameters' bytes.
    """

    def __init__(self, spec: ParamSpec, dtype: str, metadata: dict[str, str]):
        self.spec, self.dtype, self.np_dtype = spec, dtype, DTYPES[dtype]
        itemsize = self.np_dtype.itemsize
        header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
        offset = 0
        for (name, shape), size in zip(spec.entries, spec.sizes, strict=True):
            header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + size * itemsize]}
            offset += size * itemsize
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self.prefix = struct.pack("<Q", len(text)) + text
        self.size = len(self.prefix) + offset

    def encode(self, flat: np.ndarray) -> bytes:
        """flat (numel,) float32 in spec order -> safetensors bytes."""
        return self.prefix + flat.astype(self.np_dtype).tobytes()


class FrozenDecoder(nn.Module):
    """An SWA decoder with its mixture computed once: serving never changes the weights.

    Same two `F.linear` calls on the same mixed weights as `SWADecoder.forward`, so
    the output is bitwise identical, minus the per-forward softmax and einsums.
    """

    def __init__(self, decoder: nn.Module):
        super().__init__()
        with torch.no_grad():
            mixed = decoder.mixed()
        for name, value in zip(("w1", "b1", "w2", "b2"), mixed, strict=True):
            self.register_buffer(name, value, persistent=False)  # buffers follow `.to(device)`

    def forward(self, e: Tensor) -> Tensor:
        return F.linear(F.linear(e, self.w1, self.b1), self.w2, self.b2)


class FlatGenerator(nn.Module):
    """A DUET model's generation for serving, any task: a window (or its features) -> flat theta_d
    (E, numel) in spec order.

    The decoders' chain is folded into one matrix (`ParamGenerator.folded`: about 1.3-1.6x
    the devices/s of the frozen decoders on one core, equal to ~1e-7), chunked or not;
    low-rank runs keep the frozen decoders. Nothing here changes after loading.
    """

    def __init__(self, model: nn.Module, fold: bool = True):
        """`fold=False` keeps the frozen decoders (the benchmark's before)."""
        super().__init__()
        self.model, self.generator = model, model.generator
        self.names = model.device_model.param_spec.names
        theta_g = model.device_model.theta_g()
        constant = None if model.cfg.mode == "paper" else torch.cat([theta_g[n].detach().reshape(-1) for n in self.names])
        folded = self.generator.folded(constant) if fold else None
        self.folded = folded is not None
        if folded is None:
            for i, decoder in enumerate(self.generator.decoders):
                self.generator.decoders[i] = FrozenDecoder(decoder)
            if self.generator.chunk_decoder is not None:
                self.generator.chunk_decoder = FrozenDecoder(self.generator.chunk_decoder)
        else:
            self.register_buffer("weight", folded[0], persistent=False)
            self.register_buffer("bias", folded[1], persistent=False)

    def from_features(self, features: Tensor, mask: Tensor) -> Tensor:
        """features (E, W, D), mask (E, W) -> (E, numel): privacy mode, and the tail of every path."""
        if not self.folded:
            params = self.model.generate_from_features(features, mask)
            return torch.cat([params[name].reshape(features.shape[0], -1) for name in self.names], dim=1)
        return F.linear(self.generator.encoder(features, mask), self.weight, self.bias)

    def forward(self, window: Tensor, mask: Tensor | None = None) -> Tensor:
        """A window (E, W, *sample shape) of the task's samples, with its mask (E, W) -> (E, numel)."""
        return self.from_features(*self.model.window_features(window, mask))


class GeneratorService:
    """A DUET run loaded for serving: a window (or its features) in, flat head parameters out.

    Task-agnostic: the run's task says what one sample of a window is (`Task.sample`, a
    SampleSpec), and the device model turns a window of such samples into the generator's
    features (`window_features`). Two inputs, each batched by the caller: `generate(windows,
    mask)` for raw windows (token ids or float samples alike) and `generate_features(features,
    mask)` for what a device in privacy mode uploads: its window's features, computed on the
    device. Both run the same generator on the same features.
    """

    model: FlatGenerator

    def __init__(self, run: str | Path, device: str = "cpu"):
        from duet.accel import resolve_device
        from duet.checkpoint import load_run, model_version
        from duet.task import task_of_run

        self.run = Path(run)
        self.device = resolve_device(device)
        config, model, _ = load_run(self.run)
        if config.train.method != "duet":
            raise ArtifactError(f"{self.run}: `duet serve` needs a DUET run (method duet), got {config.train.method!r}")
        self.config, self.model, self.task = config, FlatGenerator(model).to(self.device).eval(), config.task
        # The recorded builder is importable (load_run just built the model with it).
        self.sample: SampleSpec = task_of_run(config).sample(config)
        self.spec: ParamSpec = model.device_model.param_spec
        self.spec_hash = self.spec.hash  # a property that hashes JSON: not per request
        self.version = model_version(self.run)
        self.window_len, self.feature_dim = config.window_len, model.feature_dim
        metadata = {"model_version": self.version, "spec_hash": self.spec_hash}
        self.codecs = {dtype: AnswerCodec(self.spec, dtype, metadata) for dtype in DTYPES}
        self._offsets = np.concatenate([[0], np.cumsum(self.spec.sizes)])

    @property
    def raw_field(self) -> str:
        """The request field of a raw window (`window` for token ids, `samples` for float samples)."""
        return self.sample.field

    def raw_rows(self, values: object, validated: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Samples oldest first, any layout of whole samples -> the last W as (W, *shape) and their mask.

        ValueError (from the SampleSpec) for values outside the sample's range, not finite, or not
        whole samples. `validated`: the values passed this run's request model, which enforces the
        same SampleSpec (range, width, finiteness); checking again cost ~4 us a request."""
        if validated:
            rows = np.asarray(values, dtype=self.sample.dtype).reshape(-1, *self.sample.shape)
        else:
            rows = self.sample.rows(values)
        return last_rows(rows, self.window_len)

    def feature_rows(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (n, D) oldest first -> the last W as (W, D) float32, and their mask."""
        return last_rows(features, self.window_len)

    def generate(self, windows: np.ndarray, mask: np.ndarray | None = None, dtype: str = "fp32") -> np.ndarray:
        """windows (E, W, *shape) in the sample's dtype, mask (E, W) (None: every position holds a sample)
        -> flat parameters (E, numel) in spec order, float32 (or fp16)."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(windows)).to(self.device)
            m = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).to(self.device)
            return self._numpy(self.model(x, m), dtype)

    def generate_features(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """features (E, W, D) float32, mask (E, W) -> flat parameters (E, numel) (privacy mode)."""
        with torch.inference_mode():
            return self._numpy(self.model.from_features(torch.from_numpy(features).to(self.device),
                                                        torch.from_numpy(mask).to(self.device)))

    @staticmethod
    def _numpy(flat: torch.Tensor, dtype: str = "fp32") -> np.ndarray:
        return (flat.half() if dtype == "fp16" else flat).cpu().numpy()

    def json_answer(self, flat: np.ndarray, dtype: str) -> bytes:
        """The JSON form of one answer: params as nested lists in `dtype`'s precision.

        `params_sha256` is the sha256 of the parameters' little-endian bytes in spec
        order, the data section of the safetensors form of the same answer.
        """
        values = flat.astype(DTYPES[dtype])
        params = {
            name: values[start:end].reshape(shape).tolist()
            for (name, shape), start, end in zip(self.spec.entries, self._offsets[:-1], self._offsets[1:], strict=True)
        }
        return json.dumps({"model_version": self.version, "spec_hash": self.spec_hash, "dtype": dtype,
                           "params_sha256": sha256_hex(values.tobytes()), "params": params},
                          separators=(",", ":")).encode()

    def info(self) -> dict:
        """What GET /v1/models says of this run: the sample a window holds and the task's facts, not its code."""
        cfg = self.config
        return {
            "version": self.version,
            "task": self.task,
            "sample": self.sample.to_json(),
            "facts": cfg.facts,
            "feature_dim": self.feature_dim,
            "run": self.run.name,
            "method": cfg.train.method,
            "backbone": cfg.model.backbone,
            "spec_hash": self.spec_hash,
            "params": self.spec.to_json(),
            "numel": self.spec.numel,
            "dtypes": list(DTYPES),
            "answer_bytes": {dtype: codec.size for dtype, codec in self.codecs.items()},
            "window_len": cfg.window_len,
        }


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
