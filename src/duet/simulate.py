"""`duet simulate`: replay the test period through the real service and real device runtimes.

For N devices of the test split, as the run's task describes them (`Task.simulation`):
export the bundle, start `duet serve` as a subprocess on loopback, and replay each
device's steps: observe the samples it saw, refresh (upload its window, receive the
parameters over HTTP; the request policy decides whether it asks) and score the step's
inputs with onnxruntime. With `privacy`, devices upload their window's features
(computed on the device) instead of the raw samples. The logits are then compared with
the offline DUET evaluation (torch) of the same run on the same records: in fp32 both
paths must agree within 1e-4; in fp16 the difference is what the smaller answer costs.
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
from typing import TYPE_CHECKING

import numpy as np

from duet.device.policy import RequestPolicy
from duet.errors import ArtifactError, DuetError

if TYPE_CHECKING:
    from duet.device import DeviceRuntime
    from duet.task import DeviceStep

log = logging.getLogger("duet.simulate")

FP32_TOLERANCE = 1e-4


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


# sources, adaptation s, answer bytes, requests, bytes, why refreshes failed (one entry each)
Outcome = tuple[list[str], list[float], int, int, int, list[str]]


def replay_device(runtime: DeviceRuntime, steps: list[DeviceStep], logits: np.ndarray) -> Outcome:
    """One device: for each step, observe its new samples, refresh (the runtime's policy decides
    whether it asks) and score its inputs into `logits[step.records]`."""
    sources, adaptation, answer_bytes, failures = [], [], 0, []
    for step in steps:
        for sample in step.observed:
            runtime.observe(sample)
        source = runtime.refresh(step.window)
        sources.append(source)
        if source == "service":
            adaptation.append(runtime.adaptation_seconds)
            answer_bytes = runtime.last_answer_bytes
        elif runtime.last_error:
            failures.append(runtime.last_error)
        scored = runtime.score(**step.inputs)
        logits[step.records] = scored.reshape(logits[step.records].shape)
    return sources, adaptation, answer_bytes, runtime.requests, runtime.bytes_received, failures


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
        # A raw window of float samples is W rows of JSON floats (up to ~26 bytes each): the service must
        # take it (a 2.56 s sensor segment is 768 floats; the default 64 KB limit is sized for ids).
        width = max(device_bundle.sample.width, device_bundle.feature_dim)
        body = max(65_536, device_bundle.window_len * width * 26 + 4096)
        service = stack.enter_context(ServiceProcess(run, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                                     extra_args=["--max-body-bytes", str(body)]))
        log.info("service ready at %s", service.url)
        yield device_bundle, service


def stop_cleanly(service: ServiceProcess) -> int:
    exit_code = service.stop()
    if exit_code != 0:
        raise DuetError(f"`duet serve` did not shut down cleanly (exit code {exit_code}): {service.log_tail()}")
    return exit_code


def replay_fleet(one: Callable[[str], Outcome], devices: list[str], concurrency: int) -> dict:
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
            "bytes_received": int(sum(o[4] for o in outcomes)),
            "failures": dict(Counter(f for o in outcomes for f in o[5]).most_common(3))}


def simulate(run: str | Path, data: str | Path | None = None, devices: int = 100, dtype: str = "fp32",
             bundle: str | Path | None = None, concurrency: int = 16, max_batch: int = 64,
             max_wait_ms: float = 0.0, privacy: bool = False, policy: RequestPolicy | None = None) -> dict:
    """Replay `devices` devices' test streams through service + runtime; compare with offline torch.

    With a request policy other than `always` a device scores some events with parameters
    made for an earlier window, so its logits differ from the offline evaluation by design:
    the difference is then reported, not checked."""
    from duet.checkpoint import load_run
    from duet.device import DeviceRuntime
    from duet.export import device_graph_of
    from duet.task import task_of_run

    if dtype not in ("fp32", "fp16"):
        raise DuetError(f"--dtype must be fp32 or fp16, got {dtype!r}")
    if devices < 1:
        raise DuetError(f"--devices must be at least 1, got {devices}")
    run = Path(run)
    config, model, _ = load_run(run)
    if config.train.method != "duet":
        raise DuetError(f"{run}: simulate needs a DUET run (method duet), got {config.train.method!r}")
    task = task_of_run(config)
    device_graph_of(task, model.device_model, run, config.task)  # one line for a task without a device side
    policy = policy or RequestPolicy()
    checked = dtype == "fp32" and policy.kind == "always"
    sim = task.simulation(config, model, data, devices)
    offline = np.asarray(sim.offline, dtype=np.float32)
    device_logits = np.full(offline.shape, np.nan, dtype=np.float32)

    with fleet_service(run, bundle, data, max_batch, max_wait_ms) as (device_bundle, service):
        def one(device: str) -> Outcome:
            runtime = DeviceRuntime(device_bundle, service.url, device, dtype=dtype, timeout=10.0, privacy=privacy,
                                    policy=policy)
            return replay_device(runtime, sim.streams[device], device_logits)

        replayed = replay_fleet(one, sorted(sim.streams), concurrency)
        exit_code = stop_cleanly(service)

    device_metrics, offline_metrics = sim.metrics(device_logits), sim.metrics(offline)
    diff = float(np.abs(device_logits - offline).max()) if offline.size else 0.0
    adaptation = np.array(replayed.pop("adaptation")) * 1e3
    count = len(sim.streams)
    return {
        "run": str(run), "task": config.task, "privacy": privacy, "policy": policy.name,
        "model_version": device_bundle.version, "devices": count, "events": int(sim.events),
        "records": int(len(offline)), **replayed, "events_per_second": sim.events / replayed["wall_seconds"],
        "service_exit_code": exit_code,
        "metrics": {"device": device_metrics, "offline": offline_metrics,
                    "diff": {k: device_metrics[k] - offline_metrics[k] for k in device_metrics
                             if isinstance(device_metrics[k], float)}},
        "max_abs_logit_diff": diff, "dtype": dtype, "concurrency": concurrency, "max_batch": max_batch,
        "requests_per_device": replayed["requests"] / count,
        "bytes_per_device": replayed["bytes_received"] / count,
        "adaptation_ms": {"p50": _pct(adaptation, 50), "p99": _pct(adaptation, 99), "mean": _mean(adaptation)},
        "tolerance": FP32_TOLERANCE if checked else None,
        "agree": bool(diff <= FP32_TOLERANCE) if checked else None,
    }


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None
