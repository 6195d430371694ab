"""`duet simulate`: replay the test period through the real service and real device runtimes.

For N devices (users of the test split, or an image fleet's test devices):
export the bundle, start `duet serve` as a subprocess on loopback, and replay
each device's test stream. Recommendation: for each test event, upload the
event's window, receive the parameters over HTTP and score the event's
candidates with onnxruntime. Images: observe each sample of the device's stream
(from the W - 1 before its first scored sample on), and for each scored sample
refresh (every sample: the window then equals the offline one) and classify it.
With `privacy`, devices upload their window's features (computed on the device)
instead of item ids or images. The logits are then compared with the offline
DUET evaluation (torch) of the same run on the same records: in fp32 both paths
must agree within 1e-4; in fp16 the difference is what the smaller answer costs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from duet.device.policy import RequestPolicy
from duet.errors import ArtifactError, DuetError

log = logging.getLogger("duet.simulate")

FP32_TOLERANCE = 1e-4
METRIC_KS = (10,)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """`python -m duet serve` in a subprocess on a loopback port; `url` once ready.

    Used as a context manager: it waits for /readyz on entry and shuts the
    service down on exit (SIGINT, as Ctrl-C would; SIGKILL if it hangs).
    """

    def __init__(self, run: str | Path, port: int | None = None, max_batch: int = 64, max_wait_ms: float = 0.0,
                 workers: int = 1, executor: str = "inline", threads: int = 1, log_file: str | Path | None = None,
                 ready_timeout: float = 120.0, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "duet", "serve", "--run", str(run), "--host", "127.0.0.1", "--port", str(self.port),
            "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--workers", str(workers),
            "--executor", executor, "--threads", str(threads), *(extra_args or []),
        ]
        self.ready_timeout = ready_timeout
        self.env = {**os.environ, **(env or {})}
        self.log_file = Path(log_file) if log_file else None
        self.process: subprocess.Popen | None = None
        self._log_handle = None
        self.final_log = ""

    def __enter__(self) -> ServiceProcess:
        if self.log_file is None:
            self._log_handle = tempfile.TemporaryFile()
        else:
            self._log_handle = open(self.log_file, "w+b")
        self.process = subprocess.Popen(self.command, stdout=self._log_handle, stderr=subprocess.STDOUT, env=self.env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DuetError(f"`duet serve` exited with code {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + "/readyz", timeout=1.0) as response:
                    if response.status == 200:
                        return
            time.sleep(0.05)
        raise DuetError(f"`duet serve` not ready after {self.ready_timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        if self._log_handle is None or self._log_handle.closed:
            return self.final_log[-chars:]
        self._log_handle.flush()
        self._log_handle.seek(0)
        return self._log_handle.read().decode(errors="replace")[-chars:].strip()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGINT) -> int | None:
        """Graceful shutdown (idempotent); returns the exit code."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log_handle is not None and not self._log_handle.closed:
            self.final_log = self.log_tail()
            self._log_handle.close()
        return None if self.process is None else self.process.returncode


def choose_devices(users: np.ndarray, devices: int) -> np.ndarray:
    """The first `devices` users of the test split (by internal id): reproducible."""
    return np.unique(users)[:devices]


Outcome = tuple[list[str], list[float], int, int, int]  # sources, adaptation s, answer bytes, requests, bytes


def replay_device(runtime: object, split: object, events: np.ndarray, records_of: dict[int, np.ndarray],
                  logits: np.ndarray) -> Outcome:
    """One device: for each event, refresh with its window (the runtime's policy decides
    whether it asks) and score its candidates into `logits`."""
    sources, adaptation, answer_bytes = [], [], 0
    for event in events:
        source = runtime.refresh(split.window[event])
        sources.append(source)
        if source == "service":
            adaptation.append(runtime.adaptation_seconds)
            answer_bytes = runtime.last_answer_bytes
        records = records_of[int(event)]
        logits[records] = runtime.score(split.history[event], split.item[records])
    return sources, adaptation, answer_bytes, runtime.requests, runtime.bytes_received


@contextlib.contextmanager
def fleet_service(run: Path, bundle: str | Path | None, data: Path | None, max_batch: int,
                  max_wait_ms: float) -> Iterator[tuple[object, ServiceProcess]]:
    """The run's verified device bundle (exported into a temporary folder if not given) and its service."""
    from duet.checkpoint import model_version
    from duet.device import load_bundle
    from duet.export import export_bundle

    with contextlib.ExitStack() as stack:
        if bundle is None:
            bundle = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="duet-sim-"))) / "bundle"
        bundle = Path(bundle)
        if not (bundle / "manifest.json").is_file():
            export_bundle(run, bundle, data=data)
        device_bundle = load_bundle(bundle)
        if device_bundle.version != model_version(run):
            raise ArtifactError(f"{bundle}: bundle of version {device_bundle.version}, the run is {model_version(run)}")
        service = stack.enter_context(ServiceProcess(run, max_batch=max_batch, max_wait_ms=max_wait_ms))
        log.info("service ready at %s", service.url)
        yield device_bundle, service


def stop_cleanly(service: ServiceProcess) -> int:
    exit_code = service.stop()
    if exit_code != 0:
        raise DuetError(f"`duet serve` did not shut down cleanly (exit code {exit_code}): {service.log_tail()}")
    return exit_code


def simulate(run: str | Path, data: str | Path | None = None, devices: int = 100, dtype: str = "fp32",
             bundle: str | Path | None = None, concurrency: int = 16, max_batch: int = 64,
             max_wait_ms: float = 0.0, privacy: bool = False, policy: RequestPolicy | None = None) -> dict:
    """Replay `devices` devices' test streams through service + runtime; compare with offline torch.

    With a request policy other than `always` a device scores some events with parameters
    made for an earlier window, so its logits differ from the offline evaluation by design:
    the difference is then reported, not checked."""
    from duet.checkpoint import load_run

    if dtype not in ("fp32", "fp16"):
        raise DuetError(f"--dtype must be fp32 or fp16, got {dtype!r}")
    if devices < 1:
        raise DuetError(f"--devices must be at least 1, got {devices}")
    run = Path(run)
    config, model, _ = load_run(run)
    if config.train.method != "duet":
        raise DuetError(f"{run}: simulate needs a DUET run (method duet), got {config.train.method!r}")
    policy = policy or RequestPolicy()
    checked = dtype == "fp32" and policy.kind == "always"
    if config.task == "images":
        if policy.kind != "always":
            raise DuetError(f"--policy {policy.kind} is for recommendation runs; an image device asks on every sample")
        results = simulate_images(run, config, model, data, devices, dtype, bundle, concurrency, max_batch,
                                  max_wait_ms, privacy)
    else:
        results = simulate_recommendation(run, config, model, data, devices, dtype, bundle, concurrency, max_batch,
                                          max_wait_ms, privacy, policy)
    sim, offline = results["metrics"]["device"], results["metrics"]["offline"]
    results["metrics"]["diff"] = {k: sim[k] - offline[k] for k in sim if isinstance(sim[k], float)}
    diff = results["max_abs_logit_diff"]
    adaptation = np.array(results.pop("adaptation")) * 1e3
    return {
        "run": str(run), "task": config.task, "privacy": privacy, "policy": policy.name, **results, "dtype": dtype,
        "concurrency": concurrency, "max_batch": max_batch,
        "requests_per_device": results["requests"] / results["devices"],
        "bytes_per_device": results["bytes_received"] / results["devices"],
        "adaptation_ms": {"p50": _pct(adaptation, 50), "p99": _pct(adaptation, 99), "mean": _mean(adaptation)},
        "tolerance": FP32_TOLERANCE if checked else None,
        "agree": bool(diff <= FP32_TOLERANCE) if checked else None,
    }


def replay_fleet(one: Callable[[int], Outcome], devices: list[int], concurrency: int) -> dict:
    """Run `one(device)` for every device on `concurrency` threads; the shared part of the report."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(one, devices))
    wall = time.perf_counter() - started
    requests = int(sum(o[3] for o in outcomes))
    return {"wall_seconds": wall, "sources": dict(Counter(s for o in outcomes for s in o[0])),
            "adaptation": [a for o in outcomes for a in o[1]],
            "answer_bytes": max((o[2] for o in outcomes), default=0), "requests": requests,
            # of the events a device scores with a non-empty window (where `always` asks)
            "request_fraction": requests / max(sum(s != "global" for o in outcomes for s in o[0]), 1),
            "bytes_received": int(sum(o[4] for o in outcomes))}


def simulate_recommendation(run: Path, config: object, model: object, data: str | Path | None, devices: int,
                            dtype: str, bundle: str | Path | None, concurrency: int, max_batch: int,
                            max_wait_ms: float, privacy: bool, policy: RequestPolicy) -> dict:
    from duet.device import DeviceRuntime
    from duet.metrics import compute_metrics
    from duet.tasks.recommendation.data.store import load_dataset
    from duet.tasks.recommendation.evaluate import predict

    dataset = load_dataset(data or config.data, splits=("test",))
    if dataset.hash != config.data_hash:
        raise ArtifactError(f"{dataset.path}: not the dataset this run was trained on (manifest hash differs)")
    test = dataset["test"]
    chosen = choose_devices(test.user, devices)
    subset = test.select(np.isin(test.user, chosen))
    offline = predict(model, subset, config.train.eval_batch_size)

    order = np.argsort(subset.line, kind="stable")  # chronological record order
    records_of: dict[int, np.ndarray] = {}
    for record in order:
        records_of.setdefault(int(subset.event[record]), []).append(record)
    records_of = {e: np.array(r) for e, r in records_of.items()}
    first_line = {e: subset.line[r].min() for e, r in records_of.items()}
    event_user = {e: int(subset.user[r[0]]) for e, r in records_of.items()}
    events_of: dict[int, list[int]] = {}
    for event in sorted(records_of, key=first_line.get):
        events_of.setdefault(event_user[event], []).append(event)
    device_logits = np.full(len(subset), np.nan, dtype=np.float32)

    with fleet_service(run, bundle, dataset.path, max_batch, max_wait_ms) as (device_bundle, service):
        def one(user: int) -> Outcome:
            runtime = DeviceRuntime(device_bundle, service.url, f"user-{user}", dtype=dtype, timeout=10.0,
                                    privacy=privacy, policy=policy)
            return replay_device(runtime, subset, np.array(events_of[user]), records_of, device_logits)

        replayed = replay_fleet(one, sorted(events_of), concurrency)
        exit_code = stop_cleanly(service)

    return {
        "model_version": device_bundle.version, "devices": int(len(chosen)), "events": int(subset.num_events),
        "records": int(len(subset)), **replayed, "events_per_second": subset.num_events / replayed["wall_seconds"],
        "service_exit_code": exit_code,
        "metrics": {"device": compute_metrics(subset.label, device_logits, subset.user, ks=METRIC_KS),
                    "offline": compute_metrics(subset.label, offline, subset.user, ks=METRIC_KS)},
        "max_abs_logit_diff": float(np.abs(device_logits - offline).max()),
    }


def replay_image_device(runtime: object, data: object, stream: np.ndarray, scored: dict[int, int],
                        logits: np.ndarray) -> Outcome:
    """One image device: observe each row of its stream; for a scored row, refresh, then classify it."""
    sources, adaptation, answer_bytes = [], [], 0
    for row in stream:
        runtime.observe(data.x[row])
        if int(row) not in scored:
            continue
        source = runtime.refresh()
        sources.append(source)
        if source == "service":
            adaptation.append(runtime.adaptation_seconds)
            answer_bytes = runtime.last_answer_bytes
        logits[scored[int(row)]] = runtime.classify(data.x[row])[0]
    return sources, adaptation, answer_bytes, runtime.requests, runtime.bytes_received


def simulate_images(run: Path, config: object, model: object, data: str | Path | None, devices: int,
                    dtype: str, bundle: str | Path | None, concurrency: int, max_batch: int,
                    max_wait_ms: float, privacy: bool) -> dict:
    from duet.device import ImageRuntime
    from duet.tasks.images.metrics import classification_metrics
    from duet.tasks.images.store import load_images
    from duet.tasks.images.training import device_groups, predict_images

    dataset = load_images(data or config.data, ("test",))
    if dataset.hash != config.data_hash:
        raise ArtifactError(f"{dataset.path}: not the dataset this run was trained on (manifest hash differs)")
    test = dataset["test"]
    chosen = choose_devices(test.device, devices)
    keep = np.isin(test.device, chosen)
    subset = test.select(keep)
    offline = predict_images(model, subset, config.train.eval_batch_size, config.window_len)
    scored_of: dict[int, dict[int, int]] = {}  # device -> {sample row: its index in subset}
    for index, (row, device) in enumerate(zip(subset.rows.tolist(), subset.device.tolist(), strict=True)):
        scored_of.setdefault(device, {})[row] = index
    device_logits = np.full(offline.shape, np.nan, dtype=np.float32)

    with fleet_service(run, bundle, None, max_batch, max_wait_ms) as (device_bundle, service):
        def one(device: int) -> Outcome:
            runtime = ImageRuntime(device_bundle, service.url, f"device-{device}", dtype=dtype, timeout=10.0,
                                   privacy=privacy)
            rows = sorted(scored_of[device])
            # From the W - 1 samples before the first scored one (its window), in stream order.
            start = max(int(dataset.first_row[rows[0]]), rows[0] - config.window_len + 1)
            return replay_image_device(runtime, dataset, np.arange(start, rows[-1] + 1), scored_of[device],
                                       device_logits)

        replayed = replay_fleet(one, sorted(scored_of), concurrency)
        exit_code = stop_cleanly(service)

    groups = device_groups(subset)
    return {
        "model_version": device_bundle.version, "devices": int(len(chosen)), "events": int(len(subset)),
        "records": int(len(subset)), **replayed, "events_per_second": len(subset) / replayed["wall_seconds"],
        "service_exit_code": exit_code,
        "metrics": {"device": classification_metrics(subset.y, device_logits, groups),
                    "offline": classification_metrics(subset.y, offline, groups)},
        "max_abs_logit_diff": float(np.abs(device_logits - offline).max()),
    }


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None

