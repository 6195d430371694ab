"""Signed artifacts: keys, signed bundles, `duet serve --sign`, and what a device does with them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from test_cloud import get, post
from test_reliability_artifacts import one_line_error, rehash
from typer.testing import CliRunner

from duet.cli import app
from duet.device import GLOBAL, SERVICE, Bundle, DeviceRuntime, Keyring
from duet.errors import ArtifactError, DuetError
from duet.signing import (
    SIGNATURE_FILE,
    SIGNATURE_HEADER,
    PublicKey,
    SignatureError,
    SigningKey,
    answer_message,
    sign_answers,
    sign_manifest,
    verify_answer,
    write_key_pair,
    write_signature,
)
from duet.simulate import ServiceProcess

runner = CliRunner()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two key pairs on disk: `cloud` (signs) and `other` (a stranger's)."""
    folder = tmp_path_factory.mktemp("keys")
    files = {}
    for name in ("cloud", "other"):
        private, public, _ = write_key_pair(folder / name)
        files[name], files[f"{name}.pub"] = private, public
    return files


def public(path: Path) -> PublicKey:
    (key,) = Keyring.from_file(path).keys.values()
    return key


def signed(bundle_dir: Path, folder: Path, key: Path, also: list[Path] = ()) -> Path:
    """A copy of the test bundle signed by `key`, listing the public keys in `also` (after its own if absent)."""
    shutil.copytree(bundle_dir, folder)
    sign_manifest(folder, SigningKey.from_file(key), [public(p) for p in also])
    return folder


# ---------------------------------------------------------------- keys

def test_keys_generate_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "cloud")])
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "cloud.key", tmp_path / "cloud.pub"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) & 0o044  # public: readable by others
    key, ring = SigningKey.from_file(private), Keyring.from_file(public)
    assert list(ring.keys) == [key.public_key.id] and key.public_key.id in result.output
    assert key.private_text().split()[1] not in result.output + public.read_text()
    message = answer_message("v", "s", "a" * 64, "b" * 64)
    assert verify_answer(ring, message, sign_answers(key, [message])[0], "test") == key.public_key.id
    # An existing key is never replaced by accident: that would lock every device out.
    line = one_line_error(runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "cloud")]))
    assert "already exists" in line and SigningKey.from_file(private).public_key == key.public_key


def test_key_mistakes_are_one_line_errors(keys: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DuetError, match="that is a public key"):
        SigningKey.from_file(keys["cloud.pub"])
    with pytest.raises(DuetError, match="is a private key; a device is given the public"):
        Keyring.from_file(keys["cloud"])
    garbage = tmp_path / "garbage"
    garbage.write_text("ed25519 not-base64!\n")
    with pytest.raises(DuetError, match="not base64"):
        Keyring.from_file(garbage)
    garbage.write_text("ed25519 AAAA\n")
    with pytest.raises(DuetError, match="32 bytes"):
        Keyring.from_file(garbage)
    with pytest.raises(DuetError, match="no such key file"):
        SigningKey.from_file(tmp_path / "missing.key")


def messages(n: int) -> list[bytes]:
    return [answer_message("run-abc", "0123456789abcdef", f"{i:064x}", "d" * 64) for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 23, 64])
def test_answers_signed_together_each_verify_alone(keys: dict[str, Path], n: int) -> None:
    key, ring = SigningKey.from_file(keys["cloud"]), Keyring.from_file(keys["cloud.pub"])
    signed = messages(n)
    headers = sign_answers(key, signed)
    assert len({h.split()[2] for h in headers}) == 1  # one Ed25519 signature for the batch
    assert all(len(h.split()) == (3 if n == 1 else 4) for h in headers)
    for message, header in zip(signed, headers, strict=True):
        assert verify_answer(ring, message, header, "answer") == key.public_key.id
    if n > 1:  # every answer's path proves its own message only
        with pytest.raises(SignatureError, match="does not verify"):
            verify_answer(ring, signed[1], headers[0], "answer")


def test_an_answer_signature_fails_on_any_change(keys: dict[str, Path]) -> None:
    key, ring = SigningKey.from_file(keys["cloud"]), Keyring.from_file(keys["cloud.pub"])
    message, *others = messages(5)
    header = sign_answers(key, [message, *others])[0]
    for changed in (answer_message("run-abd", "0123456789abcdef", f"{0:064x}", "d" * 64),
                    answer_message("run-abc", "0123456789abcdee", f"{0:064x}", "d" * 64),
                    answer_message("run-abc", "0123456789abcdef", f"{9:064x}", "d" * 64),
                    answer_message("run-abc", "0123456789abcdef", f"{0:064x}", "d" * 63 + "e")):
        with pytest.raises(SignatureError, match="does not verify"):
            verify_answer(ring, changed, header, "answer")
    algorithm, kid, signature, path = header.split()
    raw = base64.b64decode(path)
    flipped_hash, flipped_side = bytearray(raw), bytearray(raw)
    flipped_hash[5] ^= 1
    flipped_side[0] ^= 1
    for bad, reason in ((None, "not signed"), ("", "not signed"), (f"rsa {kid} {signature} {path}", "malformed"),
                        (f"{algorithm} {kid}", "malformed"), (f"{algorithm} {kid} %%% {path}", "not base64"),
                        (f"{algorithm} {kid} {signature} {path} {path}", "malformed"),
                        (f"{algorithm} {kid} {signature} {base64.b64encode(raw[:-1]).decode()}", "malformed"),
                        (f"{algorithm} {kid} {signature} {base64.b64encode(bytes(flipped_hash)).decode()}",
                         "does not verify"),
                        (f"{algorithm} {kid} {signature} {base64.b64encode(bytes(flipped_side)).decode()}",
                         "does not verify"),
                        (f"{algorithm} {kid} {signature}", "does not verify"),  # path dropped
                        (sign_answers(SigningKey.from_file(keys["other"]), [message])[0], "not trusted")):
        with pytest.raises(SignatureError, match=reason):
            verify_answer(ring, message, bad, "answer")


def test_a_tree_node_never_passes_for_an_answer(keys: dict[str, Path]) -> None:
    # The two leaf hashes of a pair, offered as one "message" with no path: the leaf prefix
    # (0x00, nodes 0x01) makes its hash differ from the signed root.
    key, ring = SigningKey.from_file(keys["cloud"]), Keyring.from_file(keys["cloud.pub"])
    pair = messages(2)
    header = sign_answers(key, pair)[0]
    forged = b"".join(hashlib.sha256(b"\x00" + m).digest() for m in pair)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_answer(ring, forged, " ".join(header.split()[:3]), "answer")


def test_the_service_signs_the_answers_of_one_loop_turn_together(keys: dict[str, Path]) -> None:
    from duet.cloud.signer import AnswerSigner

    key, ring = SigningKey.from_file(keys["cloud"]), Keyring.from_file(keys["cloud.pub"])
    signer = AnswerSigner(key)

    async def main() -> tuple[list[str], str]:
        together = await asyncio.gather(*(signer.header(m) for m in messages(6)))
        alone = await signer.header(messages(7)[6])
        return together, alone

    together, alone = asyncio.run(main())
    assert len({h.split()[2] for h in together}) == 1 and alone.split()[2] != together[0].split()[2]
    for message, header in zip(messages(7), [*together, alone], strict=True):
        verify_answer(ring, message, header, "answer")


# ---------------------------------------------------------------- signed bundles

def test_a_signed_bundle_is_accepted_and_names_its_signer(bundle_dir: Path, keys: dict[str, Path],
                                                          tmp_path: Path) -> None:
    folder = signed(bundle_dir, tmp_path / "bundle", keys["cloud"])
    bundle = Bundle(folder, trusted_keys=keys["cloud.pub"])
    cloud = Keyring.from_file(keys["cloud.pub"])
    assert bundle.signed_by in cloud.keys and list(bundle.answer_keys.keys) == list(cloud.keys)
    assert Bundle(folder).signed_by is None  # no key configured: hashes only, as before


def test_an_unsigned_bundle_is_refused_when_a_key_is_configured(bundle_dir: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(ArtifactError, match=f"unsigned \\(no {SIGNATURE_FILE}\\)"):
        Bundle(bundle_dir, trusted_keys=keys["cloud.pub"])
    Bundle(bundle_dir)  # and accepted when none is


def test_a_forged_bundle_passes_the_hashes_but_not_the_signature(bundle_dir: Path, keys: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    # What a CDN or a mirror could do: change the global head and re-hash the manifest.
    folder = signed(bundle_dir, tmp_path / "bundle", keys["cloud"])
    theta = load_file(str(folder / "theta_g.safetensors"))
    save_file({name: -value for name, value in theta.items()}, str(folder / "theta_g.safetensors"))
    rehash(folder, "theta_g.safetensors")
    forged = Bundle(folder)  # integrity only: the forgery passes
    for name, value in theta.items():
        np.testing.assert_array_equal(forged.theta_g[name][0], -value)
    with pytest.raises(ArtifactError, match="does not verify") as error:
        Bundle(folder, trusted_keys=keys["cloud.pub"])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("name", "reason"), [("manifest.json", "does not verify"),
                                              ("model.onnx", "sha256 does not match"),
                                              (SIGNATURE_FILE, "does not verify")])
def test_a_bundle_with_one_byte_changed_is_refused(bundle_dir: Path, keys: dict[str, Path], tmp_path: Path,
                                                   name: str, reason: str) -> None:
    folder = signed(bundle_dir, tmp_path / "bundle", keys["cloud"])
    if name == SIGNATURE_FILE:  # one byte of the signature itself
        sig = json.loads((folder / name).read_text())
        raw = bytearray(base64.b64decode(sig["signature"]))
        raw[7] ^= 1
        sig["signature"] = base64.b64encode(bytes(raw)).decode()
        (folder / name).write_text(json.dumps(sig))
    else:
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 1
        (folder / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=reason):
        Bundle(folder, trusted_keys=keys["cloud.pub"])


def test_a_bundle_signed_by_another_key_is_refused(bundle_dir: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    folder = signed(bundle_dir, tmp_path / "bundle", keys["other"])
    with pytest.raises(ArtifactError, match="not trusted"):
        Bundle(folder, trusted_keys=keys["cloud.pub"])


def test_rotation_a_bundle_signed_by_the_second_listed_key_is_accepted(bundle_dir: Path, keys: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    # The device's key file and the bundle list the current key and the next; the next one signed.
    ring = tmp_path / "trusted.pub"
    ring.write_text(keys["cloud.pub"].read_text() + keys["other.pub"].read_text())
    folder = signed(bundle_dir, tmp_path / "bundle", keys["other"], also=[keys["cloud.pub"], keys["other.pub"]])
    bundle = Bundle(folder, trusted_keys=ring)
    listed = [entry["key_id"] for entry in json.loads((folder / "manifest.json").read_text())["trusted_keys"]]
    assert bundle.signed_by == listed[1] == list(Keyring.from_file(ring).keys)[1] == public(keys["other.pub"]).id
    with pytest.raises(ArtifactError, match="not trusted"):  # a device that only knows the first key
        Bundle(folder, trusted_keys=keys["cloud.pub"])


def test_a_signed_manifest_must_list_well_formed_keys(bundle_dir: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    shutil.copytree(bundle_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["trusted_keys"] = [{**public(keys["other.pub"]).to_json(), "key_id": "0" * 16}]  # not its key's id
    (folder / "manifest.json").write_text(json.dumps(manifest))
    write_signature(folder, SigningKey.from_file(keys["cloud"]))
    with pytest.raises(ArtifactError, match="trusted_keys\\[0\\]: key_id"):
        Bundle(folder, trusted_keys=keys["cloud.pub"])


# ---------------------------------------------------------------- the real service, signing

@pytest.fixture(scope="module")
def signing_service(duet_run: Path, keys: dict[str, Path]):
    with ServiceProcess(duet_run, extra_args=["--sign", str(keys["cloud"])]) as running:
        yield running


def test_serve_signs_every_answer(signing_service: ServiceProcess, keys: dict[str, Path]) -> None:
    ring = Keyring.from_file(keys["cloud.pub"])
    for dtype, accept in (("fp32", None), ("fp16", None), ("fp32", "application/json")):
        request = {"device_id": "d1", "window": [3, 1, 4], "dtype": dtype}
        status, headers, body = post(signing_service.url, request, accept=accept)
        assert status == 200
        message = answer_message(headers["x-duet-model-version"], headers["x-duet-spec-hash"],
                                 hashlib.sha256(body).hexdigest(),
                                 hashlib.sha256(json.dumps(request).encode()).hexdigest())
        assert verify_answer(ring, message, headers[SIGNATURE_HEADER.lower()], "answer") in ring.keys
    status, body = get(signing_service.url + "/v1/models")
    assert status == 200 and json.loads(body)["models"][0]["signing_key"] == public(keys["cloud.pub"]).id


def test_a_device_scores_with_signed_answers_and_refuses_another_cloud(
        signing_service: ServiceProcess, bundle_dir: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    folder = signed(bundle_dir, tmp_path / "bundle", keys["cloud"])
    runtime = DeviceRuntime(folder, signing_service.url, "d1", trusted_keys=keys["cloud.pub"], retries=0)
    assert runtime.refresh([3, 1, 4]) == SERVICE and runtime.last_error is None
    plain = DeviceRuntime(bundle_dir, signing_service.url, "d1", retries=0)  # no key: integrity only
    assert plain.refresh([3, 1, 4]) == SERVICE
    for name, value in plain.params.items():
        np.testing.assert_array_equal(runtime.params[name], value)
    # A device of another cloud (its bundle and its key are the other key's): these answers are not its cloud's.
    stranger = DeviceRuntime(signed(bundle_dir, tmp_path / "other", keys["other"]), signing_service.url, "d1",
                             trusted_keys=keys["other.pub"], retries=0)
    assert stranger.refresh([3, 1, 4]) == GLOBAL and "not trusted" in stranger.last_error


def test_serve_refuses_a_key_that_is_not_a_private_key(duet_run: Path, keys: dict[str, Path]) -> None:
    line = one_line_error(runner.invoke(app, ["serve", "--run", str(duet_run), "--sign", str(keys["cloud.pub"])]))
    assert "not a duet private key" in line and "that is a public key" in line


# ---------------------------------------------------------------- duet export --sign

def test_export_signs_and_lists_the_trusted_keys(duet_run: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["export", "--run", str(duet_run), "--out", str(out), "--sign", str(keys["cloud"]),
                                 "--trust", str(keys["other.pub"])])
    assert result.exit_code == 0, result.output
    cloud, other = public(keys["cloud.pub"]).id, public(keys["other.pub"]).id
    manifest = json.loads((out / "manifest.json").read_text())
    assert [k["key_id"] for k in manifest["trusted_keys"]] == [cloud, other]
    bundle = Bundle(out, trusted_keys=keys["cloud.pub"])
    assert bundle.signed_by == cloud and set(bundle.answer_keys.keys) == {cloud, other}
    line = one_line_error(runner.invoke(app, ["export", "--run", str(duet_run), "--out", str(tmp_path / "b2"),
                                              "--trust", str(keys["other.pub"])]))
    assert "--trust needs --sign" in line
