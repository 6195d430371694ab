"""Benchmark of the DUET parameter service and the device runtime (loopback only).

    python benchmarks/serve.py --run RUN --out benchmarks/results/serve.json

Without --run it trains a throwaway default-architecture DUET run (SASRec, embed
32, head 32x32x2, GRU generator with SWA N_p=3) on a synthetic dataset first:
timings depend on the architecture, not on the weights.

Measures, each bounded in requests and seconds:
  * HTTP: throughput and p50/p99 latency of POST /v1/parameters at concurrency
    1, 8 and 64, with micro-batching on (max_batch 64) and off (max_batch 1),
    using an aiohttp load generator against `duet serve` started as a subprocess;
  * bytes per answer, fp32 and fp16;
  * batched generation alone (devices/s, one torch thread, batch 1024);
  * device side: onnxruntime scoring latency for 100 candidates, and the RSS of a
    process that imports only duet.device (torch blocked) and scores;
  * end-to-end adaptation (DeviceRuntime.refresh: request sent -> parameters
    applied) vs the time to fine-tune one device copy for k steps;
  * signing: answers/s at concurrency 64 with `duet serve --sign` and without
    (alternating rounds), and the adaptation p50 with and without the device
    verifying the signatures, plus signing and verifying alone.

The load generator shares the machine with the service: on a 2-core machine the
numbers are for service + client together. Other processes are not under our
control: each level records how many cores they kept busy meanwhile
(`other_cpu_cores`), since anything else running skews the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from proctree import family  # benchmarks/ is on sys.path when this script runs

TARGETS = {
    "throughput_c64_per_s": 1500,
    "p99_c64_ms": 50,
    "generation_devices_per_s": 50_000,
    "fp16_answer_bytes": 5 * 1024,
    "adaptation_p50_ms": 5,
    "signing_throughput_drop_pct": 5,
    "verification_adaptation_added_ms": 0.2,
}


# ---------------------------------------------------------------- a run to serve

def make_run(workdir: Path) -> Path:
    """A default-architecture DUET run on a synthetic dataset (1 epoch each stage)."""
    from duet.config import GeneratorConfig, ModelConfig, TrainConfig
    from duet.tasks.recommendation.data.store import Split, tail_window, write_dataset
    from duet.training.loop import run_config_for, train

    rng = np.random.default_rng(0)
    num_items, users, L, W = 2000, 500, 50, 10

    def split(events: int) -> Split:
        history = rng.integers(1, num_items, (events, L))
        lengths = rng.integers(5, L + 1, events)
        history[np.arange(L)[None, :] >= lengths[:, None]] = 0
        window = tail_window(history, W)
        event = np.repeat(np.arange(events), 5)
        item = rng.integers(1, num_items, events * 5)
        label = np.zeros(events * 5, np.float32)
        label[::5] = 1
        return Split(user=(event % users).astype(np.int32), item=item, label=label, event=event,
                     line=np.arange(events * 5), history=history, window=window)

    data = workdir / "data"
    data.mkdir(parents=True)
    write_dataset(data, {"train": split(4000), "valid": split(500), "test": split(500)},
                  np.arange(num_items), np.arange(users), {"kind": "synthetic-benchmark"}, {})
    config = run_config_for(data, model=ModelConfig(), generator=GeneratorConfig(),
                            train=TrainConfig(method="duet", epochs=1))
    train(config, workdir / "run", progress=False)
    return workdir / "run"


# ---------------------------------------------------------------- HTTP load

async def _load(url: str, concurrency: int, body: bytes, max_requests: int, seconds: float,
                warmup: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(deadline: float, budget: list[int], record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                if record:
                    latencies.append(time.perf_counter() - started)
                    errors += not ok

        await asyncio.gather(*(worker(time.perf_counter() + warmup, [10**9], False) for _ in range(concurrency)))
        budget = [max_requests]
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds, budget, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"concurrency": concurrency, "requests": len(ms), "errors": errors, "seconds": elapsed,
            "throughput_per_s": len(ms) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def _batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the service's batch-size histogram."""
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("duet_generation_batch_size_sum") or line.startswith("duet_generation_batch_size_count"):
            name, value = line.split()
            values[name.rsplit("_", 1)[1]] = float(value)
    return values.get("sum", 0.0), values.get("count", 0.0)


def _busy_jiffies() -> int:
    """CPU time the whole machine spent busy (all processes), in clock ticks."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:9]]  # guest time is inside user already
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def _process_jiffies(pid: int) -> int:
    """utime + stime of `pid` and its direct children (uvicorn workers)."""
    return sum(int(fields[11]) + int(fields[12]) for _, fields in family(pid))


def _own_jiffies() -> float:
    """This process and its finished children."""
    times = os.times()
    return (times.user + times.system + times.children_user + times.children_system) * os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Cores kept busy by processes other than ours (and `pid`'s) during a `with` block."""

    def __init__(self, pid: int | None = None):
        self.pid, self.cores = pid, 0.0

    def _sample(self) -> tuple[int, float, int, float]:
        return (_busy_jiffies(), _own_jiffies(), _process_jiffies(self.pid) if self.pid else 0, time.perf_counter())

    def __enter__(self) -> OtherLoad:
        self.start = self._sample()
        return self

    def __exit__(self, *_: object) -> None:
        end = self._sample()
        busy, own, other_pid, wall = (b - a for a, b in zip(self.start, end, strict=True))
        self.cores = max(0.0, (busy - own - other_pid) / os.sysconf("SC_CLK_TCK") / wall)


def measured_load(service: object, concurrency: int, body: bytes, max_requests: int, seconds: float,
                  workers: int = 1) -> dict:
    """One load level against a running ServiceProcess, with its batching and CPU figures."""
    pid, tick = service.process.pid, os.sysconf("SC_CLK_TCK")
    before = _batch_stats(service.url)
    cpu = (_busy_jiffies(), _process_jiffies(pid), _own_jiffies(), time.perf_counter())
    result = asyncio.run(_load(service.url + "/v1/parameters", concurrency, body, max_requests, seconds,
                               warmup=min(1.0, seconds / 4)))
    busy, server, client = (_busy_jiffies() - cpu[0], _process_jiffies(pid) - cpu[1], _own_jiffies() - cpu[2])
    wall = time.perf_counter() - cpu[3]
    after = _batch_stats(service.url)
    batches = after[1] - before[1]
    answers = after[0] - before[0]  # warm-up included, like the CPU times
    result.update(
        mean_batch=answers / batches if batches and workers == 1 else None,
        server_cpu_us_per_answer=server / tick / answers * 1e6 if workers == 1 and answers else None,
        client_cpu_us_per_answer=client / tick / answers * 1e6 if workers == 1 and answers else None,
        # Cores that other processes kept busy meanwhile: nonzero means the numbers are pessimistic.
        other_cpu_cores=max(0.0, (busy - server - client) / tick / wall),
    )
    return result


def bench_http(run: Path, levels: list[int], batching: dict[str, int], seconds: float, max_requests: int,
               window_len: int, workers: int, executor: str, max_wait_ms: float) -> list[dict]:
    from duet.simulate import ServiceProcess

    body = request_body(window_len)
    rows = []
    for label, max_batch in batching.items():
        with ServiceProcess(run, max_batch=max_batch, max_wait_ms=max_wait_ms, workers=workers,
                            executor=executor) as service:
            for concurrency in levels:
                result = measured_load(service, concurrency, body, max_requests, seconds, workers)
                result.update(batching=label, max_batch=max_batch, workers=workers, executor=executor,
                              max_wait_ms=max_wait_ms)
                rows.append(result)
                print(f"  {label:<12} c={concurrency:<3} {_level_line(result)}", flush=True)
    return rows


def request_body(window_len: int) -> bytes:
    return json.dumps({"device_id": "bench", "window": list(range(1, window_len + 1)), "dtype": "fp16"}).encode()


def _level_line(r: dict) -> str:
    return (f"{r['throughput_per_s']:8,.0f} answers/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
            f"batch {r['mean_batch'] or 0:5.1f}  server {r['server_cpu_us_per_answer'] or 0:4.0f} us/answer  "
            f"(others used {r['other_cpu_cores']:.2f} cores)")


def answer_sizes(run: Path) -> dict:
    from duet.cloud.generation import GeneratorService

    service = GeneratorService(run)
    return {dtype: codec.size for dtype, codec in service.codecs.items()}


# ---------------------------------------------------------------- generation alone

def bench_generation(run: Path, batch: int, seconds: float) -> dict:
    import torch

    from duet.cloud.generation import GeneratorService

    torch.set_num_threads(1)
    service = GeneratorService(run)
    rng = np.random.default_rng(0)
    sample, W = service.sample, service.window_len
    if sample.is_token:
        windows = rng.integers(sample.low, sample.high + 1, (batch, W)).astype(np.int64)
    else:
        windows = rng.random((batch, W, *sample.shape), dtype=np.float32)
    mask = np.ones((batch, W), dtype=bool)
    mask[::4, W // 2 :] = False  # some short windows
    windows[~mask] = 0
    for _ in range(3):
        service.generate(windows, mask)
    times = []
    deadline = time.perf_counter() + seconds
    with OtherLoad() as others:
        while time.perf_counter() < deadline or len(times) < 5:
            started = time.perf_counter()
            service.generate(windows, mask)
            times.append(time.perf_counter() - started)
    best, median = min(times), float(np.median(times))
    cfg = service.config
    return {"batch": batch, "threads": 1, "forwards": len(times), "median_ms": median * 1e3,
            "devices_per_s_median": batch / median, "devices_per_s_best": batch / best,
            "head": service.spec.to_json(), "generator": cfg.generator.model_dump(),
            "backbone": cfg.model.backbone, "embed_dim": cfg.model.embed_dim, "other_cpu_cores": others.cores}


# ---------------------------------------------------------------- device side

DEVICE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    sys.modules["torch"] = None  # the device must not need torch
    import numpy as np
    from duet.device import Bundle
    bundle = Bundle(sys.argv[1], trusted_keys=sys.argv[3] if len(sys.argv) > 3 else None)
    rng = np.random.default_rng(0)
    num_items = bundle.facts["num_items"]
    history = rng.integers(1, num_items, bundle.facts["history_len"])
    items = rng.integers(1, num_items, 100)
    feed = {"history": bundle.encode("history", history), "items": bundle.encode("items", items)}
    for _ in range(50):
        bundle.run(feed, bundle.theta_g)
    times = []
    for _ in range(int(sys.argv[2])):
        started = time.perf_counter()
        bundle.run(feed, bundle.theta_g)
        times.append(time.perf_counter() - started)
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    kb = lambda key: int(status[key].split()[0])
    ms = np.array(times) * 1e3
    print(json.dumps({"candidates": 100, "runs": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                      "p99_ms": float(np.percentile(ms, 99)), "rss_mb": kb("VmRSS") / 1024,
                      "peak_rss_mb": kb("VmHWM") / 1024,
                      "torch_loaded": any(m.startswith("torch") and sys.modules[m] is not None for m in sys.modules)}))
""")


def bench_device(bundle: Path, runs: int, python: str | Path = sys.executable, public_key: Path | None = None,
                 env: dict[str, str] | None = None) -> dict:
    """Scoring latency and RSS of a process with only duet.device (in `python`'s environment)."""
    args = [str(python), "-c", DEVICE_SCRIPT, str(bundle), str(runs), *([str(public_key)] if public_key else [])]
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_adaptation(run: Path, bundle: Path, requests: int, max_wait_ms: float, executor: str) -> dict:
    """DeviceRuntime.refresh() one at a time: request sent -> parameters applied (and then a score)."""
    from duet.device import Bundle, DeviceRuntime
    from duet.simulate import ServiceProcess

    device_bundle = Bundle(bundle)
    rng = np.random.default_rng(1)
    results = {}
    with ServiceProcess(run, max_batch=64, max_wait_ms=max_wait_ms, executor=executor) as service, \
            OtherLoad(service.process.pid) as others:
        for dtype in ("fp32", "fp16"):
            runtime = DeviceRuntime(device_bundle, service.url, "bench-device", dtype=dtype)
            times = []
            for i in range(requests + 20):
                window = rng.integers(1, device_bundle.facts["num_items"], device_bundle.window_len)
                if runtime.refresh(window) != "service":
                    raise RuntimeError(f"refresh failed: {runtime.last_error}")
                if i >= 20:
                    times.append(runtime.adaptation_seconds)
            ms = np.array(times) * 1e3
            results[dtype] = {"requests": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                              "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
                              "answer_bytes": runtime.last_answer_bytes}
    results.update(max_wait_ms=max_wait_ms, other_cpu_cores=others.cores)
    return results


def bench_finetune(run: Path, steps: int, finetune_json: Path | None) -> dict:
    """Adapting one device by fine-tuning instead: a copy of the global model, `steps` Adam steps on its records.

    With --finetune-json (the `finetune.json` that `duet finetune --out DIR` writes) its
    per-device p50 is reported; otherwise `finetune_device` is timed here on the device with
    the most train records, for the head only (the brief's figure) and for the whole model.
    """
    if finetune_json is not None:
        summary = json.loads(finetune_json.read_text())
        return {"source": str(finetune_json), "median_ms": summary["seconds_per_device"]["p50"] * 1e3,
                "devices": summary["devices"], "config": summary.get("config")}
    import torch

    from duet.checkpoint import load_run
    from duet.tasks.recommendation.data.store import load_dataset
    from duet.tasks.recommendation.finetune import FinetuneConfig, finetune_device

    torch.set_num_threads(1)
    config, model, _ = load_run(run)
    recommender = model.device_model if config.train.method == "duet" else model
    train = load_dataset(config.data, splits=("train",))["train"]
    user = int(np.bincount(train.user).argmax())
    mine = train.select(train.user == user)
    results = {"source": "measured", "steps": steps, "device_records": len(mine), "threads": 1}
    for scope in ("head", "all"):
        cfg = FinetuneConfig(base_run=str(run), data=config.data, steps=steps, scope=scope)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            finetune_device(recommender, mine, cfg)
            times.append(time.perf_counter() - started)
        results[f"{scope}_median_ms"] = float(np.median(times) * 1e3)
    results["median_ms"] = results["head_median_ms"]
    return results


# ---------------------------------------------------------------- signing

def bench_signing(run: Path, bundle: Path, workdir: Path, seconds: float, max_requests: int, rounds: int,
                  requests: int, window_len: int) -> dict:
    """Signing off vs on, in one run: answers/s at concurrency 64 (an unsigned and a `--sign` service,
    loaded in alternation, order flipped each round) and the device's end-to-end adaptation with and
    without verification (two runtimes taking turns against the signing service)."""
    import shutil
    import urllib.request

    from duet.device import Bundle, DeviceRuntime
    from duet.signing import (
        SIGNATURE_HEADER,
        Keyring,
        answer_message,
        sign_answers,
        sign_manifest,
        verify_answer,
        write_key_pair,
    )
    from duet.simulate import ServiceProcess

    private, _, key = write_key_pair(workdir / "bench-key", overwrite=True)
    signed = workdir / "signed-bundle"
    shutil.copytree(bundle, signed, dirs_exist_ok=True)
    sign_manifest(signed, key)
    body = request_body(window_len)
    http: dict[str, list[dict]] = {"off": [], "on": []}
    adaptation: dict[str, list[float]] = {"off": [], "on": []}
    with ServiceProcess(run) as plain, ServiceProcess(run, extra_args=["--sign", str(private)]) as signing:
        request = urllib.request.Request(signing.url + "/v1/parameters", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers[SIGNATURE_HEADER], "the --sign service sent no signature"
        for i in range(rounds):
            for label, service in ((("off", plain), ("on", signing)) if i % 2 == 0 else
                                   (("on", signing), ("off", plain))):
                result = measured_load(service, 64, body, max_requests, seconds)
                http[label].append(result)
                print(f"  signing {label:<3} c=64 {_level_line(result)}", flush=True)
        runtimes = {"on": DeviceRuntime(Bundle(signed, trusted_keys=Keyring([key.public_key])), signing.url, "v"),
                    "off": DeviceRuntime(Bundle(signed), signing.url, "t")}
        rng = np.random.default_rng(2)
        with OtherLoad(signing.process.pid) as others:
            for i in range(requests + 20):
                window = rng.integers(1, runtimes["on"].bundle.facts["num_items"], window_len)
                for label in ("on", "off") if i % 2 else ("off", "on"):
                    if runtimes[label].refresh(window) != "service":
                        raise RuntimeError(f"refresh failed: {runtimes[label].last_error}")
                    if i >= 20:
                        adaptation[label].append(runtimes[label].adaptation_seconds)
        assert runtimes["on"].client.fetch("v", [1]).signed_by == key.public_key.id
    batch = [answer_message("run-0123456789ab", "0123456789abcdef", f"{i:064x}", "b" * 64) for i in range(23)]
    header, ring = sign_answers(key, batch)[0], Keyring([key.public_key])
    mean = {label: {k: float(np.mean([r[k] for r in rows])) for k in
                    ("throughput_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_answer", "client_cpu_us_per_answer",
                     "other_cpu_cores")} for label, rows in http.items()}
    p50 = {label: float(np.percentile(np.array(t) * 1e3, 50)) for label, t in adaptation.items()}
    return {
        "http_c64": {"rounds": http, "mean": mean,
                     "throughput_ratio_on_off": mean["on"]["throughput_per_s"] / mean["off"]["throughput_per_s"],
                     "server_cpu_us_per_answer_added": (mean["on"]["server_cpu_us_per_answer"]
                                                        - mean["off"]["server_cpu_us_per_answer"])},
        "adaptation_fp32": {"requests": requests, "p50_ms": p50,
                            "p99_ms": {k: float(np.percentile(np.array(t) * 1e3, 99)) for k, t in adaptation.items()},
                            "p50_added_ms": p50["on"] - p50["off"], "other_cpu_cores": others.cores},
        # Per answer: one signed alone (concurrency 1), or one of a batch of 23 (about the batch at
        # concurrency 64); verifying one answer of a batch of 23 (a 5-step path).
        "alone_us": {"sign_one_answer": _per_call_us(lambda: sign_answers(key, batch[:1])),
                     "sign_per_answer_in_23": _per_call_us(lambda: sign_answers(key, batch), 300) / len(batch),
                     "verify_answer": _per_call_us(lambda: verify_answer(ring, batch[0], header, "bench"))},
    }


def _per_call_us(fn: object, calls: int = 5000) -> float:
    """Median over 5 batches of `calls` calls, in microseconds per call (one thread)."""
    for _ in range(200):
        fn()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - started) / calls * 1e6)
    return float(np.median(times))


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="DUET run to serve (default: train a throwaway one)")
    parser.add_argument("--bundle", type=Path, help="its device bundle (default: exported into a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve.json"))
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per HTTP level")
    parser.add_argument("--max-requests", type=int, default=30_000, help="request cap per HTTP level")
    parser.add_argument("--levels", default="1,8,64", help="client concurrency levels")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--executor", default="inline", choices=["inline", "thread"])
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument("--adaptation-requests", type=int, default=500)
    parser.add_argument("--finetune-steps", type=int, default=10)
    parser.add_argument("--finetune-json", type=Path, help="fine-tune timing from `duet finetune` to report instead")
    parser.add_argument("--modes", default="batching,no-batching", help="HTTP service modes to measure")
    parser.add_argument("--signing-rounds", type=int, default=3, help="alternations of unsigned/signed load")
    parser.add_argument("--only", default="http,generation,device,adaptation,signing",
                        help="comma-separated subset of http,generation,device,adaptation,signing")
    args = parser.parse_args()
    only = set(args.only.split(","))

    with tempfile.TemporaryDirectory(prefix="duet-bench-") as tmp:
        tmp = Path(tmp)
        run = args.run
        if run is None:
            print("training a throwaway default-architecture DUET run ...", flush=True)
            run = make_run(tmp)
        bundle = args.bundle
        if bundle is None and only & {"device", "adaptation", "signing"}:
            from duet.export import export_bundle

            bundle = tmp / "bundle"
            export_bundle(run, bundle)
        from duet.checkpoint import load_config

        config = load_config(run)
        results: dict = {"run": str(run), "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
                         "targets": TARGETS}
        results["answer_bytes"] = answer_sizes(run)
        print(f"answer bytes: {results['answer_bytes']}", flush=True)
        if "generation" in only:
            results["generation"] = bench_generation(run, 1024, seconds=3.0)
            g = results["generation"]
            print(f"generation alone: {g['devices_per_s_median']:,.0f} devices/s (batch 1024, 1 thread, "
                  f"median {g['median_ms']:.2f} ms; others used {g['other_cpu_cores']:.2f} cores)", flush=True)
        if "http" in only:
            levels = [int(x) for x in args.levels.split(",")]
            print("HTTP POST /v1/parameters (fp16 answers):", flush=True)
            modes = {m: {"batching": 64, "no-batching": 1}[m] for m in args.modes.split(",")}
            results["http"] = bench_http(run, levels, modes, args.seconds,
                                         args.max_requests, config.window_len, args.workers, args.executor,
                                         args.max_wait_ms)
        if "device" in only:
            results["device"] = bench_device(bundle, 2000)
            d = results["device"]
            print(f"device scoring, 100 candidates: p50 {d['p50_ms']:.3f} ms, p99 {d['p99_ms']:.3f} ms; "
                  f"RSS {d['rss_mb']:.0f} MB (peak {d['peak_rss_mb']:.0f} MB), torch loaded: {d['torch_loaded']}",
                  flush=True)
        if "adaptation" in only:
            results["adaptation"] = bench_adaptation(run, bundle, args.adaptation_requests, args.max_wait_ms,
                                                     args.executor)
            results["finetune"] = bench_finetune(run, args.finetune_steps, args.finetune_json)
            a, f = results["adaptation"], results["finetune"]
            print(f"end-to-end adaptation: fp32 p50 {a['fp32']['p50_ms']:.2f} ms (p99 {a['fp32']['p99_ms']:.2f}), "
                  f"fp16 p50 {a['fp16']['p50_ms']:.2f} ms (others used {a['other_cpu_cores']:.2f} cores); "
                  f"fine-tune {f['median_ms']:.1f} ms"
                  + (f" (head; whole model {f['all_median_ms']:.1f} ms)" if "all_median_ms" in f else ""),
                  flush=True)
        if "signing" in only:
            print("signing off/on:", flush=True)
            results["signing"] = bench_signing(run, bundle, tmp, args.seconds, args.max_requests, args.signing_rounds,
                                               args.adaptation_requests, config.window_len)
            sg = results["signing"]
            h, a = sg["http_c64"], sg["adaptation_fp32"]
            print(f"signing: {h['mean']['off']['throughput_per_s']:,.0f} -> {h['mean']['on']['throughput_per_s']:,.0f} "
                  f"answers/s at c=64 (ratio {h['throughput_ratio_on_off']:.3f}, server +"
                  f"{h['server_cpu_us_per_answer_added']:.1f} us/answer); adaptation p50 {a['p50_ms']['off']:.3f} -> "
                  f"{a['p50_ms']['on']:.3f} ms (+{a['p50_added_ms']:.3f}); alone: sign {sg['alone_us']['sign_one_answer']:.1f} us "
                  f"(in a batch of 23: {sg['alone_us']['sign_per_answer_in_23']:.1f} us an answer), verify "
                  f"{sg['alone_us']['verify_answer']:.1f} us", flush=True)
        results["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
