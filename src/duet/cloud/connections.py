"""Connections before they are requests: a deadline for the request head and a cap on open connections.

uvicorn starts its own timers only once a request head is complete (the app's
deadline, duet.cloud.guard) or after an answer (keep-alive): a socket that
connects and sends nothing, or a head one byte at a time, holds a file
descriptor for as long as its client likes, and enough of them make the server
unreachable (`ulimit -n` reached, every accept fails). `GuardedHTTP` is
uvicorn's own HTTP protocol (httptools, or h11 where httptools is missing) with
three additions, shared by all connections of one server through a
`ConnectionGuard`:

* head deadline: a connection must deliver a complete request head within
  `header_timeout` seconds of being opened, or of its previous answer. At the
  deadline it is closed: with a 408 in the service's error shape if part of a
  head had arrived, silently if nothing had (as for keep-alive);
* head size: more than MAX_HEAD_BYTES without a complete head is answered 431
  and closed (httptools would otherwise buffer a head of any length);
* open connections: at most `max_connections` per worker process. A new
  connection over the cap closes the oldest connection that is not in the
  middle of a request (waiting for a head, or idle after an answer), so a
  crowd of idle sockets cannot lock out a client that sends its request at
  once; when every connection is busy with a request, the new one is closed
  at once. Cuts are logged as one warning line at most every LOG_EVERY seconds.

The deadlines are enforced by one timer per server that visits the connections
waiting for a head in deadline order (one timer per server, not one per
connection), to within SWEEP_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections import Counter
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from duet.cloud.errors import error_body

log = logging.getLogger("duet.cloud")

SWEEP_SECONDS = 0.1  # head deadlines are enforced to within this
MAX_HEAD_BYTES = 64 * 1024  # a request head is a few hundred bytes; h11's own limit is 16 KiB
LOG_EVERY = 10.0  # seconds between two warnings about cut connections
# File descriptors kept free of connections: the listening socket, logs, model files being
# (re)loaded, a Redis pool, the event loop's own (measured: a worker holds ~20 besides its sockets).
RESERVED_FDS = 64


def connection_cap(requested: int) -> tuple[int, int | None]:
    """The cap that fits this process's open-file limit: (cap, the soft limit when it lowered the request)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or requested <= soft - RESERVED_FDS:
        return requested, None
    return max(1, soft - RESERVED_FDS), soft


class ConnectionGuard:
    """The state one server's connections share: those waiting for a head (in deadline order), the count."""

    def __init__(self, header_timeout: float, max_connections: int):
        self.header_timeout, self.max_connections = header_timeout, max_connections
        self.open = 0  # connections admitted and not yet closed
        self.waiting: dict[GuardedHTTP, float] = {}  # connection -> head deadline, oldest first
        self.cut: Counter[str] = Counter()  # since the last warning: reason -> connections closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._logged_at = 0.0

    def __getstate__(self) -> dict[str, Any]:  # a worker process gets the settings, never a loop or a timer
        return {"header_timeout": self.header_timeout, "max_connections": self.max_connections}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["header_timeout"], state["max_connections"])

    def wait_for_head(self, connection: GuardedHTTP) -> None:
        """`connection` owes a request head from now on (opened, or its previous answer is complete)."""
        loop = connection.loop
        if self._loop is not loop:  # a new event loop (tests run servers one after another)
            self._loop, self._timer = loop, None
            self.waiting.clear()
        self.waiting.pop(connection, None)
        self.waiting[connection] = loop.time() + self.header_timeout
        connection.head_bytes = 0
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(SWEEP_SECONDS, self._sweep)

    def head_received(self, connection: GuardedHTTP) -> None:
        self.waiting.pop(connection, None)

    def closed(self, connection: GuardedHTTP) -> None:
        self.waiting.pop(connection, None)
        if connection.counted:
            connection.counted = False
            self.open -= 1

    def admit(self, connection: GuardedHTTP) -> bool:
        """Room for `connection`: under the cap, or after closing the oldest idle connection."""
        if self.open >= self.max_connections:
            oldest = next(iter(self.waiting), None)
            if oldest is None:
                self.count("refused (every connection busy with a request)")
                return False
            oldest.cut("evicted (the connection cap was reached)", None)
        self.open += 1
        connection.counted = True
        return True

    def _sweep(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self.waiting:
            connection, deadline = next(iter(self.waiting.items()))
            if deadline > now:
                break
            connection.cut(f"no complete request head within {self.header_timeout:g} s",
                           (408, "request_timeout", f"request head not received within {self.header_timeout:g} s"))
        self._report(now)
        if self.waiting or self.cut:  # a cut not yet reported keeps the timer going until it is
            self._schedule()

    def count(self, reason: str) -> None:
        """One connection closed for `reason` (reported with the others, one line every LOG_EVERY s)."""
        self.cut[reason] += 1
        self._schedule()

    def _report(self, now: float) -> None:
        if self.cut and now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            log.warning("closed connections: %s (open: %d of at most %d)",
                        ", ".join(f"{n} {reason}" for reason, n in self.cut.items()), self.open,
                        self.max_connections)
            self.cut.clear()


class HeadGuard:
    """Mixin over one of uvicorn's HTTP/1.1 protocols (both keep `cycle`): a head deadline, a head size
    limit and a connection cap, through the server's `guard`."""

    transport: asyncio.Transport
    cycle: Any
    loop: asyncio.AbstractEventLoop

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.guard, self.counted, self.head_bytes = guard, False, 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.abort()  # at once: its descriptor is what the cap protects
            return
        self.guard.wait_for_head(self)

    def data_received(self, data: bytes) -> None:
        if self not in self.guard.waiting:
            super().data_received(data)
            return
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:  # a complete head: a request started
            self.guard.head_received(self)
        elif not self.transport.is_closing():
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.cut(f"request head over {MAX_HEAD_BYTES} bytes",
                         (431, "header_too_large", f"request head over {MAX_HEAD_BYTES} bytes"))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle again (no pipelined request took over): the next head is owed from now.
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.guard.wait_for_head(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed(self)
        super().connection_lost(exc)

    def cut(self, reason: str, answer: tuple[int, str, str] | None) -> None:
        """Close this connection (it owes a head): answer `answer` first when part of a head arrived."""
        self.guard.closed(self)
        self.guard.count(reason)
        if self.transport.is_closing():
            return
        if answer is not None and self.head_bytes:
            status, code, message = answer
            body = json.dumps(error_body(code, message, None), separators=(",", ":")).encode()
            phrase = {408: "Request Timeout", 431: "Request Header Fields Too Large"}[status]
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, phrase.encode(), len(body), body))
            self.transport.close()
        else:
            self.transport.abort()


class GuardedHTTP(HeadGuard, AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's default HTTP/1.1 protocol (httptools, h11 without it), guarded."""
