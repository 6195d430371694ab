"""Shared rate limits across replicas, and what Redis costs (loopback only).

    python benchmarks/replicas.py --run RUN --out benchmarks/results/replicas.json

Starts a throwaway redis-server and `duet serve` processes on free loopback ports:

1. limit: two replicas (two ports), 2 workers each, `--rate-limit 20 --rate-burst 20`,
   one token sending 100 requests/s spread over both ports for --limit-seconds;
   once with `--limits-store redis://...` (one limit in total) and once with the
   default memory store (each worker its own limit), for contrast. Counted: what
   was sent, answered (200 or 429) and accepted, the accepted total against
   20/s x seconds (+ one window), and the most accepted in any one second
   (provably: sent at or after t, answered by t + 1 s; see `most_in_one_second`).
2. throughput: the existing load client (benchmarks/serve.py `_load`) at
   concurrency 64, split 32/32 over the two ports, with a limit that every
   request is checked against and none reaches (so each pays the store): two
   replicas of 2 workers with Redis and without (memory), and one replica of 2
   workers with Redis and without. Rounds alternate their order.

Without --run it trains the throwaway default-architecture run of serve.py.
Every process is ours except what `other_cpu_cores` counts (cores other
processes kept busy meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from proctree import family  # benchmarks/ is on sys.path when this script runs
from serve import _busy_jiffies, _load, _own_jiffies, make_run, request_body

TOKEN = "replicas-benchmark-token-0123456789"
TARGETS = {"most_accepted_in_one_second": 21, "throughput_ratio_redis_vs_one_replica": 0.8}


def _jiffies(pids: list[int]) -> int:
    return sum(int(fields[11]) + int(fields[12]) for pid in pids for _, fields in family(pid))


class Cpu:
    """CPU of our processes (`pids` with their children, and this one) and of everything else, over a block."""

    def __init__(self, pids: list[int]):
        self.pids = pids

    def _sample(self) -> tuple[int, int, float, float]:
        return _busy_jiffies(), _jiffies(self.pids), _own_jiffies(), time.perf_counter()

    def __enter__(self) -> Cpu:
        self.start = self._sample()
        return self

    def __exit__(self, *_: object) -> None:
        busy, ours, own, wall = (b - a for a, b in zip(self.start, self._sample(), strict=True))
        tick = os.sysconf("SC_CLK_TCK")
        self.service_cores = ours / tick / wall
        self.client_cores = own / tick / wall
        self.other_cpu_cores = max(0.0, (busy - ours - own) / tick / wall)


def most_in_one_second(accepted: list[tuple[float, float]]) -> int:
    """The most requests provably admitted within one second: sent at or after t, answered by t + 1 s.

    Each was admitted between its sending and its answer, so this never overcounts.
    """
    sent = np.array([s for s, _ in accepted])
    answered = np.array([a for _, a in accepted])
    return int(max(((sent >= t) & (answered <= t + 1.0)).sum() for t in sent)) if len(sent) else 0


async def _paced(urls: list[str], rate: float, seconds: float, body: bytes) -> list[tuple[float, float, int]]:
    """One token at `rate` requests/s, alternating between `urls`: (sent, answered, status) of each."""
    import aiohttp

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    results: list[tuple[float, float, int]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def one(url: str) -> None:
            sent = time.monotonic()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                results.append((sent, time.monotonic(), response.status))

        tasks, start = [], time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(urls[i % len(urls)])))
        await asyncio.gather(*tasks)  # a connection error raises: nothing is silently lost
    return results


def limit_phase(run: Path, store: str, tokens: Path, rate: float, seconds: float, body: bytes) -> dict:
    from duet.simulate import ServiceProcess

    args = ["--tokens-file", str(tokens), "--rate-limit", "20", "--rate-burst", "20", "--limits-store", store,
            "--watch-interval", "0"]
    with ExitStack() as stack:
        replicas = [stack.enter_context(ServiceProcess(run, workers=2, extra_args=args)) for _ in range(2)]
        with Cpu([r.process.pid for r in replicas]) as cpu:
            results = asyncio.run(_paced([r.url + "/v1/parameters" for r in replicas], rate, seconds, body))
    sent = int(rate * seconds)
    accepted = [(s, a) for s, a, status in results if status == 200]
    elapsed = max(a for _, a, _ in results) - min(s for s, _, _ in results)
    statuses = {str(k): int(v) for k, v in zip(*np.unique([st for _, _, st in results], return_counts=True),
                                               strict=True)}
    return {"store": store.split("://")[0], "replicas": 2, "workers_each": 2, "rate_limit_per_s": 20,
            "offered_per_s": rate, "seconds": elapsed, "sent": sent, "answered": len(results),
            "lost": sent - len(results), "statuses": statuses, "accepted": len(accepted),
            "allowed_total": 20 * seconds + 20,  # the limit over the run, plus one window
            "most_accepted_in_one_second": most_in_one_second(accepted), "other_cpu_cores": cpu.other_cpu_cores}


def throughput_phase(run: Path, redis_url: str, rounds: int, seconds: float, max_requests: int,
                     body: bytes) -> dict:
    from duet.simulate import ServiceProcess

    # Checked on every request, never reached: each request pays the store, none is refused.
    limit = ["--rate-limit", "1000000", "--rate-burst", "1000000", "--watch-interval", "0"]
    setups = {"two_replicas_redis": (2, ["--limits-store", redis_url]),
              "two_replicas_memory": (2, []),
              "one_replica_redis": (1, ["--limits-store", redis_url]),
              "one_replica_memory": (1, [])}
    rows: dict[str, list[dict]] = {name: [] for name in setups}
    with ExitStack() as stack:
        services = {name: [stack.enter_context(ServiceProcess(run, workers=2, extra_args=limit + extra))
                           for _ in range(count)] for name, (count, extra) in setups.items()}
        for i in range(rounds):
            order = list(setups) if i % 2 == 0 else list(reversed(setups))
            for name in order:
                replicas = services[name]
                share = 64 // len(replicas)

                async def load(replicas: list = replicas, share: int = share) -> list[dict]:
                    return await asyncio.gather(*[_load(r.url + "/v1/parameters", share, body,
                                                        max_requests // len(replicas), seconds, warmup=0.5)
                                                  for r in replicas])

                with Cpu([r.process.pid for r in replicas]) as cpu:
                    parts = asyncio.run(load())
                row = {"round": i, "requests": sum(p["requests"] for p in parts),
                       "errors": sum(p["errors"] for p in parts),
                       "throughput_per_s": sum(p["throughput_per_s"] for p in parts),
                       "p50_ms": float(np.mean([p["p50_ms"] for p in parts])),
                       "p99_ms": float(max(p["p99_ms"] for p in parts)),
                       "service_cores": cpu.service_cores, "client_cores": cpu.client_cores,
                       "other_cpu_cores": cpu.other_cpu_cores}
                rows[name].append(row)
                print(f"  {name:<20} round {i}: {row['throughput_per_s']:7.0f}/s  p99 {row['p99_ms']:5.1f} ms  "
                      f"errors {row['errors']}  other cores {row['other_cpu_cores']:.2f}", flush=True)
    mean = {name: float(np.mean([r["throughput_per_s"] for r in rs])) for name, rs in rows.items()}
    return {"concurrency": 64, "rounds": rows, "mean_throughput_per_s": mean,
            "ratio_redis_vs_one_replica": mean["two_replicas_redis"] / mean["one_replica_memory"],
            "ratio_redis_vs_two_replicas_memory": mean["two_replicas_redis"] / mean["two_replicas_memory"],
            "ratio_one_replica_redis_vs_memory": mean["one_replica_redis"] / mean["one_replica_memory"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="DUET run to serve (default: train a throwaway one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/replicas.json"))
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s the one token offers")
    parser.add_argument("--limit-seconds", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="each throughput round")
    parser.add_argument("--max-requests", type=int, default=30_000, help="cap per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from duet.redis_process import RedisProcess

    with tempfile.TemporaryDirectory() as tmp, RedisProcess() as redis:
        tmp = Path(tmp)
        run = args.run or make_run(tmp)
        tokens = tmp / "tokens"
        tokens.write_text(TOKEN + "\n")
        from duet.checkpoint import load_config

        body = request_body(load_config(run).window_len)
        limit = {}
        for store in (redis.url, "memory://"):
            limit[store.split("://")[0]] = row = limit_phase(run, store, tokens, args.rate, args.limit_seconds, body)
            print(f"  limit, {row['store']:<6}: sent {row['sent']}, answered {row['answered']}, accepted "
                  f"{row['accepted']} (allowed {row['allowed_total']:.0f}), most in one second "
                  f"{row['most_accepted_in_one_second']}", flush=True)
        throughput = throughput_phase(run, redis.url, args.rounds, args.seconds, args.max_requests, body)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "targets": TARGETS,
        "limit": limit,
        "throughput": throughput,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"two replicas with Redis vs one replica without: {throughput['ratio_redis_vs_one_replica']:.2f}; "
          f"vs two replicas without: {throughput['ratio_redis_vs_two_replicas_memory']:.2f}; one replica with "
          f"Redis vs without: {throughput['ratio_one_replica_redis_vs_memory']:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
