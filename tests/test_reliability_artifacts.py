"""Safe artifacts and crash-safe writes: bundles and runs refuse tampering in one line; writes are atomic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from duet.atomic import atomic_dir, atomic_path, sha256_file, write_json
from duet.cli import app
from duet.device import Bundle
from duet.errors import ArtifactError


def rehash(folder: Path, name: str) -> None:
    """Re-record `name`'s sha256 in the manifest: tampering that the hashes alone cannot see."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def one_line_error(result: object) -> str:
    """The CLI's answer to a bad artifact: exit code 2, one line `error: ...`, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    return copy


# ---------------------------------------------------------------- device bundles

@pytest.mark.parametrize("name", ["model.onnx", "features.onnx", "theta_g.safetensors", "vocab.safetensors",
                                  "param_spec.json"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_bundle_refuses_a_damaged_file(bundle_copy: Path, name: str, damage: str) -> None:
    file = bundle_copy / name
    data = file.read_bytes()
    if damage == "flip":
        file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    else:
        file.unlink()
    message = "missing" if damage == "delete" else "sha256 does not match"
    with pytest.raises(ArtifactError, match=message) as error:
        Bundle(bundle_copy)
    assert name in str(error.value) and "\n" not in str(error.value)


def test_bundle_refuses_a_manifest_that_skips_a_file(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["files"]["theta_g.safetensors"]  # would be loaded without any check
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not list the sha256 of theta_g.safetensors"):
        Bundle(bundle_copy)
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="invalid JSON"):
        Bundle(bundle_copy)


def test_bundle_refuses_a_spec_that_does_not_match(bundle_copy: Path) -> None:
    # Another head's spec, consistently re-hashed: the manifest's spec hash still disagrees.
    spec = json.loads((bundle_copy / "param_spec.json").read_text())
    spec["params"][0]["shape"] = [s + 1 for s in spec["params"][0]["shape"]]
    (bundle_copy / "param_spec.json").write_text(json.dumps(spec))
    rehash(bundle_copy, "param_spec.json")
    with pytest.raises(ArtifactError, match="does not match the manifest's spec hash"):
        Bundle(bundle_copy)


def test_bundle_refuses_theta_g_and_graph_of_another_head(bundle_copy: Path) -> None:
    from duet.spec import ParamSpec

    theta = load_file(str(bundle_copy / "theta_g.safetensors"))
    name = next(iter(theta))
    save_file({**theta, name: np.zeros((3, 3), np.float32)}, str(bundle_copy / "theta_g.safetensors"))
    rehash(bundle_copy, "theta_g.safetensors")
    with pytest.raises(ArtifactError, match="theta_g.safetensors: does not fit param_spec.json"):
        Bundle(bundle_copy)

    # Spec, theta_g and manifest all agree on a wider head, but model.onnx was exported for the old one.
    spec = json.loads((bundle_copy / "param_spec.json").read_text())
    wider = ParamSpec.from_json([{"name": p["name"], "shape": [*p["shape"][:-1], p["shape"][-1] + 1]}
                                 for p in spec["params"]])
    (bundle_copy / "param_spec.json").write_text(json.dumps({"hash": wider.hash, "params": wider.to_json()}))
    save_file({n: np.zeros(shape, np.float32) for n, shape in wider.entries}, str(bundle_copy / "theta_g.safetensors"))
    for file in ("param_spec.json", "theta_g.safetensors"):
        rehash(bundle_copy, file)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["spec_hash"] = wider.hash
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="graph and param_spec.json are from different heads"):
        Bundle(bundle_copy)


def test_bundle_refuses_graphs_that_do_not_match_the_manifest(bundle_copy: Path) -> None:
    """The manifest's graph description is checked against the graphs themselves, not believed."""
    original = (bundle_copy / "manifest.json").read_text()
    manifest = json.loads(original)
    manifest["graph"]["inputs"][0]["shape"][-1] += 1  # a longer history than the graph takes
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="input 'history' is .* the manifest says"):
        Bundle(bundle_copy)
    manifest = json.loads(original)
    manifest["graph"]["outputs"] = ["scores"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="do not match the manifest's graph"):
        Bundle(bundle_copy)
    (bundle_copy / "manifest.json").write_text(original)
    shutil.copy(bundle_copy / "model.onnx", bundle_copy / "features.onnx")  # the wrong graph, re-hashed
    rehash(bundle_copy, "features.onnx")
    with pytest.raises(ArtifactError, match="features.onnx: does not map"):
        Bundle(bundle_copy)


def test_cli_reports_a_tampered_bundle_in_one_line(duet_run: Path, bundle_copy: Path) -> None:
    with open(bundle_copy / "model.onnx", "r+b") as f:
        f.truncate(1000)
    line = one_line_error(CliRunner().invoke(app, ["simulate", "--run", str(duet_run), "--bundle", str(bundle_copy),
                                                   "--devices", "1"]))
    assert "model.onnx: sha256 does not match" in line


# ---------------------------------------------------------------- runs, as the service loads them

@pytest.fixture
def run_copy(duet_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(duet_run, copy)
    return copy


def serve_error(run: Path) -> str:
    """`duet serve` on a bad run: one line, before any server starts."""
    return one_line_error(CliRunner().invoke(app, ["serve", "--run", str(run), "--port", "1"]))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_serve_refuses_damaged_weights(run_copy: Path, damage: str) -> None:
    weights = run_copy / "model.safetensors"
    data = weights.read_bytes()
    if damage == "flip":
        weights.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "truncate":
        weights.write_bytes(data[:-8])
    else:
        weights.unlink()
    line = serve_error(run_copy)
    assert "model.safetensors" in line and ("sha256 does not match" in line or "missing" in line)


def test_serve_refuses_a_config_that_does_not_fit_the_weights(run_copy: Path) -> None:
    config = json.loads((run_copy / "config.json").read_text())
    config["model"]["embed_dim"] *= 2  # a consistent manifest, but the weights are for another shape
    (run_copy / "config.json").write_text(json.dumps(config))
    rehash(run_copy, "config.json")
    assert "weights do not fit config.json" in serve_error(run_copy)


def test_serve_refuses_a_manifest_that_skips_the_weights(run_copy: Path) -> None:
    manifest = json.loads((run_copy / "manifest.json").read_text())
    del manifest["files"]["model.safetensors"]
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    assert "does not list the sha256 of model.safetensors" in serve_error(run_copy)


def test_serve_refuses_weights_that_are_not_safetensors(run_copy: Path) -> None:
    (run_copy / "model.safetensors").write_bytes(b"\x80\x04K\x01.")  # a pickle, consistently hashed
    rehash(run_copy, "model.safetensors")
    assert "not a readable safetensors file" in serve_error(run_copy)


# ---------------------------------------------------------------- atomic writes: modes and SIGKILL

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_normal_modes(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_json(tmp_path / "file.json", {"a": 1})
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "inside.bin").write_bytes(b"x")
            (tmp / "sub").mkdir()
        plain = tmp_path / "plain"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "file.json").stat().st_mode & 0o777 == 0o666 & ~umask == plain.stat().st_mode & 0o777
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "folder" / "sub").stat().st_mode & 0o777 == 0o777 & ~umask
    assert os.umask(old) == old  # reading the umask did not change it
    os.umask(old)


def test_failed_writes_leave_nothing(tmp_path: Path) -> None:
    write_json(tmp_path / "kept.json", {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "kept.json") as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("writer died")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "dir") as tmp:
        (tmp / "a").write_text("a")
        raise RuntimeError("writer died")
    assert json.loads((tmp_path / "kept.json").read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json"]


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from duet.atomic import atomic_dir, write_bytes

    out = Path(sys.argv[1])
    for version in range(1, 10_000):
        payload = bytes([version % 256]) * (1 << 20)  # 1 MiB of one byte value: a torn write shows
        write_bytes(out / "file.bin", payload)
        with atomic_dir(out / "folder", overwrite=True) as tmp:
            for i in range(4):
                (tmp / f"part{i}.bin").write_bytes(payload)
        print(version, flush=True)
""")


def test_sigkill_during_writes_leaves_old_or_new_never_torn(tmp_path: Path) -> None:
    """A writer killed at random moments: every file is whole (one byte value), every folder complete."""
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        out.mkdir()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE)
        assert writer.stdout.readline()  # at least one version written
        time.sleep(0.05 + 0.07 * attempt)
        writer.kill()
        writer.wait()
        data = (out / "file.bin").read_bytes()
        assert len(data) == 1 << 20 and len(set(data)) == 1
        folder = out / "folder"  # replaced by an atomic exchange: always there, always whole
        parts = [(folder / f"part{i}.bin").read_bytes() for i in range(4)]
        assert all(len(p) == 1 << 20 for p in parts) and len({p[0] for p in parts}) == 1
        assert all(len(set(p)) == 1 for p in parts)
