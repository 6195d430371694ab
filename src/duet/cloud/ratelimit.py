"""Rate limits that hold across workers and replicas: the `limits` library over memory or Redis.

`--rate-limit R --rate-burst B` becomes one moving window (limits'
MovingWindowRateLimiter): at most `amount` requests in any `window` seconds,
with window = ceil(B / R) and amount = floor(min(B, R * window)). So a token
never gets more than B at once, nor more than R a second on average over the
window; when B / R is whole (20/s, burst 20) both are exact. A moving window
rather than a token bucket because limits keeps it atomic in Redis (one Lua
script a check), which is what makes the limit one limit for every process
that names the same store.

Stores: `memory://` (the default) keeps the window in this process, so N
workers give a token N x the limit; `redis://HOST:PORT/DB` shares it.

With Redis, the checks that arrive in one event-loop turn travel in one
pipeline of EVALSHAs (one round trip; measured ~20-30 us of CPU a check at
4-23 checks a batch, against ~180 us for one `hit` per request), through the
very Lua script and keys limits' own `hit` uses.

A store that does not answer (refused, timed out) is an outage: one log line
when it starts and one when it ends, `duet_limits_store_up` 0, every failed
call counted in `duet_limits_store_errors`, and each request it could not
check decided by the policy (`open`: admitted; `closed`: 503) and counted in
`duet_limits_unchecked`. While it is down the store is retried at most every
RETRY_SECONDS, so requests do not each wait for a timeout. Probes never reach
the limiter (the guard's open paths).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Literal
from urllib.parse import urlsplit

from limits import RateLimitItemPerSecond
from limits import strategies as local_strategies
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from redis.exceptions import NoScriptError, RedisError

from duet.cloud.telemetry import Telemetry

log = logging.getLogger("duet.cloud.limits")

RETRY_SECONDS = 1.0  # while the store is down, ask it again at most this often
# redis-py defaults wait forever; a store on the same network answers in well under a millisecond.
# `?socket_timeout=...` in the store URL overrides these.
SOCKET_TIMEOUT_S = 0.25
NAMESPACE = "duet"
# What an outage raises: redis-py's own errors (the pipeline), limits' wrapped ones (its API), sockets.
STORE_ERRORS = (RedisError, StorageError, OSError, TimeoutError)


class LimitsUnavailable(Exception):
    """The store could not check a request and the policy is fail-closed."""


def store_label(uri: str) -> str:
    """The store's URL without credentials (for logs and messages)."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RateLimits:
    """One rate limit per client key ("token:<n>", "ip:<addr>") in a limits store.

    `admit(key)` -> 0.0 to admit, else the seconds until the client may retry;
    raises LimitsUnavailable when the store is down and `fail` is "closed".
    """

    def __init__(self, rate: float, burst: float, store: str = "memory://",
                 fail: Literal["open", "closed"] = "open", telemetry: Telemetry | None = None):
        if rate <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs rate > 0 and burst >= 1, got {rate:g} and {burst:g}")
        self.rate, self.burst, self.fail, self.store = rate, burst, fail, store
        self.window = max(1, math.ceil(burst / rate))
        self.amount = max(1, math.floor(min(burst, rate * self.window)))
        self.item = RateLimitItemPerSecond(self.amount, self.window, namespace=NAMESPACE)
        self.shared = not store.startswith("memory://")
        self.telemetry = telemetry or Telemetry()
        self.telemetry.limits_store_up.set(1)
        self._strategy: MovingWindowRateLimiter | None = None  # Redis: made in the event loop, on first use
        self._local: local_strategies.MovingWindowRateLimiter | None = None  # memory: made on first use
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._down_since: float | None = None
        self._retry_at = 0.0

    def __repr__(self) -> str:
        return f"RateLimits({self.amount} per {self.window} s, {store_label(self.store)}, fail {self.fail})"

    @property
    def strategy(self) -> MovingWindowRateLimiter:
        """limits' async moving window over Redis."""
        if self._strategy is None:
            self._strategy = MovingWindowRateLimiter(storage_from_string(
                "async+" + self.store, implementation="redispy", wrap_exceptions=True,
                socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S))
        return self._strategy

    @property
    def local(self) -> local_strategies.MovingWindowRateLimiter:
        """limits' moving window in this process. The synchronous storage: it never waits on I/O, and
        prunes old entries from a timer thread every 10 ms, where the async one hops to a worker
        thread while holding the key's lock after every hit (measured: 2-3x slower for one hot key)."""
        if self._local is None:
            self._local = local_strategies.MovingWindowRateLimiter(MemoryStorage())
        return self._local

    async def admit(self, key: str) -> float:
        if self._down_since is not None and time.monotonic() < self._retry_at:
            return self._unchecked()
        if not self.shared:  # memory: nothing to batch, nothing that can fail
            if self.local.hit(self.item, key):
                return 0.0
            reset, _ = self.local.get_window_stats(self.item, key)
            return max(1.0, reset - time.time())
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((key, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush_soon)
        return await future

    def _flush_soon(self) -> None:
        batch, self._pending = self._pending, []
        asyncio.get_running_loop().create_task(self._flush(batch))

    async def _flush(self, batch: list[tuple[str, asyncio.Future]]) -> None:
        try:
            admitted = await self._hit_many([key for key, _ in batch])
            waits = [0.0 if ok else await self._wait(key) for (key, _), ok in zip(batch, admitted, strict=True)]
        except STORE_ERRORS as exc:  # the policy decides, never a 500
            self._failed(exc)
            for _, future in batch:
                if not future.done():
                    self._settle(future)
            return
        except BaseException as exc:  # a bug, or cancelled at shutdown: no request may wait forever
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            raise
        self._recovered()
        for (_, future), wait in zip(batch, waits, strict=True):
            if not future.done():  # the request may have been cancelled meanwhile
                future.set_result(wait)

    async def _hit_many(self, keys: list[str]) -> list[bool]:
        """limits' moving-window acquire for each key, in one Redis pipeline (same script, same keys).

        EVALSHA straight away: redis-py's script objects would first ask SCRIPT EXISTS on every
        pipeline (one more command a batch, ~20% of the CPU a check). A Redis that restarted has
        forgotten the script: load it and ask again (no entry was taken by the failed pipeline).
        """
        bridge = self.strategy.storage.bridge
        script, client = bridge.lua_acquire_moving_window, bridge.get_connection()
        now, expiry = time.time(), self.item.get_expiry()

        async def acquire() -> list:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.evalsha(script.sha, 1, bridge.prefixed_key(self.item.key_for(key)), now, self.amount, expiry, 1)
            return await pipe.execute()

        try:
            results = await acquire()
        except NoScriptError:
            await client.script_load(script.script)
            results = await acquire()
        return [bool(result) for result in results]

    async def _wait(self, key: str) -> float:
        """Seconds until `key` may send again: when the oldest request in its window leaves it."""
        if self.window == 1:
            return 1.0
        reset, _ = await self.strategy.get_window_stats(self.item, key)
        return max(1.0, reset - time.time())

    def _unchecked(self) -> float:
        self.telemetry.limits_unchecked.labels(self.fail).inc()
        if self.fail == "closed":
            raise LimitsUnavailable(f"rate limits cannot be checked ({store_label(self.store)} unreachable)")
        return 0.0

    def _settle(self, future: asyncio.Future) -> None:
        try:
            future.set_result(self._unchecked())
        except LimitsUnavailable as exc:
            future.set_exception(exc)

    def _failed(self, exc: BaseException) -> None:
        self.telemetry.limits_store_errors.inc()
        now = time.monotonic()
        self._retry_at = now + RETRY_SECONDS
        if self._down_since is None:
            self._down_since = now
            self.telemetry.limits_store_up.set(0)
            reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
            log.warning("limits store %s unreachable (%s): failing %s until it answers", store_label(self.store),
                        reason, self.fail)

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("limits store %s answers again after %.1f s", store_label(self.store),
                        time.monotonic() - self._down_since)
            self._down_since = None
            self.telemetry.limits_store_up.set(1)


def rate_limits(rate: float, burst: float, store: str, fail: Literal["open", "closed"],
                telemetry: Telemetry) -> RateLimits | None:
    """The service's rate limits, or None when they are off (rate 0)."""
    return RateLimits(rate, burst, store, fail, telemetry) if rate > 0 else None
