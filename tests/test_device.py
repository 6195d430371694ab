"""The device runtime: torch-free import, bundle verification, fallbacks, retries, answer signatures."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import NUM_ITEMS, L, W
from safetensors.numpy import save as save_safetensors

from duet.device import GLOBAL, LAST, SERVICE, Bundle, DeviceRuntime, Keyring
from duet.errors import ArtifactError
from duet.signing import SIGNATURE_HEADER, SigningKey, answer_message, sign_answers, sign_manifest
from duet.simulate import free_port

# What a device must never need (the training, plotting and serving stack).
NOT_ON_A_DEVICE = ("torch", "pandas", "matplotlib", "fastapi", "typer", "pydantic")


def run_on_a_device(body: str) -> None:
    """Run `body` in a fresh interpreter where the training stack cannot be imported; it must print ok."""
    script = textwrap.dedent(f"""
        import sys

        BLOCKED = {NOT_ON_A_DEVICE!r}

        class NotOnADevice:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(name + " is not available on a device")

        sys.meta_path.insert(0, NotOnADevice())
    """) + textwrap.dedent(body) + textwrap.dedent("""
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_device_package_imports_and_scores_without_the_training_stack(bundle_dir: Path) -> None:
    run_on_a_device(f"""
        import numpy as np
        from duet.device import Bundle, DeviceRuntime
        runtime = DeviceRuntime({str(bundle_dir)!r}, "http://127.0.0.1:9", "d", retries=0)
        logits = runtime.score([1, 2, 3], np.arange(1, 6))
        assert logits.shape == (5,), logits.shape
    """)


def test_bundle_refuses_tampered_files(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    Bundle(copy)
    with open(copy / "theta_g.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x7f")
    with pytest.raises(ArtifactError, match="sha256"):
        Bundle(copy)
    with pytest.raises(ArtifactError, match="not a duet bundle"):
        Bundle(tmp_path)


def test_raw_item_ids_map_to_internal_ids(bundle_dir: Path) -> None:
    bundle = Bundle(bundle_dir)
    raw = bundle.item_raw[[3, 1, 7]]
    np.testing.assert_array_equal(bundle.internal_ids([*raw, 123_456]), [3, 1, 7, 0])  # unknown -> padding


def test_a_history_is_encoded_left_aligned(bundle_dir: Path) -> None:
    """The bundle's graph input description: the last L ids oldest first, padding dropped, then 0-padded."""
    bundle = Bundle(bundle_dir)
    ids = list(range(1, L + 3))
    np.testing.assert_array_equal(bundle.encode("history", [0, *ids]), [ids[-L:]])
    np.testing.assert_array_equal(bundle.encode("history", [5, 6, 0, 0]), [[5, 6] + [0] * (L - 2)])
    np.testing.assert_array_equal(bundle.encode("history", []), [[0] * L])
    assert bundle.encode("items", [[3], [4]]).shape == (2,)
    with pytest.raises(ValueError, match="no input 'x'"):
        bundle.encode("x", [1])


def test_the_bundle_describes_its_sample_and_graph(bundle_dir: Path) -> None:
    bundle = Bundle(bundle_dir)
    assert bundle.sample.field == "window" and (bundle.sample.low, bundle.sample.high) == (1, NUM_ITEMS - 1)
    assert [i.name for i in bundle.inputs] == ["history", "items"] and bundle.outputs == ("logits",)
    features = bundle.features([3, 1, 3])
    assert features.shape == (3, bundle.feature_dim) and np.array_equal(features[0], features[2])
    with pytest.raises(ValueError, match="outside"):
        bundle.features([NUM_ITEMS])
    logits = bundle.run({"history": [1, 2], "items": [4, 5, 6]}, bundle.theta_g)["logits"]
    assert logits.shape == (3,)
    with pytest.raises(ValueError, match="graph inputs"):
        bundle.run({"history": [1, 2]}, bundle.theta_g)


def test_observe_keeps_the_last_w_items(bundle_dir: Path) -> None:
    runtime = DeviceRuntime(bundle_dir, "http://127.0.0.1:9", "d")
    for item in [1, 0, 2, 3, 4, 5, 6]:
        runtime.observe(item)
    assert runtime.window == [2, 3, 4, 5, 6][-W:]


# ---------------------------------------------------------------- a scripted fake service

class FakeService:
    """Answers POST /v1/parameters from a script, signing as the real service does when given a key.

    A step is 'ok', 'ok-other-spec', 'corrupt' (body differs from its sha256 header), an
    HTTP status, (status, Retry-After), or, with a key, a forgery: 'unsigned', 'tampered'
    (one byte changed, sha256 header recomputed), 'other-key' (signed by another key),
    'other-request' (a genuine answer, signed for another device's request).
    """

    def __init__(self, bundle: Bundle, script: list[str | int | tuple[int, str]], key: SigningKey | None = None,
                 version: str | None = None):
        self.bundle, self.script, self.requests, self.headers = bundle, list(script), [], []
        self.version = version or bundle.version  # the model version its answers name
        self.key, self.other_key = key, SigningKey.generate()
        rng = np.random.default_rng(0)
        self.params = {n: rng.normal(size=s).astype(np.float32) for n, s in bundle.spec.entries}

    def answer(self, spec_hash: str) -> bytes:
        return save_safetensors(self.params, metadata={"spec_hash": spec_hash, "model_version": self.version})

    def signature(self, spec_hash: str, digest: str, request: bytes, step: object) -> str | None:
        if self.key is None or step == "unsigned":
            return None
        key = self.other_key if step == "other-key" else self.key
        asked = request.replace(b'"device_id":"', b'"device_id":"another-') if step == "other-request" else request
        return sign_answers(key, [answer_message(self.version, spec_hash, digest, hashlib.sha256(asked).hexdigest())])[0]

    @contextmanager
    def running(self) -> Iterator[str]:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_POST(self) -> None:
                request = self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests.append(json.loads(request))
                fake.headers.append(dict(self.headers))
                step = fake.script.pop(0) if fake.script else "ok"
                if isinstance(step, int | tuple):
                    status, retry_after = step if isinstance(step, tuple) else (step, None)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                    self.end_headers()
                    self.wfile.write(b'{"error": {"code": "scripted", "message": "scripted failure", '
                                     b'"field": null, "errors": []}}')
                    return
                spec_hash = fake.bundle.spec.hash if step != "ok-other-spec" else "0123456789abcdef"
                body = fake.answer(spec_hash)
                digest = hashlib.sha256(body).hexdigest()
                signature = fake.signature(spec_hash, digest, request, step)
                if step in ("corrupt", "tampered"):
                    body = body[:-1] + bytes([body[-1] ^ 1])
                if step == "tampered":
                    digest = hashlib.sha256(body).hexdigest()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("X-Duet-Model-Version", fake.version)
                self.send_header("X-Duet-Spec-Hash", spec_hash)
                self.send_header("X-Duet-Content-SHA256", digest)
                if signature is not None:
                    self.send_header(SIGNATURE_HEADER, signature)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return Bundle(bundle_dir)


def test_global_head_when_the_service_is_down(bundle: Bundle) -> None:
    runtime = DeviceRuntime(bundle, f"http://127.0.0.1:{free_port()}", "d", retries=1, backoff=0.001, timeout=1)
    assert runtime.refresh([1, 2, 3]) == GLOBAL
    assert runtime.source == GLOBAL and runtime.version == bundle.version
    assert "2 attempts" in runtime.last_error
    candidates = np.arange(1, 8)
    expected = bundle.run({"history": [4, 5], "items": candidates}, bundle.theta_g)["logits"]
    np.testing.assert_array_equal(runtime.score([4, 5], candidates), expected)
    np.testing.assert_array_equal(runtime.score(history=[4, 5], items=candidates), expected)


def test_keeps_the_last_parameters_after_a_failure(bundle: Bundle) -> None:
    fake = FakeService(bundle, ["ok"])
    runtime = DeviceRuntime(bundle, "unused", "d", retries=0)
    with fake.running() as url:
        runtime.client.url = url + "/v1/parameters"
        for item in [3, 4, 5]:
            runtime.observe(item)
        assert runtime.refresh() == SERVICE
    assert fake.requests == [{"device_id": "d", "window": [3, 4, 5], "dtype": "fp32", "version": bundle.version}]
    assert runtime.version == runtime.bundle.version and runtime.adaptation_seconds > 0
    received = {n: p.copy() for n, p in runtime.params.items()}
    for name, value in fake.params.items():
        np.testing.assert_array_equal(received[name][0], value)
    # The service is gone now: the device keeps what it had.
    assert runtime.refresh() == LAST
    assert runtime.version == runtime.bundle.version and runtime.last_error
    for name, value in received.items():
        np.testing.assert_array_equal(runtime.params[name], value)
    candidates = np.arange(1, NUM_ITEMS)
    np.testing.assert_array_equal(runtime.score([7], candidates),
                                  bundle.run({"history": [7], "items": candidates}, received)["logits"])


def test_privacy_mode_uploads_item_embeddings_not_ids(bundle: Bundle) -> None:
    fake = FakeService(bundle, ["ok", "ok"])
    with fake.running() as url:
        runtime = DeviceRuntime(bundle, url, "d", retries=0, privacy=True)
        for item in [3, 4, 5]:
            runtime.observe(item)
        assert runtime.refresh() == SERVICE
        assert runtime.refresh([9, 0, 1, 2, 3, 4, 5]) == SERVICE  # cut to the last W, padding dropped
    first, second = fake.requests
    assert set(first) == {"device_id", "embedding", "dtype", "version"}  # no item ids on the wire
    np.testing.assert_array_equal(np.array(first["embedding"], dtype=np.float32), bundle.features([3, 4, 5]))
    np.testing.assert_array_equal(np.array(second["embedding"], dtype=np.float32),
                                  bundle.features([2, 3, 4, 5][-W:]))
    candidates = np.arange(1, NUM_ITEMS)
    head = {name: value[None] for name, value in fake.params.items()}
    np.testing.assert_array_equal(runtime.score([7], candidates),
                                  bundle.run({"history": [7], "items": candidates}, head)["logits"])


def test_the_client_sends_exactly_one_form_of_the_window(bundle: Bundle) -> None:
    client = DeviceRuntime(bundle, "http://127.0.0.1:9", "d").client
    with pytest.raises(ValueError, match="exactly one of window, samples and embedding"):
        client.fetch("d", [1], embedding=[[0.5]])
    with pytest.raises(ValueError, match="got none"):
        client.fetch("d")


@pytest.mark.parametrize("failure", ["ok-other-spec", "corrupt", 500, 409])
def test_unusable_answers_fall_back(bundle: Bundle, failure: str | int) -> None:
    fake = FakeService(bundle, [failure])
    with fake.running() as url:
        runtime = DeviceRuntime(bundle, url, "d", retries=0)
        assert runtime.refresh([1]) == GLOBAL
        assert runtime.params is bundle.theta_g and runtime.last_error


def test_retries_with_backoff_then_succeeds(bundle: Bundle) -> None:
    fake = FakeService(bundle, [503, "corrupt", "ok"])
    with fake.running() as url:
        runtime = DeviceRuntime(bundle, url, "d", retries=2, backoff=0.001)
        assert runtime.refresh([2]) == SERVICE
    assert len(fake.requests) == 3


def test_client_errors_are_not_retried(bundle: Bundle) -> None:
    fake = FakeService(bundle, [422, "ok"])
    with fake.running() as url:
        runtime = DeviceRuntime(bundle, url, "d", retries=3, backoff=0.001)
        assert runtime.refresh([2]) == GLOBAL
    assert len(fake.requests) == 1 and "HTTP 422" in runtime.last_error


def test_rate_limited_and_overloaded_answers_are_retried_after_retry_after(bundle: Bundle,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import duet.device.client

    waits: list[float] = []  # what the client slept before each retry, instead of sleeping
    monkeypatch.setattr(duet.device.client, "time", types.SimpleNamespace(sleep=waits.append, monotonic=time.monotonic))
    fake = FakeService(bundle, [(429, "1"), (503, "1"), 503, "ok"])
    with fake.running() as url:
        runtime = DeviceRuntime(bundle, url, "d", retries=3, backoff=0.001, timeout=0.3, token="device-token-0123456789")
        assert runtime.refresh([2]) == SERVICE
    assert len(fake.requests) == 4
    # Each Retry-After stretches the backoff (0.001, 0.002, 0.004), capped at the 0.3 s timeout.
    assert waits == [0.3, 0.3, 0.004]
    assert all(h["Authorization"] == "Bearer device-token-0123456789" for h in fake.headers)
    assert "device-token" not in repr(runtime.client)


def test_empty_window_uses_the_global_head_without_asking(bundle: Bundle) -> None:
    fake = FakeService(bundle, ["ok"])
    with fake.running() as url:
        runtime = DeviceRuntime(bundle, url, "d", retries=0)
        assert runtime.refresh([3]) == SERVICE
        assert runtime.refresh([0, 0]) == GLOBAL  # nothing observed: the service would refuse it (422)
    assert len(fake.requests) == 1
    assert runtime.params is bundle.theta_g and runtime.last_error is None
    assert runtime.refresh([4]) == GLOBAL  # the service is gone and there is no service head to keep


# ---------------------------------------------------------------- a carrier that stalls or floods

@contextmanager
def carrier(behaviour) -> Iterator[tuple[str, list]]:
    """A raw TCP server whose every connection reads the request head and then runs `behaviour(sock, log)`;
    `log` collects what the behaviours report (bytes sent before the client hung up, say)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    log: list = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                sock, _ = server.accept()
            except TimeoutError:
                continue
            with sock:
                sock.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(4096)
                try:
                    behaviour(sock, log)
                except OSError:  # the client hung up: what it should do
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", log
    finally:
        stop.set()
        thread.join(5)
        server.close()


ANSWER_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"


def trickle_head(sock: socket.socket, log: list) -> None:
    del log
    for byte in ANSWER_HEAD:  # 1 byte every 0.15 s: each read is well within the 0.5 s timeout
        sock.sendall(bytes([byte]))
        time.sleep(0.15)


def trickle_body(sock: socket.socket, log: list) -> None:
    del log
    sock.sendall(ANSWER_HEAD)
    for _ in range(100):
        sock.sendall(b"\0")
        time.sleep(0.15)


@pytest.mark.parametrize("behaviour", [trickle_head, trickle_body])
def test_a_trickling_carrier_cannot_hold_a_refresh(bundle: Bundle, behaviour) -> None:
    """The timeout is a deadline for the whole answer: a byte every 0.15 s with a 0.5 s timeout ends each
    attempt at 0.5 s (before, each read reset the clock: the refresh lasted as long as the trickle)."""
    with carrier(behaviour) as (url, _):
        runtime = DeviceRuntime(bundle, url, "d", retries=2, backoff=0.01, timeout=0.5)
        started = time.monotonic()
        assert runtime.refresh([1, 2]) == GLOBAL
        took = time.monotonic() - started
    # the deadline falls during a read (the socket's "timed out") or between two reads
    assert ("timed out" in runtime.last_error or "no whole answer within 0.5 s" in runtime.last_error)
    assert "no answer after 3 attempts" in runtime.last_error and "\n" not in runtime.last_error
    assert took < 3 * 0.5 + 0.5, took  # three attempts of 0.5 s and two short waits
    print(f"{behaviour.__name__}: refresh ended after {took:.2f} s (3 attempts, timeout 0.5 s)")


def flood(declare: bool):
    def send(sock: socket.socket, log: list) -> None:
        total, block = 400 * 2**20, b"\0" * 2**16
        length = b"Content-Length: %d\r\n" % total if declare else b""
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" + length +
                     b"Connection: close\r\n\r\n")
        sent = 0
        try:
            while sent < total:
                sent += sock.send(block)
        finally:
            log.append(sent)
    return send


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "close-delimited"])
def test_a_400_mib_answer_is_refused_without_being_read_whole(bundle: Bundle, declare: bool) -> None:
    """The cap comes from the bundle: its parameters' bytes plus room for the safetensors header. A declared
    400 MiB is refused unread; an undeclared one as soon as the cap is passed; neither is asked again."""
    import tracemalloc

    from duet.device.client import answer_cap

    cap = answer_cap(bundle.spec.numel, 4, bundle.spec.names)
    with carrier(flood(declare)) as (url, sent):
        runtime = DeviceRuntime(bundle, url, "d", retries=2, timeout=5)
        assert runtime.client.max_answer_bytes == cap
        tracemalloc.start()
        started = time.monotonic()
        try:
            assert runtime.refresh([1, 2]) == GLOBAL
            took = time.monotonic() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        deadline = time.monotonic() + 5
        while not sent:  # the carrier notices the hang-up
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert len(sent) == 1  # refused, not asked again
    assert f"over the {cap}" in runtime.last_error and "\n" not in runtime.last_error
    assert ("refused unread" in runtime.last_error) == declare
    assert peak < cap + 2**20 and took < 1.0, (peak, took)  # nothing near 400 MiB was held
    assert sent[0] < 400 * 2**20
    print(f"400 MiB answer ({'declared' if declare else 'undeclared'}): refused after {took * 1000:.0f} ms, cap "
          f"{cap} bytes, client peak {peak / 2**20:.2f} MiB traced, carrier sent {sent[0] / 2**20:.1f} MiB")


def test_the_answer_cap_follows_the_dtype_and_a_new_bundle(bundle: Bundle) -> None:
    from duet.device.client import answer_cap

    fp16 = DeviceRuntime(bundle, "http://127.0.0.1:9", "d", dtype="fp16")
    assert fp16.client.max_answer_bytes == answer_cap(bundle.spec.numel, 2, bundle.spec.names)
    assert bundle.spec.numel * 2 < fp16.client.max_answer_bytes < bundle.spec.numel * 2 + 32 * 1024
    fake = FakeService(bundle, ["ok"])
    with fake.running() as url:  # a real answer fits its cap
        assert DeviceRuntime(bundle, url, "d", retries=0).refresh([1]) == SERVICE


# ---------------------------------------------------------------- signed answers

@pytest.fixture(scope="module")
def cloud_key() -> SigningKey:
    return SigningKey.generate()


def signed_copy(bundle_dir: Path, folder: Path, key: SigningKey, also: list[SigningKey] = ()) -> Path:
    """A copy of the test bundle signed by `key`, listing `also`'s public keys after its own."""
    shutil.copytree(bundle_dir, folder)
    sign_manifest(folder, key, [k.public_key for k in also])
    return folder


@pytest.fixture(scope="module")
def signed_bundle(bundle_dir: Path, cloud_key: SigningKey, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    folder = signed_copy(bundle_dir, tmp_path_factory.mktemp("signed") / "bundle", cloud_key)
    return Bundle(folder, trusted_keys=Keyring([cloud_key.public_key]))


@pytest.mark.parametrize(("forgery", "reason"), [
    ("unsigned", "not signed"), ("tampered", "does not verify"), ("other-key", "not trusted"),
    ("other-request", "does not verify"),
])
def test_a_badly_signed_answer_is_refused_and_the_last_good_parameters_kept(
        signed_bundle: Bundle, cloud_key: SigningKey, forgery: str, reason: str) -> None:
    fake = FakeService(signed_bundle, ["ok", forgery], key=cloud_key)
    with fake.running() as url:
        runtime = DeviceRuntime(signed_bundle, url, "d", retries=2, backoff=0.001)
        assert runtime.refresh([1, 2]) == SERVICE
        good = {name: value.copy() for name, value in runtime.params.items()}
        assert runtime.refresh([3]) == LAST
    assert len(fake.requests) == 2  # refused at once: asking again would not make it genuine
    assert reason in runtime.last_error and "\n" not in runtime.last_error
    assert runtime.version == runtime.bundle.version
    for name, value in good.items():
        np.testing.assert_array_equal(runtime.params[name], value)


def test_a_signed_answer_names_its_key(signed_bundle: Bundle, cloud_key: SigningKey) -> None:
    fake = FakeService(signed_bundle, ["ok"], key=cloud_key)
    with fake.running() as url:
        answer = DeviceRuntime(signed_bundle, url, "d").client.fetch("d", [4, 5])
    assert answer.signed_by == cloud_key.public_key.id
    for name, value in fake.params.items():
        np.testing.assert_array_equal(answer.params[name], value)


def test_without_a_trusted_key_unsigned_answers_are_accepted(bundle: Bundle, cloud_key: SigningKey) -> None:
    # ... and so are forged ones: the sha256 header proves nothing to a device without a key.
    fake = FakeService(bundle, ["unsigned", "tampered"], key=cloud_key)
    with fake.running() as url:
        runtime = DeviceRuntime(bundle, url, "d", retries=0)
        assert runtime.refresh([1]) == SERVICE
        assert runtime.refresh([2]) == SERVICE
    assert bundle.answer_keys is None and runtime.client.keys is None


def test_rotation_answers_signed_by_a_key_the_bundle_lists_are_accepted(bundle_dir: Path, tmp_path: Path) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    device_keys = Keyring([old.public_key])  # what the device shipped with
    rotated = Bundle(signed_copy(bundle_dir, tmp_path / "rotated", old, also=[new]), trusted_keys=device_keys)
    fake = FakeService(rotated, ["ok"], key=new)
    with fake.running() as url:
        runtime = DeviceRuntime(rotated, url, "d", retries=0)
        assert runtime.refresh([1]) == SERVICE
    # A bundle that does not list the new key: its answers are someone else's.
    plain = Bundle(signed_copy(bundle_dir, tmp_path / "plain", old), trusted_keys=device_keys)
    fake = FakeService(plain, ["ok"], key=new)
    with fake.running() as url:
        runtime = DeviceRuntime(plain, url, "d", retries=0)
        assert runtime.refresh([1]) == GLOBAL and "not trusted" in runtime.last_error


# ---------------------------------------------------------------- a new bundle on a running device

def test_a_refused_bundle_update_keeps_the_bundle_and_the_last_good_parameters(
        signed_bundle: Bundle, bundle_dir: Path, cloud_key: SigningKey, tmp_path: Path) -> None:
    fake = FakeService(signed_bundle, ["ok"], key=cloud_key)
    with fake.running() as url:
        runtime = DeviceRuntime(signed_bundle, url, "d", retries=0)
        assert runtime.refresh([1]) == SERVICE
    good = {name: value.copy() for name, value in runtime.params.items()}
    tampered = signed_copy(bundle_dir, tmp_path / "tampered", cloud_key)
    manifest = (tampered / "manifest.json").read_bytes()
    (tampered / "manifest.json").write_bytes(manifest.replace(b'"window_len": ', b'"window_len":\t', 1))  # 1 byte
    other = signed_copy(bundle_dir, tmp_path / "other", SigningKey.generate())
    for bad, reason in ((tampered, "does not verify"), (other, "not trusted"), (bundle_dir, "unsigned")):
        with pytest.raises(ArtifactError, match=reason):
            runtime.update_bundle(bad)
        assert runtime.bundle is signed_bundle and runtime.source == SERVICE and reason in runtime.last_error
        for name, value in good.items():
            np.testing.assert_array_equal(runtime.params[name], value)
    runtime.update_bundle(signed_copy(bundle_dir, tmp_path / "next", cloud_key))
    assert runtime.bundle is not signed_bundle and runtime.source == GLOBAL and runtime.last_error is None
    assert runtime.bundle.signed_by == cloud_key.public_key.id and runtime.client.keys is runtime.bundle.answer_keys
