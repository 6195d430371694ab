"""The service's front door, as one pure ASGI middleware (no per-request task overhead).

Before routing and before any parsing, for every path except the open ones
(probes and API docs):

1. auth: with tokens configured, `Authorization: Bearer <token>` must name one
   of them, else 401 with `WWW-Authenticate: Bearer`. The presented token is
   hashed and compared with `hmac.compare_digest` against the hash of *every*
   configured token (no early exit), so the time taken does not tell how much
   of a token matched or which one did;
2. rate limit: a moving window per token (per client IP when auth is off),
   in a store shared by every worker and replica (duet.cloud.ratelimit); over
   the limit answers 429 with `Retry-After`, a store outage under the
   fail-closed policy 503;
3. body: `Content-Length` over the limit answers 413 before a byte is read;
   a chunked body is read only up to the limit, then 413. The route then
   reads the buffered body as usual;
4. deadline: a request still reading its body (408) or waiting for
   generation (504) `request_timeout` seconds after it arrived is cancelled
   and answered. One sweeper task checks every in-flight request each
   SWEEP_SECONDS, instead of a timer per request (asyncio.timeout costs ~4 us
   a request under uvloop, twice that for the two phases).

Nothing here logs a header: tokens never reach a log.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from duet.cloud.errors import error_body
from duet.cloud.ratelimit import LimitsUnavailable, RateLimits

CLIENT_KEY = "duet.client"  # scope key: the rate-limit identity ("token:<n>" or "ip:<addr>")
PHASE_KEY = "duet.phase"  # scope key: the request's Phase, which the route moves to WAITING and back
SWEEP_SECONDS = 0.05  # deadlines are enforced to within this
_JSON = [(b"content-type", b"application/json")]

# What a request is doing; only READING and WAITING can be cut short by the deadline.
READING, RUNNING, WAITING = "reading", "running", "waiting"


class Phase:
    """One request's deadline and phase; the sweeper marks `expired` (the phase it expired in)."""

    __slots__ = ("deadline", "expired", "now")

    def __init__(self, deadline: float):
        self.deadline, self.now, self.expired = deadline, READING, None


class Guard:
    def __init__(self, app: ASGIApp, tokens: list[str], open_paths: set[str], max_body_bytes: int,
                 request_timeout: float, limiter: RateLimits | None = None):
        self.app, self.open_paths = app, open_paths
        self._digests = [hashlib.sha256(token.encode()).digest() for token in tokens]
        self.max_body_bytes, self.request_timeout = max_body_bytes, request_timeout
        self.limiter = limiter
        self._in_flight: dict[asyncio.Task, Phase] = {}
        self._sweeper: asyncio.Task | None = None

    @property
    def auth(self) -> bool:
        return bool(self._digests)

    def _token_index(self, presented: bytes) -> int:
        """Index of the configured token equal to `presented`, or -1; compares against every token."""
        digest = hashlib.sha256(presented).digest()
        found = -1
        for i, known in enumerate(self._digests):
            if hmac.compare_digest(digest, known):
                found = i
        return found

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = loop.time()
            for task, phase in list(self._in_flight.items()):
                if phase.expired is None and phase.now != RUNNING and now >= phase.deadline:
                    phase.expired = phase.now
                    task.cancel()

    def _ensure_sweeper(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the sweeper lives as long as the app
            try:
                await self.app(scope, receive, send)
            finally:
                if self._sweeper is not None:
                    self._sweeper.cancel()
            return
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        authorization = content_length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                content_length = value

        if self.auth:
            scheme, _, presented = (authorization or b"").strip().partition(b" ")
            if authorization is None or scheme.lower() != b"bearer" or not presented.strip():
                await _answer(send, 401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)",
                              [(b"www-authenticate", b'Bearer realm="duet"')])
                return
            index = self._token_index(presented.strip())
            if index < 0:
                await _answer(send, 401, "unauthorized", "invalid bearer token",
                              [(b"www-authenticate", b'Bearer realm="duet", error="invalid_token"')])
                return
            scope[CLIENT_KEY] = f"token:{index}"
        elif self.limiter is not None:
            client = scope.get("client")
            scope[CLIENT_KEY] = f"ip:{client[0] if client else '?'}"

        if self.limiter is not None:
            try:
                wait = await self.limiter.admit(scope[CLIENT_KEY])
            except LimitsUnavailable as exc:
                await _answer(send, 503, "limits_unavailable", f"{exc}; retry later", [(b"retry-after", b"1")])
                return
            if wait > 0:
                await _answer(send, 429, "rate_limited",
                              f"rate limit of {self.limiter.amount} requests per {self.limiter.window} s "
                              "exceeded; retry later", [(b"retry-after", str(max(1, math.ceil(wait))).encode())])
                return

        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                declared = -1
            if declared < 0:
                await _answer(send, 400, "bad_request", "invalid Content-Length", close=True)
                return
            if declared > self.max_body_bytes:
                await _answer(send, 413, "body_too_large", f"body of {declared} bytes is over the limit of "
                              f"{self.max_body_bytes} bytes", close=True, field="body")
                return

        loop = asyncio.get_running_loop()
        self._ensure_sweeper(loop)
        task = asyncio.current_task()
        phase = scope[PHASE_KEY] = Phase(loop.time() + self.request_timeout)
        self._in_flight[task] = phase
        try:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nobody to answer
            if message.get("more_body", False):  # more than one piece: gather them, up to the limit
                chunks, size = [message.get("body", b"")], len(message.get("body", b""))
                while message.get("more_body", False):
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    size += len(message.get("body", b""))
                    if size > self.max_body_bytes:
                        break
                    chunks.append(message.get("body", b""))
                message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            else:
                size = len(message.get("body", b""))
            if size > self.max_body_bytes:
                await _answer(send, 413, "body_too_large", f"body over the limit of {self.max_body_bytes} bytes",
                              close=True, field="body")
                return
            phase.now = RUNNING
            replay = [message]

            async def buffered() -> Message:
                if replay:
                    return replay.pop()
                return await receive()  # after the body: waits for http.disconnect, as uvicorn's would

            await self.app(scope, buffered, send)
        except asyncio.CancelledError:
            if phase.expired is None:
                raise  # not ours (shutdown, client gone): let it through
            task.uncancel()
            if phase.expired == READING:
                await _answer(send, 408, "request_timeout", f"body not received within {self.request_timeout:g} s",
                              close=True, field="body")
            else:  # WAITING: nothing was sent yet (the route sends only after generation)
                await _answer(send, 504, "timeout", f"no answer within the request timeout of "
                              f"{self.request_timeout:g} s")
        finally:
            del self._in_flight[task]


async def _answer(send: Send, status: int, code: str, message: str,
                  headers: list[tuple[bytes, bytes]] | None = None, close: bool = False,
                  field: str | None = None) -> None:
    body = json.dumps(error_body(code, message, field), separators=(",", ":")).encode()
    extra = [(b"connection", b"close")] if close else []  # the unread rest of the body cannot be skipped
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode()), *(headers or []), *extra]})
    await send({"type": "http.response.body", "body": body})
