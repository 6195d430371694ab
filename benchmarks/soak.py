"""Soak test of `duet serve`: bounded mixed good and bad traffic on loopback, watching latency and memory.

    python benchmarks/soak.py --run RUN --out benchmarks/results/soak.json --plot docs/soak.png

Starts `duet serve` as a subprocess on a free loopback port, with bearer tokens
and a per-token rate limit, and keeps `--concurrency` aiohttp requests in
flight for `--seconds` (default 60; at most `--max-requests`). The traffic is a
weighted mix of
  * good requests (random windows of 1..W valid item ids, fp32/fp16, binary or
    JSON answers), spread over many tokens so that none hits the rate limit;
  * bad requests of known kinds, each with the answer it must get: unknown item
    id, empty window, window over max_window, wrong types (422), malformed JSON
    (422), oversized body (413), unknown model version (409), no token and a
    wrong token (401);
  * one "hammer" token sending faster than its rate limit (429 expected).
Any other answer counts as unexpected, a 5xx separately. Reported: requests
served, counts by kind and status, latency of good requests (p50/p99 per 5 s
bucket) and the service's RSS sampled every second (with the slope of a
least-squares line after the warm-up: a leak shows as a steady slope).

Without --run, a throwaway default-architecture DUET run is trained on
synthetic data first (benchmarks/serve.py's make_run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import family  # noqa: E402 - needs the sys.path line above

# kind -> (weight, expected status). "good" must answer 200; "hammer" 200 or 429.
KINDS = {
    "good": (80, 200),
    "unknown_item": (2, 422),
    "empty_window": (2, 422),
    "window_too_long": (2, 422),
    "wrong_type": (2, 422),
    "malformed_json": (2, 422),
    "oversized_body": (1, 413),
    "unknown_version": (2, 409),
    "no_token": (2, 401),
    "wrong_token": (2, 401),
}


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its direct children (uvicorn workers), from /proc."""
    total = 0
    for member, _ in family(pid):
        try:
            for line in open(f"/proc/{member}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


class Traffic:
    """Builds the request of each kind (method, body bytes, headers)."""

    def __init__(self, num_items: int, window_len: int, max_window: int, max_body: int, good_tokens: list[str],
                 seed: int = 0):
        self.rng = random.Random(seed)
        self.num_items, self.window_len, self.max_window, self.max_body = num_items, window_len, max_window, max_body
        self.good_tokens = good_tokens

    def window(self) -> list[int]:
        return [self.rng.randrange(1, self.num_items) for _ in range(self.rng.randrange(1, self.window_len + 1))]

    def build(self, kind: str) -> tuple[bytes, dict[str, str]]:
        headers = {"Content-Type": "application/json",
                   "Authorization": f"Bearer {self.rng.choice(self.good_tokens)}"}
        body: object = {"device_id": f"soak-{self.rng.randrange(10_000)}", "window": self.window(),
                        "dtype": self.rng.choice(["fp32", "fp16"])}
        if kind == "good" and self.rng.random() < 0.1:
            headers["Accept"] = "application/json"
        elif kind == "unknown_item":
            body["window"][-1] = self.num_items + self.rng.randrange(1000)
        elif kind == "empty_window":
            body["window"] = []
        elif kind == "window_too_long":
            body["window"] = [1] * (self.max_window + 1)
        elif kind == "wrong_type":
            body["window"] = [str(i) + "x" for i in body["window"]]
        elif kind == "malformed_json":
            return json.dumps(body).encode()[:-3], headers
        elif kind == "oversized_body":
            return json.dumps({**body, "device_id": "x" * (self.max_body + 10)}).encode(), headers
        elif kind == "unknown_version":
            body["version"] = "no-such-version"
        elif kind == "no_token":
            del headers["Authorization"]
        elif kind == "wrong_token":
            headers["Authorization"] = f"Bearer {secrets.token_urlsafe(24)}"
        return json.dumps(body).encode(), headers


async def soak(url: str, pid: int, traffic: Traffic, hammer_token: str, seconds: float, max_requests: int,
               concurrency: int, hammer_concurrency: int) -> dict:
    import aiohttp

    kinds, weights = list(KINDS), [w for w, _ in KINDS.values()]
    started = time.perf_counter()
    deadline = started + seconds
    sent = [0]
    records: list[tuple[float, str, int, float]] = []  # (start offset s, kind, status (0 = connection error), latency s)
    rss: list[tuple[float, int]] = []

    async def sampler() -> None:
        while time.perf_counter() < deadline and sent[0] < max_requests:
            rss.append((time.perf_counter() - started, rss_bytes(pid)))
            await asyncio.sleep(1.0)
        rss.append((time.perf_counter() - started, rss_bytes(pid)))

    async def worker(session: aiohttp.ClientSession, hammer: bool) -> None:
        rng = random.Random()
        while time.perf_counter() < deadline and sent[0] < max_requests:
            sent[0] += 1
            if hammer:
                kind = "hammer"
                body = json.dumps({"device_id": "hammer", "window": traffic.window()}).encode()
                headers = {"Content-Type": "application/json", "Authorization": f"Bearer {hammer_token}"}
            else:
                kind = rng.choices(kinds, weights)[0]
                body, headers = traffic.build(kind)
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/v1/parameters", data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, OSError):
                status = 0
            records.append((t0 - started, kind, status, time.perf_counter() - t0))

    connector = aiohttp.TCPConnector(limit=concurrency + hammer_concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(sampler(), *(worker(session, False) for _ in range(concurrency)),
                             *(worker(session, True) for _ in range(hammer_concurrency)))
    return {"records": records, "rss": rss, "wall_seconds": time.perf_counter() - started}


def summarise(raw: dict, bucket: float) -> dict:
    records, rss = raw["records"], raw["rss"]
    by_kind: dict[str, Counter] = {}
    for _, kind, status, _ in records:
        by_kind.setdefault(kind, Counter())[status] += 1
    expected = {kind: status for kind, (_, status) in KINDS.items()}
    unexpected, server_errors, connection_errors = Counter(), 0, 0
    for kind, counts in by_kind.items():
        for status, n in counts.items():
            ok = status in (200, 429) if kind == "hammer" else status == expected[kind]
            if status == 0:
                connection_errors += n
            elif status >= 500:
                server_errors += n
            if not ok:
                unexpected[f"{kind}:{status}"] += n
    good = np.array([(t, latency) for t, kind, status, latency in records if kind == "good" and status == 200])
    buckets = []
    if len(good):
        for start in np.arange(0.0, raw["wall_seconds"], bucket):
            lat = good[(good[:, 0] >= start) & (good[:, 0] < start + bucket), 1] * 1e3
            if len(lat):
                buckets.append({"start_s": float(start), "requests": int(len(lat)), "p50_ms": float(np.percentile(lat, 50)),
                                "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max())})
    times = np.array([t for t, _ in rss], dtype=float)
    mem = np.array([b for _, b in rss], dtype=float) / 2**20
    warm = times >= min(10.0, times.max() / 3) if len(times) else times
    slope = float(np.polyfit(times[warm], mem[warm], 1)[0] * 60) if warm.sum() >= 3 else None
    all_good = good[:, 1] * 1e3 if len(good) else np.array([0.0])
    return {
        "requests": len(records),
        "requests_per_second": len(records) / raw["wall_seconds"],
        "wall_seconds": raw["wall_seconds"],
        "answered_good": int(len(good)),
        "by_kind": {kind: {str(s): n for s, n in sorted(c.items())} for kind, c in sorted(by_kind.items())},
        "unexpected": dict(unexpected),
        "server_errors_5xx": server_errors,
        "connection_errors": connection_errors,
        "good_latency_ms": {"p50": float(np.percentile(all_good, 50)), "p99": float(np.percentile(all_good, 99)),
                            "max": float(all_good.max())},
        "latency_buckets": buckets,
        "rss_mib": [[float(t), float(m)] for t, m in zip(times, mem, strict=True)],
        "rss_start_mib": float(mem[0]) if len(mem) else None,
        "rss_end_mib": float(mem[-1]) if len(mem) else None,
        "rss_max_mib": float(mem.max()) if len(mem) else None,
        "rss_slope_mib_per_min_after_warmup": slope,
    }


def plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from duet.atomic import save_png

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    buckets = summary["latency_buckets"]
    starts = [b["start_s"] + summary["bucket_seconds"] / 2 for b in buckets]  # plotted at the bucket's middle
    top.plot(starts, [b["p99_ms"] for b in buckets], "o-", label="p99")
    top.plot(starts, [b["p50_ms"] for b in buckets], "s--", label="p50")
    top.set_ylabel("good-request latency (ms)")
    top.set_ylim(bottom=0)
    top.legend(loc="upper right")
    top.set_title(f"duet serve soak: {summary['requests']:,} requests, "
                  f"{summary['server_errors_5xx']} 5xx, {sum(summary['unexpected'].values())} unexpected")
    times = [t for t, _ in summary["rss_mib"]]
    bottom.plot(times, [m for _, m in summary["rss_mib"]], "-", color="tab:red")
    slope = summary["rss_slope_mib_per_min_after_warmup"]
    bottom.set_ylabel("service RSS (MiB)")
    bottom.set_xlabel(f"seconds (latency per {summary['bucket_seconds']:g} s bucket)")
    if slope is not None:
        bottom.set_title(f"RSS slope after warm-up: {slope:+.2f} MiB/min", fontsize=9)
    fig.tight_layout()
    save_png(fig, out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="DUET run to serve (default: a throwaway synthetic one)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-requests", type=int, default=300_000)
    parser.add_argument("--concurrency", type=int, default=32, help="good/bad request streams in flight")
    parser.add_argument("--hammer-concurrency", type=int, default=4, help="streams of the over-limit token")
    parser.add_argument("--tokens", type=int, default=64, help="good tokens (traffic spread over them)")
    parser.add_argument("--rate-limit", type=float, default=50.0, help="the service's requests/s per token")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--bucket", type=float, default=5.0, help="seconds per latency bucket")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/soak.png"))
    parser.add_argument("--plot-only", type=Path, metavar="JSON", help="only redraw --plot from a results file")
    args = parser.parse_args()
    if args.plot_only is not None:
        plot(json.loads(args.plot_only.read_text()), args.plot)
        print(f"wrote {args.plot}")
        return

    from serve import OtherLoad, make_run

    from duet.atomic import write_json
    from duet.simulate import ServiceProcess

    with tempfile.TemporaryDirectory(prefix="duet-soak-") as tmp:
        tmp = Path(tmp)
        run = args.run or make_run(tmp / "throwaway")
        tokens = [secrets.token_urlsafe(24) for _ in range(args.tokens + 1)]
        (tmp / "tokens").write_text("\n".join(tokens) + "\n")
        hammer_token, good_tokens = tokens[0], tokens[1:]
        extra = ["--tokens-file", str(tmp / "tokens"), "--rate-limit", str(args.rate_limit),
                 "--rate-burst", str(args.rate_limit)]
        with ServiceProcess(run, workers=args.workers, extra_args=extra, log_file=tmp / "service.log") as service:
            import urllib.request

            request = urllib.request.Request(service.url + "/v1/models",
                                             headers={"Authorization": f"Bearer {good_tokens[0]}"})
            model = json.loads(urllib.request.urlopen(request, timeout=10).read())["models"][0]
            traffic = Traffic(model["num_items"], model["window_len"], model["max_window"], 65_536, good_tokens)
            print(f"soaking {service.url} ({model['version']}) for {args.seconds:g} s, "
                  f"concurrency {args.concurrency} + {args.hammer_concurrency} hammer", flush=True)
            with OtherLoad(service.pid) as others:
                raw = asyncio.run(soak(service.url, service.pid, traffic, hammer_token, args.seconds,
                                       args.max_requests, args.concurrency, args.hammer_concurrency))
            exit_code = service.stop()
            log = service.final_log
        summary = summarise(raw, args.bucket)
        leaked = [t for t in tokens if t in (tmp / "service.log").read_text()]
    summary.update(bucket_seconds=args.bucket, service_exit_code=exit_code, model_version=model["version"],
                   num_items=model["num_items"], window_len=model["window_len"], workers=args.workers,
                   concurrency=args.concurrency, hammer_concurrency=args.hammer_concurrency,
                   rate_limit_per_token=args.rate_limit, good_tokens=args.tokens,
                   mix={kind: weight for kind, (weight, _) in KINDS.items()},
                   expected_status={kind: status for kind, (_, status) in KINDS.items()},
                   other_cpu_cores=others.cores, tokens_in_service_log=len(leaked),
                   service_log_tail=log[-1000:], command=" ".join(sys.argv))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, summary)
    plot(summary, args.plot)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rss_mib", "latency_buckets", "service_log_tail")},
                     indent=1))
    print(f"wrote {args.out} and {args.plot}")
    if summary["server_errors_5xx"] or summary["unexpected"] or leaked:
        sys.exit(1)


if __name__ == "__main__":
    main()
