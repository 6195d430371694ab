"""HTTP client for `POST /v1/parameters` (stdlib urllib: nothing to install on a device).

With a keyring, every answer must carry a valid `X-Duet-Signature` by one of
its keys over (model version, spec hash, body sha256, request sha256): an
unsigned, altered, re-labelled or someone else's answer is refused, not retried.

Bounded in time and size, whoever answers: `timeout` is a deadline for a whole
attempt (connect, send, the answer's head and body), not for each read, so a
carrier trickling a byte at a time cannot hold a refresh; an answer over
`max_answer_bytes` (a runtime sets it from its bundle's expected payload) is
refused before it is read when its Content-Length says so, else as soon as
that many bytes have arrived, and never retried. Error bodies are read up to
ERROR_BYTES.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import io
import json
import logging
import socket
import struct
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as load_safetensors

from duet.errors import DuetError
from duet.signing import SIGNATURE_HEADER, Keyring, SignatureError, answer_message, verify_answer

log = logging.getLogger("duet.device")


# Statuses worth retrying: the request was fine, the service was not ready for it.
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_MAX_ANSWER_BYTES = 64 * 2**20  # a client without a bundle; a runtime sets its bundle's own cap
ERROR_BYTES = 300  # of an error answer's body, kept for the message
READ_BYTES = 1 << 16  # an answer is read in pieces of this size, counted against the cap


class ServiceError(DuetError):
    """The parameter service did not give a usable answer (after retries where retrying helps)."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class UntrustedAnswer(ServiceError):
    """An answer whose signature is missing or wrong: refused at once (asking again would not fix it)."""


class OversizedAnswer(ServiceError):
    """An answer larger than the parameters it should carry: refused unread (or as soon as it is over)."""


def answer_cap(numel: int, itemsize: int, names: list[str]) -> int:
    """The most bytes a safetensors answer of `numel` values of `itemsize` bytes in tensors `names` may take:
    the values, plus the JSON header (each tensor's entry, the metadata) with room to spare."""
    return numel * itemsize + 16 * 1024 + sum(len(name.encode()) + 256 for name in names)


class _DeadlineSocket:
    """A connected socket whose every send and read waits at most until `deadline` (time.monotonic)."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float):
        self.sock, self.deadline, self.timeout = sock, deadline, timeout

    def arm(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no whole answer within {self.timeout:g} s")
        self.sock.settimeout(remaining)

    def sendall(self, data: bytes) -> None:
        self.arm()
        self.sock.sendall(data)

    def makefile(self, *_: object, **__: object) -> io.BufferedReader:  # "rb": what HTTPResponse asks
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:  # the socket really closes once the response's reader is closed too
        self.sock.close()

    def __getattr__(self, name: str) -> object:  # setsockopt and the like: the socket's own
        return getattr(self.sock, name)


class _DeadlineReader(io.RawIOBase):
    def __init__(self, owner: _DeadlineSocket):
        self.owner, self.raw = owner, owner.sock.makefile("rb", buffering=0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.owner.arm()
        return self.raw.readinto(buffer)

    def close(self) -> None:
        self.raw.close()
        super().close()


class _Deadline:
    """Mixin over http.client's connections: once connected (within `timeout`), the socket keeps the deadline."""

    def __init__(self, *args: object, deadline: float, **kwargs: object):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock = _DeadlineSocket(self.sock, self.deadline, self.timeout)  # type: ignore[attr-defined]


class _DeadlineHTTP(_Deadline, http.client.HTTPConnection):
    pass


class _DeadlineHTTPS(_Deadline, http.client.HTTPSConnection):
    pass


class _DeadlineHandler(urllib.request.HTTPHandler):
    """urllib's HTTP(S) with the attempt's deadline (the request's `deadline`); proxies work as before."""

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_DeadlineHTTP, deadline=req.deadline), req)  # type: ignore[attr-defined]


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_DeadlineHTTPS, deadline=req.deadline),  # type: ignore[attr-defined]
                            req, context=self._context)


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_DeadlineHandler(), _DeadlineHTTPSHandler())


def read_capped(response: http.client.HTTPResponse, cap: int, url: str) -> bytes:
    """The body, or OversizedAnswer as soon as it is known to be over `cap` bytes."""
    declared = response.length  # Content-Length as http.client parsed it (None: chunked or until closed)
    if declared is not None:
        if declared > cap:
            raise OversizedAnswer(f"{url}: answer of {declared} bytes, over the {cap} expected (refused unread)")
        return response.read()  # exactly the declared bytes, within the deadline
    chunks, size = [], 0
    while chunk := response.read(min(READ_BYTES, cap + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            raise OversizedAnswer(f"{url}: answer over the {cap} bytes expected (refused after {size} bytes)")
    return b"".join(chunks)


@dataclass(frozen=True)
class Answer:
    params: dict[str, np.ndarray]  # {name: shape}, as sent (float32 or float16)
    version: str
    spec_hash: str
    content_sha256: str
    size: int  # bytes on the wire (body)
    signed_by: str | None = None  # key id of the verified signature; None when no keyring is configured


def safetensors_metadata(body: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob (the library's numpy loader drops it)."""
    if len(body) < 8:
        raise ValueError("body shorter than a safetensors header")
    (length,) = struct.unpack("<Q", body[:8])
    if length > len(body) - 8:
        raise ValueError("safetensors header longer than the body")
    return json.loads(body[8 : 8 + length]).get("__metadata__", {})


class ParameterClient:
    """Fetches one device's parameters; retries timeouts, refused connections, 5xx and 429 with backoff.

    A `Retry-After` from the service (429 rate limited, 503 overloaded) stretches
    the wait before the next attempt, up to `timeout`. `token`: the bearer token
    when the service has auth on. `keys`: accept only answers signed by one of them.
    `timeout`: seconds for one whole attempt, answer included; a fetch takes at most
    (retries + 1) x timeout plus the waits between attempts. `max_answer_bytes`: the
    largest answer accepted (see `answer_cap`).
    """

    def __init__(self, url: str, timeout: float = 2.0, retries: int = 2, backoff: float = 0.05,
                 token: str | None = None, keys: Keyring | None = None,
                 max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES):
        self.url = url.rstrip("/") + "/v1/parameters"
        self.timeout, self.retries, self.backoff, self.keys = timeout, retries, backoff, keys
        self.max_answer_bytes = max_answer_bytes
        self._opener = _opener()
        self._headers = {"Content-Type": "application/json", "Accept": "application/octet-stream"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:  # never shows the token
        return f"ParameterClient({self.url!r}, auth={'Authorization' in self._headers})"

    def fetch(self, device_id: str, window: list[int] | None = None, dtype: str = "fp32", version: str | None = None,
              *, samples: list[list[float]] | None = None, embedding: list[list[float]] | None = None) -> Answer:
        """One device's parameters for its window: token ids (`window`), float samples (`samples`) or
        their features (`embedding`)."""
        given = {name: value for name, value in (("window", window), ("samples", samples), ("embedding", embedding))
                 if value is not None}
        if len(given) != 1:
            raise ValueError(f"give exactly one of window, samples and embedding, got {sorted(given) or 'none'}")
        body = {"device_id": device_id, **given, "dtype": dtype}
        if version is not None:
            body["version"] = version
        data = json.dumps(body, separators=(",", ":")).encode()
        request_sha256 = hashlib.sha256(data).hexdigest()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                wait = self.backoff * 2 ** (attempt - 1)
                if isinstance(last, ServiceError) and last.retry_after:
                    wait = max(wait, min(last.retry_after, self.timeout))
                time.sleep(wait)
            try:
                return self._once(data, request_sha256)
            except (UntrustedAnswer, OversizedAnswer):
                raise
            except ServiceError as exc:
                last = exc
                if exc.status is not None and exc.status not in RETRYABLE:  # our request is wrong: final
                    raise
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                last = exc
            log.debug("parameter request attempt %d failed: %s", attempt + 1, last)
        raise ServiceError(f"{self.url}: no answer after {self.retries + 1} attempts ({last})")

    def _once(self, data: bytes, request_sha256: str) -> Answer:
        request = urllib.request.Request(self.url, data=data, method="POST", headers=self._headers)
        request.deadline = time.monotonic() + self.timeout  # type: ignore[attr-defined]
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                headers = response.headers
                body = read_capped(response, self.max_answer_bytes, self.url)
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(ERROR_BYTES).decode(errors="replace")
            finally:
                exc.close()
            try:
                retry_after = float(exc.headers.get("Retry-After", ""))
            except ValueError:
                retry_after = None
            raise ServiceError(f"{self.url}: HTTP {exc.code}: {detail}", status=exc.code,
                               retry_after=retry_after) from None
        digest = hashlib.sha256(body).hexdigest()
        if headers.get("X-Duet-Content-SHA256") != digest:
            raise ServiceError(f"{self.url}: body does not match its X-Duet-Content-SHA256 (corrupted answer)")
        version, spec_hash = headers.get("X-Duet-Model-Version", ""), headers.get("X-Duet-Spec-Hash", "")
        signed_by = None
        if self.keys is not None:  # before the body is parsed: nothing unauthenticated is read
            message = answer_message(version, spec_hash, digest, request_sha256)
            try:
                signed_by = verify_answer(self.keys, message, headers.get(SIGNATURE_HEADER), f"{self.url}: answer")
            except SignatureError as exc:
                raise UntrustedAnswer(str(exc)) from None
        try:
            metadata = safetensors_metadata(body)
            params = load_safetensors(body)
        except Exception as exc:  # any malformed blob is the service's fault, not ours
            raise ServiceError(f"{self.url}: unreadable safetensors answer ({exc})", status=502) from None
        labels = (metadata.get("model_version", version), metadata.get("spec_hash", spec_hash))
        if signed_by is not None and labels != (version, spec_hash):
            raise UntrustedAnswer(f"{self.url}: answer metadata {labels} differs from its signed headers")
        return Answer(params=params, version=labels[0], spec_hash=labels[1], content_sha256=digest, size=len(body),
                      signed_by=signed_by)
