"""Shared rate limits (duet.cloud.ratelimit): the window, one limit across processes through a real
redis-server, and what a Redis outage does (fail open or closed, logged, counted, probes answered).

The tests that need redis-server skip with the reason (pytest -ra) where it is not installed,
and fail under CI, whose .ci/run installs it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from duet.cloud.ratelimit import RETRY_SECONDS, RateLimits, store_label
from duet.simulate import ServiceProcess

TOKEN = "shared-limit-token-0123456789abcdef"
SCRAPER = "shared-limit-scraper-0123456789abcd"  # its own window: scraping /metrics never spends TOKEN's


@pytest.mark.parametrize(("rate", "burst", "amount", "window"),
                         [(20, 20, 20, 1), (100, 100, 100, 1), (0.5, 2, 2, 4), (20, 50, 50, 3), (2.5, 1, 1, 1)])
def test_the_window_never_exceeds_the_rate_or_the_burst(rate: float, burst: float, amount: int, window: int) -> None:
    limits = RateLimits(rate, burst)
    assert (limits.amount, limits.window) == (amount, window)
    assert limits.amount <= burst and limits.amount / limits.window <= rate


def test_store_urls_are_logged_without_credentials() -> None:
    assert store_label("redis://user:secret@10.0.0.5:6380/2") == "redis://10.0.0.5:6380/2"
    assert "secret" not in repr(RateLimits(1, 1, "redis://:secret@localhost:1/0"))


def admitted(limiters: list[RateLimits], requests: int) -> int:
    """Send `requests` checks for one key, spread over the limiters, all at once; how many were admitted."""
    async def main() -> list[float]:
        return await asyncio.gather(*[limiters[i % len(limiters)].admit("token:0") for i in range(requests)])

    waits = asyncio.run(main())
    assert all(wait == 0 or wait >= 1 for wait in waits)
    return sum(wait == 0 for wait in waits)


def test_memory_limits_are_per_process() -> None:
    assert admitted([RateLimits(10, 10)], 25) == 10
    # Two processes (two limiters) with memory stores: each admits its own 10. What Redis is for.
    assert admitted([RateLimits(10, 10), RateLimits(10, 10)], 40) == 20


def test_limiters_sharing_redis_hold_one_limit(redis_server) -> None:
    shared = [RateLimits(10, 10, redis_server.url) for _ in range(3)]
    assert admitted(shared, 45) == 10


# ---------------------------------------------------------------- outages, in process

def post(client: object, token: str = TOKEN) -> object:
    return client.post("/v1/parameters", json={"device_id": "d", "window": [1, 2]},
                       headers={"Authorization": f"Bearer {token}"})


def metric(text: str, name: str) -> float:
    (value,) = re.findall(rf"^{re.escape(name)} (\S+)$", text, flags=re.M)
    return float(value)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_redis_outage_fails_open_logs_once_counts_and_recovers(duet_run: Path, redis_server,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from duet.cloud import Settings, create_app

    settings = Settings(run=duet_run, tokens=[TOKEN, SCRAPER], rate_limit=5, rate_burst=5,
                        limits_store=redis_server.url, watch_interval_s=0)
    caplog.set_level(logging.WARNING, logger="duet.cloud.limits")
    with TestClient(create_app(settings)) as client:
        assert Counter(post(client).status_code for _ in range(7)) == {200: 5, 429: 2}
        redis_server.stop()
        assert [post(client).status_code for _ in range(10)] == [200] * 10  # open: served, unlimited
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        text = client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPER}"}).text
        assert metric(text, "duet_limits_store_up") == 0
        assert metric(text, "duet_limits_store_errors_total") >= 1
        assert metric(text, 'duet_limits_unchecked_total{policy="open"}') == 11  # the 10 and this scrape
        down = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(down) == 1 and "failing open" in down[0], down  # one line per outage, not per request

        redis_server.start()
        time.sleep(RETRY_SECONDS + 0.1)
        assert Counter(post(client).status_code for _ in range(7)) == {200: 5, 429: 2}  # limited again
        assert any("answers again" in r.getMessage() for r in caplog.records)
        text = client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPER}"}).text
        assert metric(text, "duet_limits_store_up") == 1


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_redis_outage_fails_closed_with_503_and_probes_still_answer(duet_run: Path, redis_server) -> None:
    from fastapi.testclient import TestClient

    from duet.cloud import Settings, create_app

    settings = Settings(run=duet_run, tokens=[TOKEN], rate_limit=5, rate_burst=5, limits_store=redis_server.url,
                        limits_fail="closed", watch_interval_s=0)
    with TestClient(create_app(settings)) as client:
        assert post(client).status_code == 200
        redis_server.stop()
        for _ in range(3):
            answer = post(client)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
            assert answer.json()["error"]["code"] == "limits_unavailable"
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


# ---------------------------------------------------------------- two replicas of two workers, one Redis

def hammer(port: int, stop_at: float, out: list[tuple[float, float, int]]) -> None:
    """Back-to-back requests on one keep-alive connection until `stop_at`: (sent, answered, status)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    body = json.dumps({"device_id": "d", "window": [3, 4]})
    while time.monotonic() < stop_at:
        sent = time.monotonic()
        connection.request("POST", "/v1/parameters", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        out.append((sent, time.monotonic(), response.status))
    connection.close()


def most_in_one_second(accepted: list[tuple[float, float]]) -> int:
    """The most requests provably admitted within one second: sent at or after t and answered by t + 1.

    Each was admitted somewhere between its sending and its answer, so this never overcounts
    (counting by answer time alone would: a slow answer moves a request into the next second).
    """
    return max(sum(1 for sent, answered in accepted if sent >= start and answered <= start + 1.0)
               for start, _ in accepted)


def test_two_replicas_of_two_workers_share_one_limit(duet_run: Path, redis_server, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    args = ["--tokens-file", str(tokens), "--rate-limit", "20", "--rate-burst", "20",
            "--limits-store", redis_server.url, "--watch-interval", "0"]
    with ServiceProcess(duet_run, workers=2, extra_args=args) as a, \
            ServiceProcess(duet_run, workers=2, extra_args=args) as b:
        results: list[tuple[float, float, int]] = []
        started = time.monotonic()
        threads = [threading.Thread(target=hammer, args=(service.port, started + 3.0, results))
                   for service in (a, b) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    statuses = Counter(status for _, _, status in results)
    assert set(statuses) <= {200, 429}, statuses
    accepted = [(sent, answered) for sent, answered, status in results if status == 200]
    elapsed = max(answered for _, answered, _ in results) - started
    assert statuses[429] > statuses[200], statuses  # far more was sent than the limit
    # A moving window of 20 per second: at most 20 x (whole seconds + 1) in total; per-worker limits give 4x.
    assert 20 * (elapsed - 1) <= len(accepted) <= 20 * (int(elapsed) + 1), (statuses, elapsed)
    assert most_in_one_second(accepted) <= 21


def test_the_store_comes_from_the_environment_and_a_bad_one_is_one_line(
        duet_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import duet.cloud.server
    from duet.cli import app

    captured = []
    monkeypatch.setattr(duet.cloud.server, "serve", captured.append)
    monkeypatch.setenv("DUET_LIMITS_STORE", "redis://127.0.0.1:6399/1")
    monkeypatch.setenv("DUET_LIMITS_FAIL", "closed")
    result = CliRunner().invoke(app, ["serve", "--run", str(duet_run), "--rate-limit", "5"])
    assert result.exit_code == 0, result.output
    assert (captured[0].limits_store, captured[0].limits_fail) == ("redis://127.0.0.1:6399/1", "closed")
    assert "rate limits in redis://127.0.0.1:6399/1 (fail closed)" in result.output
    result = CliRunner().invoke(app, ["serve", "--run", str(duet_run), "--limits-store", "redis//:hunter2@x"])
    assert result.exit_code == 2 and "--limits-store: expected memory:// or redis://HOST:PORT/DB" in result.output
    assert "hunter2" not in result.output and "Traceback" not in result.output
