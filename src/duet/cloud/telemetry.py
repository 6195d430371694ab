"""Prometheus metrics of one app (its own CollectorRegistry: two apps in a test never share counters).

With several uvicorn workers, each worker process reports its own numbers.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("duet_http_requests", "HTTP requests answered, by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("duet_http_request_seconds", "Time to answer an HTTP request, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("duet_generation_batch_size", "Requests sharing one generator forward",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.generation = Histogram("duet_generation_seconds", "Time of one generator forward",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.answer_bytes = Counter("duet_answer_bytes", "Bytes of parameter answers sent, by dtype",
                                    ["dtype"], registry=self.registry)
        self.reloads = Counter("duet_model_reloads", "Hot reloads of the served run, by outcome (ok, failed)",
                               ["outcome"], registry=self.registry)
        self.in_flight = Gauge("duet_http_requests_in_flight", "HTTP requests received and not yet answered "
                               "(this scrape included)", registry=self.registry)
        self.queue_depth = Gauge("duet_queue_depth", "Windows waiting for a generator forward",
                                 registry=self.registry)
        # The rate limits' store (duet.cloud.ratelimit): 0 while it does not answer.
        self.limits_store_up = Gauge("duet_limits_store_up", "1 while the rate-limit store answers, 0 during an "
                                     "outage", registry=self.registry)
        self.limits_store_errors = Counter("duet_limits_store_errors", "Calls to the rate-limit store that failed",
                                           registry=self.registry)
        self.limits_unchecked = Counter("duet_limits_unchecked", "Requests the rate-limit store could not check, "
                                        "decided by the policy (open: admitted, closed: 503)", ["policy"],
                                        registry=self.registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.generation.observe(seconds)


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware task overhead): counts and times every HTTP request.

    Unknown paths are counted under `other` so a scanner cannot blow up label cardinality.
    """

    def __init__(self, app: ASGIApp, telemetry: Telemetry, routes: set[str]):
        self.app, self.telemetry, self.routes = app, telemetry, routes
        self._children: dict[tuple[str, str, int], tuple] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0  # stays 0 when nothing was sent (the client went away first): counted as "none"
        in_flight = self.telemetry.in_flight
        in_flight.inc()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            in_flight.dec()
            route = scope["path"] if scope["path"] in self.routes else "other"
            key = (route, scope["method"], status)
            children = self._children.get(key)
            if children is None:  # labels() costs a lock and a dict lookup: cache the children
                children = self._children[key] = (
                    self.telemetry.requests.labels(route, scope["method"], str(status) if status else "none"),
                    self.telemetry.latency.labels(route),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
