"""`duet compare --device-model`: a compressed device model beside the cloud model, on one dataset.

DUET's premise is a device model smaller than the cloud's. The comparison's `base` is the cloud
model (the whole history L, the default width and blocks); the device model is the same backbone
reading only the last N history items, with a smaller width or fewer blocks. The generator still
reads the dataset's window W, in the cloud, through the device model's item embedding: the window
carries what the device model cannot read. Rows added to the report:

* `device`: the compressed model alone, with its global head;
* `device-duet`: its static part with generated heads (DUET stage 2 from `device`);
* `device-global`: device-duet's static part with the global head, so that
  device-duet − device-global is what generation adds by itself.

With `film=1` the device model's blocks also get a generated per-dimension scale and shift
(FiLM, `--film`): generation inside the compressed static part, not only its head.

Each device row also records what it costs on a device: parameters, bytes of its exported ONNX
graph and its per-request scoring latency on the onnxruntime device runtime (one thread).
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from duet.config import ModelConfig, Strict
from duet.errors import DuetError

SPELLING = "history=5,dim=16,blocks=1"
KEYS = {"history": "device_history", "dim": "embed_dim", "blocks": "num_blocks",
        "film": "film"}  # spelling -> ModelConfig field
# The latency sample: enough requests for a steady median, few enough to take about a second.
REQUESTS, WARMUP = 300, 20


class CompressedDevice(Strict):
    """The device model of `--device-model`: the cloud model's backbone with these changed."""

    history: int | None = Field(None, ge=1, description="the static part reads the history's last N items")
    dim: int | None = Field(None, ge=2, description="item embedding size (the cloud model's: 32)")
    blocks: int | None = Field(None, ge=1, description="SASRec blocks / GRU layers (the cloud model's: 2)")
    film: bool = Field(False, description="generate FiLM inside the device model too (spelled film=1)")

    @model_validator(mode="after")
    def _something_smaller(self) -> CompressedDevice:
        if self.history is None and self.dim is None and self.blocks is None:
            raise ValueError(f"give at least one of history, dim, blocks (e.g. {SPELLING})")
        return self

    @property
    def name(self) -> str:
        """The spelling `parse` reads, e.g. 'history=5,dim=16' or 'history=5,film=1'."""
        return ",".join(f"{key}={int(getattr(self, key))}" for key in KEYS if getattr(self, key) not in (None, False))

    def model(self, backbone: str) -> ModelConfig:
        """The device model's config: the cloud model's (ModelConfig defaults) with these changed."""
        return ModelConfig(backbone=backbone, **{field: getattr(self, key) for key, field in KEYS.items()
                                                 if getattr(self, key) not in (None, False)})

    @classmethod
    def parse(cls, text: str) -> CompressedDevice:
        """'history=5,dim=16' -> CompressedDevice; a bad spelling is a one-line DuetError."""
        values: dict[str, int | bool] = {}
        for part in str(text).split(","):
            match = re.fullmatch(r"\s*([a-z]+)\s*=\s*(\d+)\s*", part)
            if (match is None or match[1] not in KEYS or match[1] in values
                    or (match[1] == "film" and match[2] not in ("0", "1"))):
                raise DuetError(f"--device-model: {text!r} is not like {SPELLING} (keys {', '.join(KEYS)}, "
                                "each once, positive integers; film=0 or 1)")
            values[match[1]] = bool(int(match[2])) if match[1] == "film" else int(match[2])
        from pydantic import ValidationError

        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = f"{err['loc'][0]}: " if err["loc"] else ""
            raise DuetError(f"--device-model: {where}{err['msg'].removeprefix('Value error, ')}") from None


def device_spelling(config: dict) -> str:
    """The `--device-model` spelling of a saved comparison configuration's device model ('' without one)."""
    saved = config.get("device_model")
    return CompressedDevice.model_validate(saved).name if saved else ""


def device_cost(run: Path, split, requests: int = REQUESTS, warmup: int = WARMUP) -> dict[str, float]:
    """What a run's device model costs on a device: its parameters (static part and head), the bytes
    of its exported graph (file and weights), and the latency of scoring one request (an event's history and
    candidates, encoded as the runtime does) on the onnxruntime runtime with one thread, in ms
    (median and p90 over the first `requests` test events). Exports to a temporary bundle."""
    from duet.checkpoint import load_run
    from duet.device.bundle import Bundle
    from duet.export import MODEL_FILE, device_model, export_bundle

    config, model, _ = load_run(run)
    device = device_model(model, config.train.method)
    with tempfile.TemporaryDirectory() as tmp:
        export_bundle(run, Path(tmp) / "bundle")
        bundle = Bundle(Path(tmp) / "bundle", threads=1)
        onnx_bytes, weight_bytes = _onnx_bytes(Path(tmp) / "bundle" / MODEL_FILE)
        seconds = _score_latency(bundle, split, requests, warmup)
    return {"parameters": float(sum(p.numel() for p in device.parameters())),
            "head_parameters": float(device.param_spec.numel),
            "onnx_bytes": float(onnx_bytes), "onnx_weight_bytes": float(weight_bytes),
            "history_items": float(bundle.inputs[0].shape[-1]),
            "score_ms_p50": float(np.median(seconds) * 1e3), "score_ms_p90": float(np.quantile(seconds, 0.9) * 1e3),
            "requests": float(len(seconds))}


def _onnx_bytes(file: Path) -> tuple[int, int]:
    """The graph file's size and that of the weights inside it: the exporter also stores a stack
    trace per node, a constant that dwarfs a small model's weights."""
    import onnx
    from onnx import numpy_helper

    weights = sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(file)).graph.initializer)
    return file.stat().st_size, int(weights)


def _score_latency(bundle, split, requests: int, warmup: int) -> np.ndarray:
    """Seconds per request: the first `requests` events (cycled after `warmup` untimed ones)."""
    order = np.argsort(split.event, kind="stable")
    starts = np.searchsorted(split.event[order], np.arange(split.num_events + 1))
    seconds = []
    for i in range(warmup + requests):
        event = i % split.num_events
        inputs = {"history": split.history[event], "items": split.item[order[starts[event]:starts[event + 1]]]}
        started = time.perf_counter()
        bundle.run(inputs, bundle.theta_g)
        if i >= warmup:
            seconds.append(time.perf_counter() - started)
    return np.array(seconds)


def gap_closed(seeds: dict[str, dict]) -> dict:
    """The share of the device-to-cloud test-uauc gap (base − device) that each device row closes:
    per seed, their mean, and pooled (mean difference over mean gap: steadier when one seed's gap
    is small). `generation` is device-duet − device-global, generation's own share."""
    complete = {name: s for name, s in seeds.items() if all(m in s for m in ("base", "device", "device-duet",
                                                                             "device-global"))}
    if not complete:
        return {}

    def uauc(seed: dict, method: str) -> float:
        return seed[method]["test"]["uauc"]

    gap = {name: uauc(s, "base") - uauc(s, "device") for name, s in complete.items()}
    out: dict = {"gap": {"per_seed": gap, "mean": float(np.mean(list(gap.values())))}}
    for row, (a, b) in {"device-duet": ("device-duet", "device"), "device-global": ("device-global", "device"),
                        "generation": ("device-duet", "device-global")}.items():
        diff = {name: uauc(s, a) - uauc(s, b) for name, s in complete.items()}
        per_seed = {name: diff[name] / gap[name] if gap[name] else None for name in complete}
        shares = [v for v in per_seed.values() if v is not None]
        out[row] = {"per_seed": per_seed, "mean": float(np.mean(shares)) if shares else None,
                    "pooled": float(np.mean(list(diff.values())) / out["gap"]["mean"]) if out["gap"]["mean"] else None}
    return out
