"""`duet simulate`: replay the test period through the real service and real device runtimes.

For N devices (users of the test split): export the bundle, start `duet serve`
as a subprocess on loopback, and for each test event of each device upload the
event's window, receive the parameters over HTTP and score the event's
candidates with onnxruntime. The logits are then compared with the offline DUET
evaluation (torch) of the same run on the same records: in fp32 both paths must
agree within 1e-4; in fp16 the difference is what the smaller answer costs.
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


def replay_device(runtime: object, split: object, events: np.ndarray, records_of: dict[int, np.ndarray],
                  logits: np.ndarray) -> tuple[list[str], list[float], int]:
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


def simulate(run: str | Path, data: str | Path | None = None, devices: int = 100, dtype: str = "fp32",
             bundle: str | Path | None = None, concurrency: int = 16, max_batch: int = 64,
             max_wait_ms: float = 0.0, policy: RequestPolicy | None = None) -> dict:
    """Replay `devices` devices' test events through service + runtime; compare with offline torch.

    With a policy other than `always` a device scores some events with parameters made
    for an earlier window, so its logits differ from the offline evaluation by design:
    the difference is then reported, not checked."""
    from duet.checkpoint import load_run
    from duet.data.store import load_dataset
    from duet.device import Bundle, DeviceRuntime
    from duet.export import export_bundle, model_version
    from duet.metrics import compute_metrics
    from duet.training.evaluate import predict

    if dtype not in ("fp32", "fp16"):
        raise DuetError(f"--dtype must be fp32 or fp16, got {dtype!r}")
    if devices < 1:
        raise DuetError(f"--devices must be at least 1, got {devices}")
    policy = policy or RequestPolicy()
    checked = dtype == "fp32" and policy.kind == "always"
    run = Path(run)
    config, model, _ = load_run(run)
    if config.train.method != "duet":
        raise DuetError(f"{run}: simulate needs a DUET run (method duet), got {config.train.method!r}")
    dataset = load_dataset(data or config.data, splits=("test",))
    if dataset.hash != config.data_hash:
        raise ArtifactError(f"{dataset.path}: not the dataset this run was trained on (manifest hash differs)")
    test = dataset["test"]
    chosen = choose_devices(test.user, devices)
    subset = test.select(np.isin(test.user, chosen))

    offline = predict(model, subset, config.train.eval_batch_size)
    with contextlib.ExitStack() as stack:
        if bundle is None:
            bundle = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="duet-sim-"))) / "bundle"
        bundle = Path(bundle)
        if not (bundle / "manifest.json").is_file():
            export_bundle(run, bundle, data=dataset.path)
        device_bundle = Bundle(bundle)
        if device_bundle.version != model_version(run):
            raise ArtifactError(f"{bundle}: bundle of version {device_bundle.version}, the run is {model_version(run)}")
        service = stack.enter_context(ServiceProcess(run, max_batch=max_batch, max_wait_ms=max_wait_ms))
        log.info("service ready at %s; replaying %d devices", service.url, len(chosen))

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

        if policy.kind == "drift" and device_bundle.item_embedding is None:
            raise DuetError(f"{bundle}: exported before the drift policy (no item embeddings); export it again")

        def one(user: int) -> tuple[list[str], list[float], int, int, int]:
            runtime = DeviceRuntime(device_bundle, service.url, f"user-{user}", dtype=dtype, timeout=10.0,
                                    policy=policy)
            return replay_device(runtime, subset, np.array(events_of[user]), records_of, device_logits)

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            outcomes = list(pool.map(one, sorted(events_of)))
        wall = time.perf_counter() - started
        exit_code = service.stop()
        if exit_code != 0:
            raise DuetError(f"`duet serve` did not shut down cleanly (exit code {exit_code}): {service.log_tail()}")

    sources = Counter(s for o in outcomes for s in o[0])
    adaptation = np.array([a for o in outcomes for a in o[1]]) * 1e3
    metrics_device = compute_metrics(subset.label, device_logits, subset.user, ks=METRIC_KS)
    metrics_offline = compute_metrics(subset.label, offline, subset.user, ks=METRIC_KS)
    max_diff = float(np.abs(device_logits - offline).max())
    requests = int(sum(o[3] for o in outcomes))
    return {
        "run": str(run),
        "model_version": device_bundle.version,
        "dtype": dtype,
        "policy": policy.name,
        "requests": requests,
        "requests_per_device": requests / len(chosen),
        # of the events a device scores with a non-empty window (where `always` asks)
        "request_fraction": requests / max(sum(s != "global" for o in outcomes for s in o[0]), 1),
        "bytes_received": int(sum(o[4] for o in outcomes)),
        "bytes_per_device": sum(o[4] for o in outcomes) / len(chosen),
        "devices": int(len(chosen)),
        "events": int(subset.num_events),
        "records": int(len(subset)),
        "wall_seconds": wall,
        "events_per_second": subset.num_events / wall,
        "concurrency": concurrency,
        "max_batch": max_batch,
        "service_exit_code": exit_code,
        "sources": dict(sources),
        "answer_bytes": max((o[2] for o in outcomes), default=0),
        "adaptation_ms": {"p50": _pct(adaptation, 50), "p99": _pct(adaptation, 99), "mean": _mean(adaptation)},
        "metrics": {"device": metrics_device, "offline": metrics_offline,
                    "diff": {k: metrics_device[k] - metrics_offline[k] for k in metrics_device
                             if isinstance(metrics_device[k], float)}},
        "max_abs_logit_diff": max_diff,
        "tolerance": FP32_TOLERANCE if checked else None,
        "agree": bool(max_diff <= FP32_TOLERANCE) if checked else None,
    }


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None

