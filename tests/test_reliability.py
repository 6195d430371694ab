"""Reliability of the parameter service: auth, limits, faults (real `duet serve` processes on loopback).

Every server here is bounded: a few dozen to a few hundred requests, seconds of load.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import select
import shutil
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import NUM_ITEMS, W, train_tiny_run

from duet.device.client import safetensors_metadata
from duet.simulate import ServiceProcess

TOKEN_A = "reliability-token-A-0123456789abcdef"
MAX_BODY_BYTES = 2048  # the guarded service's --max-body-bytes
TOKEN_B = "reliability-token-B-fedcba9876543210"
WRONG = TOKEN_A[:-1] + "X"  # one character off


def call(url: str, method: str, path: str, body: object = None, token: str | None = None,
         headers: dict[str, str] | None = None, raw: bytes | None = None,
         timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection -> (status, lower-cased headers, body)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def error_of(body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "field", "errors"}
    return error


def window_body(window: list[int], device: str = "rel") -> dict:
    return {"device_id": device, "window": window}


def windows(count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, NUM_ITEMS) for _ in range(rng.randrange(1, W + 1))] for _ in range(count)]


def references(url: str, wins: list[list[int]], token: str | None = None) -> tuple[str, dict[tuple, bytes]]:
    """The service's answer for each window (all at once: one forward), and the version that made them."""
    with ThreadPoolExecutor(len(wins)) as pool:
        answers = list(pool.map(lambda w: call(url, "POST", "/v1/parameters", window_body(w), token), wins))
    assert all(status == 200 for status, _, _ in answers)
    versions = {headers["x-duet-model-version"] for _, headers, _ in answers}
    assert len(versions) == 1, versions
    return versions.pop(), {tuple(w): body for w, (_, _, body) in zip(wins, answers, strict=True)}


# ---------------------------------------------------------------- processes and sockets, read from /proc

def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def workers(pid: int) -> list[int]:
    """uvicorn's worker processes under the `duet serve` process `pid`."""
    out = []
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    out.append(child)
        except OSError:
            continue
    return out


def tcp_table() -> list[tuple[int, int, str, int, int]]:
    """(local port, remote port, state, rx queue, inode) of every IPv4 TCP socket."""
    rows = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            rows.append((int(parts[1].split(":")[1], 16), int(parts[2].split(":")[1], 16), parts[3],
                         int(parts[4].split(":")[1], 16), int(parts[9])))
    return rows


def established_connections(pid: int, port: int) -> int:
    """Connections to `port` that process `pid` has accepted."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return sum(1 for local, _, state, _, inode in tcp_table() if local == port and state == "01" and inode in inodes)


def send_raw_requests(port: int, bodies: list[dict]) -> list[socket.socket]:
    """Send whole requests on raw sockets and wait until the server has read every one of them."""
    sockets = []
    for body in bodies:
        data = json.dumps(body).encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"POST /v1/parameters HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        sockets.append(sock)
    ports = {sock.getsockname()[1] for sock in sockets}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # server side of each connection: established, nothing left unread
        read = {remote for local, remote, state, rx, _ in tcp_table()
                if local == port and remote in ports and state == "01" and rx == 0}
        if read == ports:
            return sockets
        time.sleep(0.01)
    raise AssertionError("the server did not read the requests")


def read_raw_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    try:
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        sock.close()


# ---------------------------------------------------------------- services shared by a module's tests

class SharedService:
    """A service that a module's tests share: started on first use, and started again for the next test
    after one stopped it (the shutdown tests do), so every test passes alone (-k) and in any order."""

    def __init__(self, start: Callable[[], ServiceProcess]):
        self.start, self.service = start, None

    def running(self) -> ServiceProcess:
        if self.service is None or self.service.process.poll() is not None:
            self.close()
            self.service = self.start()
        return self.service

    def close(self) -> None:
        if self.service is not None:
            self.service.stop()


def started(service: ServiceProcess, log: Path | None = None, workers: int = 1) -> ServiceProcess:
    """Enter `service` and wait until its `workers` workers have started (their lines in `log`)."""
    service.__enter__()
    service.log_path = log
    deadline = time.monotonic() + 60
    while workers > 1 and log.read_text().count("Application startup complete") < workers:
        assert time.monotonic() < deadline, service.log_tail()
        time.sleep(0.05)
    return service


# ---------------------------------------------------------------- auth, rate limit, body limits

@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    file = tmp_path_factory.mktemp("auth") / "tokens"
    file.write_text(f"# tokens of the reliability tests\n{TOKEN_A}\n\n{TOKEN_B}\n")
    return file


@pytest.fixture(scope="module")
def shared_guarded(duet_run: Path, tokens_file: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("logs") / "guarded.log"
    args = ["--tokens-file", str(tokens_file), "--max-body-bytes", str(MAX_BODY_BYTES), "--rate-limit", "100",
            "--rate-burst", "100", "--request-timeout", "2", "--log-level", "debug"]
    shared = SharedService(lambda: started(ServiceProcess(duet_run, log_file=log, extra_args=args), log))
    yield shared
    shared.close()


@pytest.fixture
def guarded(shared_guarded: SharedService) -> ServiceProcess:
    return shared_guarded.running()


def test_auth_protects_everything_but_probes_and_docs(guarded: ServiceProcess) -> None:
    url = guarded.url
    for method, path, body in (("POST", "/v1/parameters", window_body([1, 2])), ("GET", "/v1/models", None),
                               ("GET", "/metrics", None), ("GET", "/v1/no-such-path", None)):
        status, headers, text = call(url, method, path, body)
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="duet"', (path, status)
        assert error_of(text)["code"] == "unauthorized"
        for bad in (WRONG, TOKEN_A + "0", TOKEN_A[:20], "x"):
            status, headers, text = call(url, method, path, body, token=bad)
            assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"], (path, bad)
        status, _, _ = call(url, method, path, body, headers={"Authorization": f"Basic {TOKEN_A}"})
        assert status == 401
    # A header value that is not ASCII is refused like any wrong token, not a 500.
    status, _, _ = call(url, "GET", "/v1/models", headers={"Authorization": "Bearer caf\u00e9-\u00e9\u00e9\u00e9\u00e9"})
    assert status == 401
    assert call(url, "POST", "/v1/parameters", window_body([1, 2]), token=TOKEN_A)[0] == 200
    assert call(url, "POST", "/v1/parameters", window_body([1, 2]), token=TOKEN_B)[0] == 200
    assert call(url, "GET", "/v1/models", token=TOKEN_A)[0] == 200
    status, _, text = call(url, "GET", "/metrics", token=TOKEN_A)
    assert status == 200 and b'status="401"' in text
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert call(url, "GET", path)[0] == 200, path


def test_auth_is_in_the_schema_and_schemathesis_finds_no_hole(guarded: ServiceProcess) -> None:
    from test_cloud import run_schemathesis

    schema = json.loads(call(guarded.url, "GET", "/openapi.json")[2])
    assert schema["components"]["securitySchemes"] == {"bearer": {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearer"]
        ["description"]}}
    for path, method in (("/v1/parameters", "post"), ("/v1/models", "get"), ("/metrics", "get")):
        operation = schema["paths"][path][method]
        assert operation["security"] == [{"bearer": []}] and {"401", "429"} <= set(operation["responses"])
    for path in ("/healthz", "/readyz"):
        assert "security" not in schema["paths"][path]["get"]
    # With the token; schemathesis' ignored_auth check also sends requests without it.
    failures, statuses = run_schemathesis(guarded.url, examples=15, headers={"Authorization": f"Bearer {TOKEN_A}"},
                                          max_body_bytes=MAX_BODY_BYTES)
    assert failures == []
    assert statuses[("POST /v1/parameters", 200)] > 0 and statuses[("POST /v1/parameters", 401)] > 0, statuses


def test_rate_limit_per_token(guarded: ServiceProcess) -> None:
    time.sleep(1.0)  # the tests before may have filled a 1 s window (schemathesis sends ~100 requests a second)
    host, port = guarded.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {TOKEN_B}", "Content-Type": "application/json"}
    statuses, retry_after = [], []
    started = time.monotonic()
    for _ in range(300):  # keep-alive, back to back: far faster than 100/s
        connection.request("POST", "/v1/parameters", body=json.dumps(window_body([3, 4])), headers=headers)
        response = connection.getresponse()
        body = response.read()
        statuses.append(response.status)
        if response.status == 429:
            assert error_of(body)["code"] == "rate_limited"
            retry_after.append(int(response.getheader("Retry-After")))
    elapsed = time.monotonic() - started
    connection.close()
    counts = Counter(statuses)
    assert set(counts) <= {200, 429}, counts
    assert 90 <= counts[200] <= 100 * (int(elapsed) + 1), (counts, elapsed)  # 100 in any second
    if len(statuses) / elapsed > 150:  # a loaded machine may not send faster than the bucket refills
        assert counts[429] > 0, (counts, elapsed)
    assert all(wait >= 1 for wait in retry_after)
    # Another token has its own window; this one's empties after its Retry-After (1 s).
    assert call(guarded.url, "POST", "/v1/parameters", window_body([3, 4]), token=TOKEN_A)[0] == 200
    time.sleep(1.0)
    assert call(guarded.url, "POST", "/v1/parameters", window_body([3, 4]), token=TOKEN_B)[0] == 200


def padded(size: int) -> bytes:
    body = json.dumps(window_body([1, 2, 3])).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_body_limits(guarded: ServiceProcess) -> None:
    url, port = guarded.url, int(guarded.url.rsplit(":", 1)[1])
    assert call(url, "POST", "/v1/parameters", raw=padded(2048), token=TOKEN_A)[0] == 200
    status, headers, text = call(url, "POST", "/v1/parameters", raw=padded(2049), token=TOKEN_A)
    assert status == 413 and error_of(text) | {"errors": []} == {
        "code": "body_too_large", "field": "body", "errors": [],
        "message": "body of 2049 bytes is over the limit of 2048 bytes"}
    assert headers["connection"] == "close"

    # A huge Content-Length is refused at once, without waiting for (or reading) the body.
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST /v1/parameters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN_A.encode() +
                 b"\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{")
    assert read_raw_response(sock)[0] == 413

    # Chunked (no Content-Length): read up to the limit, then refused.
    def chunked(body: bytes) -> int:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /v1/parameters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN_A.encode() +
                     b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(body), 500):
            piece = body[start : start + 500]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        return read_raw_response(sock)[0]

    assert chunked(padded(1500)) == 200
    assert chunked(padded(4096)) == 413

    # A body that never finishes: 408 at the request timeout (2 s here), not a connection held forever.
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = time.monotonic()
    sock.sendall(b"POST /v1/parameters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN_A.encode() +
                 b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"device")
    status, _, text = read_raw_response(sock)
    assert status == 408 and error_of(text)["code"] == "request_timeout"
    # Not before its deadline; a server that never answered fails on the socket's 10 s timeout.
    assert time.monotonic() - started >= 2


def test_tokens_never_reach_the_logs(guarded: ServiceProcess) -> None:
    """Stop the guarded server and read everything it wrote (log level debug): last in this file, the
    log holds every request of the tests above."""
    status, _, text = call(guarded.url, "GET", "/v1/models", token=WRONG)
    assert status == 401 and WRONG.encode() not in text
    call(guarded.url, "POST", "/v1/parameters", {"device_id": "x", "window": "not a list"}, token=TOKEN_A)
    assert guarded.stop() == 0
    log = guarded.log_path.read_text()
    assert "Application startup complete" in log and "auth on (2 tokens)" in log  # the log was captured
    for secret in (TOKEN_A, TOKEN_B, WRONG, TOKEN_A[:12]):
        assert secret not in log


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_rate_limit_per_client_ip_without_auth(duet_run: Path) -> None:
    from fastapi.testclient import TestClient

    from duet.cloud import Settings, create_app

    # 0.5/s, burst 2: at most 2 requests in any 4 s.
    with TestClient(create_app(Settings(run=duet_run, rate_limit=0.5, rate_burst=2, watch_interval_s=0))) as client:
        statuses = [client.get("/v1/models").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]  # the window is checked before anything else
        answer = client.get("/v1/models")
        # Until the oldest request leaves the 4 s window.
        assert answer.status_code == 429 and answer.headers["retry-after"] == "4"
        assert error_of(answer.content)["message"] == "rate limit of 2 requests per 4 s exceeded; retry later"
        assert client.get("/healthz").status_code == 200  # probes are never limited


def test_memory_windows_are_per_client() -> None:
    import asyncio

    from duet.cloud.ratelimit import RateLimits

    async def main() -> list[float]:
        limits = RateLimits(rate=3.0, burst=3.0)
        return [await limits.admit(key) for key in ("a", "a", "a", "a", "b")]

    waits = asyncio.run(main())
    assert waits[:3] == [0.0] * 3 and 0.9 < waits[3] <= 1.0 and waits[4] == 0.0  # "b" has its own window


def test_bad_token_settings_fail_in_one_line_without_the_token(duet_run: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from duet.cli import app

    monkeypatch.setenv("DUET_TOKENS", "tooshort-secret")
    result = CliRunner().invoke(app, ["serve", "--run", str(duet_run)])
    assert result.exit_code == 2 and "DUET_TOKENS: token 1 is not a bearer token" in result.output
    assert "tooshort-secret" not in result.output and "Traceback" not in result.output
    monkeypatch.delenv("DUET_TOKENS")
    empty = tmp_path / "tokens"
    empty.write_text("# nothing\n\n")
    result = CliRunner().invoke(app, ["serve", "--run", str(duet_run), "--tokens-file", str(empty)])
    assert result.exit_code == 2 and "no tokens in the file" in result.output
    result = CliRunner().invoke(app, ["serve", "--run", str(duet_run), "--tokens-file", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "cannot read the tokens file" in result.output


# ---------------------------------------------------------------- connections that never send a request

HEAD_TIMEOUT = 1.0  # the idle-socket server's --header-timeout
SERVER_NOFILE = 256  # its open-file limit (ulimit -n), as in the probe that found 1,100 idle sockets enough


def is_closed(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (EOF or reset); never blocks."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset: the connection cap aborted it
        return True


def test_idle_sockets_are_cut_and_a_good_client_is_still_served(duet_run: Path, tmp_path: Path) -> None:
    """1,100 sockets that connect and send nothing, against a server whose open-file limit is 256: the
    connection cap (lowered to fit the limit) closes the oldest idle ones as new ones come, a client that
    sends its request is answered meanwhile, and every idle socket is closed by the head deadline."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log = tmp_path / "serve.log"
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_NOFILE, hard))  # the server inherits this limit
    try:
        service = ServiceProcess(duet_run, log_file=log, extra_args=[
            "--header-timeout", str(HEAD_TIMEOUT), "--log-level", "info"])
        service.__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    idle_count = 1100
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, idle_count + 200)), hard))  # for this side
    port, idle = service.port, []
    try:
        assert "--max-connections 1000 lowered to 192 per worker" in log.read_text()
        for _ in range(idle_count):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        last_opened = time.monotonic()
        latencies = []
        for i in range(20):  # while the idle sockets are held, a good client is answered each time
            started = time.monotonic()
            status, _, _ = call(service.url, "POST", "/v1/parameters", window_body([i + 1]), timeout=5)
            latencies.append(time.monotonic() - started)
            assert status == 200
        held = established_connections(service.process.pid, port)
        assert 0 < held <= 192  # the newest idle ones are held (until their deadline), never more than the cap
        while not all(is_closed(sock) for sock in idle):
            assert time.monotonic() < last_opened + HEAD_TIMEOUT + 5, sum(not is_closed(sock) for sock in idle)
            time.sleep(0.02)
        all_cut = time.monotonic() - last_opened
        assert all_cut <= HEAD_TIMEOUT + 1.0
        assert established_connections(service.process.pid, port) == 0

        # A head that never finishes, trickled a byte at a time: 408 at the deadline (bytes do not extend it).
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        trickle_started = time.monotonic()
        answered = select.poll()
        answered.register(slow, select.POLLIN)
        for byte in b"POST /v1/parameters HTTP/1.1\r\nHost: x\r\n":  # 37 bytes: 1.85 s, past the deadline
            if answered.poll(50):  # the answer came: stop sending
                break
            slow.send(bytes([byte]))
        status, _, text = read_raw_response(slow)
        trickle_cut = time.monotonic() - trickle_started
        assert status == 408 and error_of(text)["code"] == "request_timeout"
        assert HEAD_TIMEOUT - 0.05 <= trickle_cut <= HEAD_TIMEOUT + 0.5, trickle_cut
        assert call(service.url, "GET", "/readyz")[0] == 200
        print(f"idle: {idle_count} sockets against ulimit -n {SERVER_NOFILE}; good client 20/20 answered, p50 "
              f"{sorted(latencies)[10] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; {held} idle held "
              f"(cap 192); all closed {all_cut:.2f} s after the last opened; trickled head: 408 after "
              f"{trickle_cut:.2f} s")
    finally:
        for sock in idle:
            sock.close()
        service.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    text = log.read_text()
    assert "closed connections:" in text and "evicted (the connection cap was reached)" in text
    assert "Traceback" not in text and "Too many open files" not in text and "out of system resource" not in text


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_head_deadline_and_connection_cap_on_both_http_protocols(parser: str) -> None:
    """The guard over each of uvicorn's HTTP/1.1 protocols, in a server in this process with a plain ASGI
    app: idle sockets evicted and cut, keep-alive re-armed, partial and oversized heads answered, and a
    connection over the cap closed at once when every other one is busy with a request."""
    import asyncio
    import functools

    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from duet.cloud.connections import MAX_HEAD_BYTES, ConnectionGuard, HeadGuard
    from duet.simulate import free_port

    base = {"httptools": HttpToolsProtocol, "h11": H11Protocol}[parser]
    guard, timeout, cap = ConnectionGuard(header_timeout=0.5, max_connections=8), 0.5, 8
    release: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def app(scope, _receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/hold":
            release.append((asyncio.get_running_loop(), asyncio.Event()))
            await release[-1][1].wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", loop="asyncio",
        timeout_keep_alive=60,  # longer than the head deadline: the deadline must close idle keep-alives
        http=functools.partial(type(f"Guarded{base.__name__}", (HeadGuard, base), {}), guard=guard)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    connect = lambda: socket.create_connection(("127.0.0.1", port), timeout=5)  # noqa: E731
    try:
        idle = [connect() for _ in range(30)]
        time.sleep(0.1)
        assert all(call(url, "GET", "/", timeout=5)[0] == 200 for _ in range(5))
        assert guard.open <= cap and sum(is_closed(sock) for sock in idle) >= 30 - cap  # the oldest evicted
        time.sleep(timeout + 0.3)
        assert all(is_closed(sock) for sock in idle) and guard.open == 0  # the rest cut at the deadline

        # keep-alive: two requests on one connection are served; idle afterwards, it is cut at the deadline
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for _ in range(2):
            kept.request("GET", "/")
            assert kept.getresponse().read() == b"ok"
        time.sleep(timeout + 0.3)
        assert is_closed(kept.sock)
        kept.close()

        partial = connect()
        partial.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        status, _, text = read_raw_response(partial)
        assert status == 408 and error_of(text)["code"] == "request_timeout"

        oversized = connect()
        oversized.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * (MAX_HEAD_BYTES + 1024))
        status, _, text = read_raw_response(oversized)
        if parser == "httptools":
            assert status == 431 and error_of(text)["code"] == "header_too_large"
        else:  # h11 refuses a head over its own, lower limit (16 KiB) first
            assert status == 400

        held = [connect() for _ in range(cap)]
        for sock in held:
            sock.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        while len(release) < cap:
            time.sleep(0.01)
        extra = connect()  # every connection is busy with a request: this one is closed at once
        extra.settimeout(2)
        try:
            assert extra.recv(1) == b""
        except ConnectionResetError:
            pass
        for loop, event in release:
            loop.call_soon_threadsafe(event.set)
        assert all(read_raw_response(sock)[0] == 200 for sock in held)
    finally:
        server.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------- queue, timeout, graceful shutdown (one worker)

HOLD, TIMEOUT = 1.0, 2.5  # the slow server: each forward holds its answers HOLD s; requests expire after TIMEOUT s


@pytest.fixture(scope="module")
def shared_slow(duet_run: Path):
    # 2 windows a forward, 4 may wait: 2 windows answered after HOLD, 2 after 2 HOLD, 2 cut at TIMEOUT.
    shared = SharedService(lambda: started(ServiceProcess(
        duet_run, max_batch=2, extra_args=["--max-queue", "4", "--request-timeout", str(TIMEOUT)],
        env={"DUET_DEBUG_DELAY_MS": str(int(HOLD * 1000))})))
    yield shared
    shared.close()


@pytest.fixture
def slow(shared_slow: SharedService) -> ServiceProcess:
    return shared_slow.running()


def test_bounded_queue_and_request_timeout(slow: ServiceProcess) -> None:
    barrier = threading.Barrier(12)

    def one(i: int) -> tuple[int, dict, bytes, float, float]:
        barrier.wait()
        started = time.monotonic()
        status, headers, body = call(slow.url, "POST", "/v1/parameters", window_body([i + 1]))
        return status, headers, body, started, time.monotonic()

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    counts = Counter(status for status, *_ in results)
    # 1-2 windows in the first forward (answered after HOLD), 4 in the queue: 2 more answered after
    # 2 HOLD, the last 2 past their TIMEOUT deadline; everyone else is turned away at once.
    assert set(counts) == {200, 503, 504}, counts
    assert counts[200] >= 2 and counts[504] >= 1 and counts[503] >= 5, counts
    first_answer = min(ended for status, _, _, _, ended in results if status == 200)
    for status, headers, body, started, ended in results:
        if status == 503:
            assert error_of(body)["code"] == "overloaded" and headers["retry-after"] == "1"
            # Refused while the first forward still held its answers: at once, never queued.
            assert ended < first_answer
        elif status == 504:
            assert error_of(body)["code"] == "timeout"
            assert ended - started >= TIMEOUT  # the server's deadline starts after the client's clock
    deadline = time.monotonic() + 30  # the cut windows' forward ends on its own time; then nothing waits
    while "duet_queue_depth 0.0" not in call(slow.url, "GET", "/metrics")[2].decode():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def assert_sigterm_answers_in_flight(service: ServiceProcess, wins: list[list[int]]) -> None:
    """Send `wins` raw, SIGTERM the service while they are in flight: every one gets its 200 answer."""
    _, expected = references(service.url, wins)
    sockets = send_raw_requests(service.port, [window_body(w) for w in wins])
    stopper = threading.Thread(target=service.stop, kwargs={"sig": signal.SIGTERM})
    stopper.start()
    answers = [read_raw_response(sock) for sock in sockets]
    stopper.join()
    assert [status for status, _, _ in answers] == [200] * len(wins)
    assert [body for _, _, body in answers] == [expected[tuple(w)] for w in wins]
    # uvicorn re-raises the signal once shut down: "terminated by SIGTERM", after a clean shutdown.
    assert service.process.returncode in (0, -signal.SIGTERM), service.final_log


def test_sigterm_finishes_in_flight_requests(slow: ServiceProcess) -> None:
    """Requests in flight when SIGTERM arrives are all answered (stops the slow server)."""
    assert_sigterm_answers_in_flight(slow, [[5], [6, 7]])
    assert "Traceback" not in slow.final_log, slow.final_log
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", slow.port), timeout=2)


# ---------------------------------------------------------------- two workers: SIGKILL one under load, SIGTERM all

@pytest.fixture(scope="module")
def shared_two_workers(duet_run: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("logs") / "workers.log"
    shared = SharedService(lambda: started(ServiceProcess(
        duet_run, workers=2, log_file=log, extra_args=["--log-level", "info"],
        env={"DUET_DEBUG_DELAY_MS": "300"}), log, workers=2))
    yield shared
    shared.close()


@pytest.fixture
def two_workers(shared_two_workers: SharedService) -> ServiceProcess:
    return shared_two_workers.running()


RETRYABLE = (ConnectionError, http.client.RemoteDisconnected, http.client.IncompleteRead, TimeoutError)


def test_killing_a_worker_under_load_loses_no_request(two_workers: ServiceProcess) -> None:
    url, port = two_workers.url, two_workers.port
    wins = windows(16, seed=1)
    version, expected = references(url, wins)
    stop = threading.Event()
    answered, interrupted, wrong = Counter(), Counter(), []

    def client(n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            window = rng.choice(wins)
            for _attempt in range(50):  # a device retries on connection errors
                try:
                    status, headers, body = call(url, "POST", "/v1/parameters", window_body(window))
                    break
                except RETRYABLE:
                    interrupted[n] += 1
                    time.sleep(0.05)
            else:
                wrong.append(("no answer after 50 attempts", window))
                return
            answered[n] += 1
            if status != 200 or body != expected[tuple(window)] or headers["x-duet-model-version"] != version:
                wrong.append((status, window, body[:200]))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.8)
        before = workers(two_workers.pid)
        assert len(before) == 2
        deadline = time.monotonic() + 5
        while True:  # the victim: a worker holding connections (requests in flight) right now
            victim = max(before, key=lambda pid: established_connections(pid, port))
            if established_connections(victim, port) > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        killed_at = sum(answered.values())
        deadline = time.monotonic() + 60
        while two_workers.log_path.read_text().count("Application startup complete") < 3:  # its replacement
            assert time.monotonic() < deadline, two_workers.log_tail()
            time.sleep(0.05)
        time.sleep(1.0)  # load on both workers again
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    after = workers(two_workers.pid)
    assert victim not in after and len(after) == 2
    assert wrong == []
    assert sum(interrupted.values()) >= 1, "the kill interrupted no request: the test did not test"
    assert sum(answered.values()) > killed_at + 10  # the service went on answering
    print(f"\nkill: {sum(answered.values())} answers checked bitwise, {killed_at} before the SIGKILL, "
          f"{sum(interrupted.values())} connection errors retried, 0 wrong")


def test_sigterm_with_two_workers_finishes_in_flight_requests(two_workers: ServiceProcess) -> None:
    assert_sigterm_answers_in_flight(two_workers, windows(6, seed=2))
    assert "Traceback" not in two_workers.log_path.read_text()


# ---------------------------------------------------------------- hot reload under load

def test_hot_reload_under_load_drops_nothing(duet_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    from duet.export import model_version

    run_b = train_tiny_run(tiny_data, tmp_path / "run-b", seed=1)
    link = tmp_path / "current"
    link.symlink_to(duet_run)

    def point(target: Path) -> None:  # atomic: a reader sees the old or the new target, never neither
        tmp = tmp_path / "current.tmp"
        tmp.symlink_to(target)
        os.replace(tmp, link)

    log = tmp_path / "service.log"
    with ServiceProcess(link, log_file=log, extra_args=["--watch-interval", "0.2"]) as service:
        wins = windows(12, seed=3)
        version_a, expected_a = references(service.url, wins)
        assert version_a == model_version(duet_run)
        seen: dict[int, list[tuple[str, tuple, bytes, str]]] = {n: [] for n in range(6)}
        failures = []
        stop = threading.Event()

        def client(n: int) -> None:
            rng = random.Random(n)
            while not stop.is_set():
                window = rng.choice(wins)
                try:
                    status, headers, body = call(service.url, "POST", "/v1/parameters", window_body(window))
                except OSError as exc:  # no retries here: a swap must not break a single request
                    failures.append(repr(exc))
                    continue
                if status != 200:
                    failures.append((status, body[:200]))
                    continue
                seen[n].append((headers["x-duet-model-version"], tuple(window), body,
                                safetensors_metadata(body)["model_version"]))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.7)
            point(run_b)
            version_b = model_version(run_b)
            deadline = time.monotonic() + 30
            while not all(sum(v == version_b for v, *_ in answers) >= 5 for answers in seen.values()):
                assert time.monotonic() < deadline, service.log_tail()
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        _, expected_b = references(service.url, wins)
        assert failures == []
        expected = {version_a: expected_a, version_b: expected_b}
        for answers in seen.values():
            versions = [version for version, *_ in answers]
            switched = versions.index(version_b)
            assert switched > 0 and set(versions[:switched]) == {version_a} and set(versions[switched:]) == {version_b}
            for version, window, body, claimed in answers:
                assert claimed == version and body == expected[version][window]
        assert json.loads(call(service.url, "GET", "/v1/models")[2])["models"][0]["version"] == version_b
        versions = Counter(version for answers in seen.values() for version, *_ in answers)
        print(f"\nreload: {sum(versions.values())} answers, {versions[version_a]} from {version_a}, "
              f"{versions[version_b]} from {version_b}, every one matching its version bitwise, 0 failed")

        # A damaged run is refused in one log line; the service keeps the version it has.
        broken = tmp_path / "run-broken"
        shutil.copytree(run_b, broken)
        with open(broken / "model.safetensors", "r+b") as f:
            f.truncate(100)
        point(broken)
        deadline = time.monotonic() + 10
        while "reload of" not in service.log_tail():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, headers, _ = call(service.url, "POST", "/v1/parameters", window_body(wins[0]))
        assert status == 200 and headers["x-duet-model-version"] == version_b
        assert 'duet_model_reloads_total{outcome="failed"} 1.0' in call(service.url, "GET", "/metrics")[2].decode()
    lines = [line for line in service.final_log.splitlines() if "reload of" in line]
    assert len(lines) == 1 and "sha256 does not match" in lines[0] and "Traceback" not in service.final_log


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_hot_reload_to_a_run_of_another_task(duet_run: Path, image_run: Path, tmp_path: Path) -> None:
    """A token run swapped for a float-sample run: the request body, the OpenAPI schema and /v1/models
    follow the new run's SampleSpec, and its answers are its generator's."""
    import numpy as np
    from fastapi.testclient import TestClient
    from safetensors.numpy import load as load_safetensors

    from duet.cloud import Settings, create_app
    from duet.cloud.generation import GeneratorService
    from duet.export import model_version

    link = tmp_path / "current"
    link.symlink_to(duet_run)

    def request_properties(client: TestClient) -> dict:
        schema = client.get("/openapi.json").json()
        return schema["paths"]["/v1/parameters"]["post"]["requestBody"]["content"]["application/json"]["schema"]

    with TestClient(create_app(Settings(run=link, watch_interval_s=0.05))) as client:
        assert client.post("/v1/parameters", json=window_body([1, 2])).status_code == 200
        assert "window" in request_properties(client)["properties"]  # cached until a swap
        tmp = tmp_path / "current.tmp"
        tmp.symlink_to(image_run)
        os.replace(tmp, link)
        deadline = time.monotonic() + 60
        while (info := client.get("/v1/models").json()["models"][0])["version"] != model_version(image_run):
            assert time.monotonic() < deadline, info
            time.sleep(0.05)
        service = GeneratorService(image_run)
        width = int(np.prod(service.sample.shape))
        assert info["task"] == service.task and info["sample"] == service.sample.to_json()
        assert info["facts"] == service.config.facts
        schema = request_properties(client)
        assert set(schema["properties"]) == {"device_id", "samples", "embedding", "dtype", "version"}
        assert schema["properties"]["samples"]["items"]["maxItems"] == width
        assert schema["oneOf"] == [{"required": ["samples"]}, {"required": ["embedding"]}]

        samples = np.random.default_rng(0).random((2, width), dtype=np.float32)
        answer = client.post("/v1/parameters", json={"device_id": "d", "samples": samples.tolist()})
        assert answer.status_code == 200 and answer.headers["x-duet-model-version"] == model_version(image_run)
        rows, mask = service.raw_rows(samples)
        expected = service.spec.unflatten(service.generate(rows[None], mask[None]))
        for name, value in load_safetensors(answer.content).items():
            np.testing.assert_allclose(value, expected[name][0], rtol=0, atol=1e-6)
        refused = client.post("/v1/parameters", json=window_body([1, 2]))
        assert refused.status_code == 422
        error = error_of(refused.content)
        assert error["field"] == "window" and error["message"].startswith("this service's model takes `samples`")
