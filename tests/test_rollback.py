"""Rollback and replay: an older signed bundle, an expired one, and an older model's signed answer are
refused, and the device keeps serving its last good parameters (duet.freshness, duet.device.rollback)."""

from __future__ import annotations

import errno
import http.server
import json
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from test_device import FakeService
from test_reliability_artifacts import one_line_error
from typer.testing import CliRunner

from duet.cli import app
from duet.device import LAST, SERVICE, Bundle, DeviceRuntime, Keyring
from duet.errors import ArtifactError
from duet.freshness import EXPIRES_KEY, SEQUENCE_KEY, release_fields
from duet.signing import SigningKey, sign_manifest

KEY = SigningKey.generate()


def release(bundle_dir: Path, folder: Path, sequence: int, version: str | None = None,
            expires: datetime | None = None) -> Path:
    """A copy of the test bundle with this sequence (and version, expiry), genuinely signed by KEY."""
    shutil.copytree(bundle_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest[SEQUENCE_KEY] = sequence
    if version is not None:
        manifest["model_version"] = version
    if expires is not None:
        manifest[EXPIRES_KEY] = expires.isoformat(timespec="seconds")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    sign_manifest(folder, KEY)
    return folder


def keys() -> Keyring:
    return Keyring([KEY.public_key])


@pytest.fixture
def releases(bundle_dir: Path, tmp_path: Path) -> dict[str, Path]:
    v1 = json.loads((bundle_dir / "manifest.json").read_text())["model_version"]
    return {"v1": release(bundle_dir, tmp_path / "v1", 1), "v2": release(bundle_dir, tmp_path / "v2", 2, v1 + "-next")}


def test_release_fields_grow_and_expire() -> None:
    first = release_fields()[SEQUENCE_KEY]
    time.sleep(0.002)
    assert release_fields()[SEQUENCE_KEY] > first  # export time in ms: each export is newer
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert release_fields(7, 30, now) == {SEQUENCE_KEY: 7, EXPIRES_KEY: "2026-01-31T00:00:00+00:00"}
    with pytest.raises(ValueError, match="positive number of days"):
        release_fields(expires_in_days=0)


def test_an_older_signed_bundle_is_refused_and_the_last_good_parameters_keep_serving(
        releases: dict[str, Path], tmp_path: Path) -> None:
    state = tmp_path / "device-state.json"
    v2 = Bundle(releases["v2"], trusted_keys=keys())
    fake = FakeService(v2, ["ok"], key=KEY)
    with fake.running() as url:
        runtime = DeviceRuntime(v2, url, "d", retries=0, state_file=state)
        assert runtime.refresh([1, 2]) == SERVICE
    good = {name: value.copy() for name, value in runtime.params.items()}
    # The older bundle is genuinely signed: it verifies, and is refused for its sequence.
    assert Bundle(releases["v1"], trusted_keys=keys()).signed_by == KEY.public_key.id
    with pytest.raises(ArtifactError, match=r"bundle sequence 1 is older than the newest accepted \(2") as refused:
        runtime.update_bundle(releases["v1"])
    assert "\n" not in str(refused.value)
    assert runtime.bundle is v2 and runtime.source == SERVICE and "rollback refused" in runtime.last_error
    for name, value in good.items():
        np.testing.assert_array_equal(runtime.params[name], value)
    candidates = np.arange(1, 8)
    expected = v2.run({"history": v2.encode("history", [4, 5]), "items": v2.encode("items", candidates)}, good)
    np.testing.assert_array_equal(runtime.score([4, 5], candidates), expected["logits"])

    # Remembered across a restart: the state file (written atomically, no temporary left behind).
    assert json.loads(state.read_text())[SEQUENCE_KEY] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ArtifactError, match="rollback refused"):
        DeviceRuntime(releases["v1"], "http://127.0.0.1:9", "d", trusted_keys=keys(), state_file=state)
    DeviceRuntime(releases["v2"], "http://127.0.0.1:9", "d", trusted_keys=keys(), state_file=state)  # same: fine


def test_an_expired_or_resequenced_bundle_is_refused(bundle_dir: Path, releases: dict[str, Path],
                                                     tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    expired = release(bundle_dir, tmp_path / "expired", 5, expires=past)
    with pytest.raises(ArtifactError, match="bundle expired at"):
        DeviceRuntime(expired, "http://127.0.0.1:9", "d", trusted_keys=keys())
    runtime = DeviceRuntime(releases["v2"], "http://127.0.0.1:9", "d", trusted_keys=keys())
    with pytest.raises(ArtifactError, match="bundle expired at"):
        runtime.update_bundle(expired)
    # Same sequence, other contents: not the bundle that was accepted under that number.
    with pytest.raises(ArtifactError, match="sequence 2 was already accepted for another manifest"):
        runtime.update_bundle(release(bundle_dir, tmp_path / "twin", 2, "twin"))
    later = release(bundle_dir, tmp_path / "later", 3, expires=datetime.now(UTC) + timedelta(days=1))
    runtime.update_bundle(later)
    assert runtime.bundle.manifest[SEQUENCE_KEY] == 3


@contextmanager
def replaying(status: int, headers: dict[str, str], body: bytes) -> Iterator[str]:
    """A server that answers every request with one recorded answer, as an attacker in the path would."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            for name, value in headers.items():
                if name.lower().startswith("x-duet") or name.lower() == "content-type":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_older_models_signed_answer_is_refused(releases: dict[str, Path]) -> None:
    v1, v2 = Bundle(releases["v1"], trusted_keys=keys()), Bundle(releases["v2"], trusted_keys=keys())
    # Record a genuine, signed answer of the old model to the very window the device will send.
    with FakeService(v1, ["ok"], key=KEY).running() as url:
        request = json.dumps({"device_id": "d", "window": [1, 2], "dtype": "fp32", "version": v1.version},
                             separators=(",", ":")).encode()
        with urllib.request.urlopen(urllib.request.Request(url + "/v1/parameters", data=request)) as response:
            recorded = (response.status, dict(response.headers), response.read())
    fake = FakeService(v2, ["ok"], key=KEY)
    for trusted in (keys(), None):
        bundle = v2 if trusted else Bundle(releases["v2"])
        with fake.running() as url:
            runtime = DeviceRuntime(bundle, url, "d", retries=0)
            fake.script = ["ok"]
            assert runtime.refresh([1, 2]) == SERVICE
        good = {name: value.copy() for name, value in runtime.params.items()}
        with replaying(*recorded) as url:
            runtime.client.url = url + "/v1/parameters"
            assert runtime.refresh([1, 2]) == LAST
        # With keys, its signature covers another request (it named v1); without, its version gives it away.
        reason = "does not verify" if trusted else "replayed or stale answer refused"
        assert reason in runtime.last_error and runtime.version == v2.version
        for name, value in good.items():
            np.testing.assert_array_equal(runtime.params[name], value)
    # A genuinely signed answer for this very request, but made by the old model: refused for its version.
    with FakeService(v2, ["ok"], key=KEY, version=v1.version).running() as url:
        runtime = DeviceRuntime(v2, url, "d", retries=0)
        assert runtime.refresh([1, 2]) != SERVICE and "replayed or stale answer refused" in runtime.last_error


def test_export_writes_the_sequence_and_expiry(duet_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--run", str(duet_run), "--out", str(tmp_path / "b"), "--sequence", "42",
                                 "--expires-in", "30"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    expires = datetime.fromisoformat(manifest[EXPIRES_KEY])
    assert manifest[SEQUENCE_KEY] == 42 and "sequence 42" in result.output
    assert timedelta(days=29.9) < expires - datetime.now(UTC) <= timedelta(days=30)
    line = one_line_error(runner.invoke(app, ["export", "--run", str(duet_run), "--out", str(tmp_path / "c"),
                                              "--expires-in", "0"]))
    assert "--expires-in: a positive number of days" in line


def enospc(*_args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_refuses_the_bundle_and_the_last_good_one_keeps_serving(
        releases: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The state file cannot be written (the disk is full when the new record is fsynced): the new bundle
    is refused in one line, memory and file keep the old sequence, the old bundle keeps scoring, asking
    again is refused again, and once the write succeeds a restart still refuses the older bundle."""
    state = tmp_path / "state" / "bundle.json"
    v1 = Bundle(releases["v1"], trusted_keys=keys())
    with FakeService(v1, ["ok"], key=KEY).running() as url:
        runtime = DeviceRuntime(v1, url, "d", retries=0, state_file=state)
        assert runtime.refresh([1, 2]) == SERVICE
    good = {name: value.copy() for name, value in runtime.params.items()}
    candidates = np.arange(1, 8)
    scores = runtime.score([4, 5], candidates)

    monkeypatch.setattr("duet.atomic.os.fsync", enospc)  # a full disk, as ext4 reports it at fsync
    for _ in range(2):  # asked twice: the second time is not taken for "the same bundle again"
        with pytest.raises(ArtifactError) as refused:
            runtime.update_bundle(releases["v2"])
        message = str(refused.value)
        assert "\n" not in message and "No space left on device" in message and "bundle refused" in message
        assert message.startswith(str(state))
        assert runtime.history.newest[SEQUENCE_KEY] == 1  # memory unchanged
        assert json.loads(state.read_text())[SEQUENCE_KEY] == 1  # file unchanged
        assert runtime.bundle is v1 and runtime.source == SERVICE and runtime.last_error == message
        for name, value in good.items():
            np.testing.assert_array_equal(runtime.params[name], value)
        np.testing.assert_array_equal(runtime.score([4, 5], candidates), scores)
    assert [p.name for p in state.parent.iterdir()] == ["bundle.json"]  # no temporary file left behind
    monkeypatch.undo()

    runtime.update_bundle(releases["v2"])  # space again: recorded, then switched
    assert json.loads(state.read_text())[SEQUENCE_KEY] == 2 and runtime.bundle.manifest[SEQUENCE_KEY] == 2
    # A restart reads the file: the older, genuinely signed bundle is refused.
    with pytest.raises(ArtifactError, match=r"bundle sequence 1 is older than the newest accepted \(2"):
        DeviceRuntime(releases["v1"], "http://127.0.0.1:9", "d", trusted_keys=keys(), state_file=state)


def test_a_full_disk_at_the_first_bundle_is_one_line(releases: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("duet.atomic.os.fsync", enospc)
    with pytest.raises(ArtifactError, match="cannot record bundle sequence 2 .No space left on device.") as refused:
        DeviceRuntime(releases["v2"], "http://127.0.0.1:9", "d", trusted_keys=keys(), state_file=tmp_path / "s.json")
    assert "\n" not in str(refused.value) and not (tmp_path / "s.json").exists()


@pytest.mark.parametrize(("content", "problem"), [
    (b'{"bundle_sequence": -1, "manifest_sha256": "' + b"0" * 64 + b'"}', "not a non-negative integer (-1)"),
    (b'{"bundle_sequence": true, "manifest_sha256": "' + b"0" * 64 + b'"}', "not a non-negative integer (True)"),
    (b'{"bundle_sequence": 2.0, "manifest_sha256": "' + b"0" * 64 + b'"}', "not a non-negative integer (2.0)"),
    (b'{"bundle_sequence": 2, "manifest_sha256": "abc"}', "manifest_sha256 is not a sha256 hex digest"),
    (b'{"bundle_sequence": 2}', "manifest_sha256 is not a sha256 hex digest"),
    (b"[2]", "not a JSON object"),
    (b'{"bundle_sequence": 2,', "not JSON"),
    (b"\xff\xfe\x00garbage", "not JSON"),
])
def test_a_negative_or_garbled_state_file_is_refused_in_one_line(releases: dict[str, Path], tmp_path: Path,
                                                                 content: bytes, problem: str) -> None:
    state = tmp_path / "bundle.json"
    state.write_bytes(content)
    with pytest.raises(ArtifactError) as refused:
        DeviceRuntime(releases["v1"], "http://127.0.0.1:9", "d", trusted_keys=keys(), state_file=state)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{state}: unreadable bundle state") and problem in message
