"""The device distribution on its own: a fresh virtual environment with only `pip install '.[device]'`
loads a signed bundle, asks a real `duet serve --sign` for parameters and scores like the full package.

One venv for the module (about 20-60 s with pip's cache or a local index; the wheels come
from PyPI otherwise). If pip cannot reach an index the test fails saying so, within
INSTALL_TIMEOUT, instead of hanging.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import NUM_ITEMS

from duet.device import SERVICE, DeviceRuntime
from duet.signing import SigningKey, sign_manifest, write_key_pair
from duet.simulate import ServiceProcess

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT = 300
# Everything `pip install '.[device]'` brings (README, "Install"): onnxruntime's own four
# dependencies, PyNaCl's two. A new one here is a heavier device: it should be a decision.
DEVICE_DISTRIBUTIONS = {"duet", "numpy", "safetensors", "onnxruntime", "protobuf", "flatbuffers", "packaging",
                        "pynacl", "cffi", "pycparser"}
INSTALLER = {"pip", "setuptools"}  # what `python -m venv` puts there itself


def clean_env() -> dict[str, str]:
    """This environment minus PYTHONPATH: the venv must import its own installed copy of duet."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def device_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the device distribution only, built from a copy of this checkout."""
    root = tmp_path_factory.mktemp("device-install")
    source = root / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--timeout", "30",
               "--retries", "2", f"{source}[device]"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=clean_env())
    except subprocess.TimeoutExpired:
        pytest.fail(f"`pip install '.[device]'` into a fresh venv took over {INSTALL_TIMEOUT} s: is PyPI "
                    "reachable from here?")
    if out.returncode != 0:
        pytest.fail("`pip install '.[device]'` into a fresh venv failed (is PyPI reachable from here?):\n"
                    + out.stderr[-2000:])
    return python


def run_in(python: Path, script: str, *args: str) -> str:
    out = subprocess.run([str(python), "-c", script, *args], capture_output=True, text=True, timeout=120,
                         env=clean_env(), cwd=python.parents[2])
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_device_install_holds_the_device_runtime_and_nothing_else(device_python: Path) -> None:
    listed = json.loads(run_in(device_python, "import subprocess, sys; subprocess.run([sys.executable, '-m', "
                                              "'pip', 'list', '--format', 'json', '--disable-pip-version-check'])"))
    names = {d["name"].lower() for d in listed} - INSTALLER
    assert names == DEVICE_DISTRIBUTIONS
    # The `duet` command needs a cloud-side extra: on a device it says so in one line.
    out = subprocess.run([str(device_python.parent / "duet"), "--help"], capture_output=True, text=True,
                         timeout=60, env=clean_env())
    assert out.returncode == 1 and "Traceback" not in out.stderr and "pip install '.[train]'" in out.stderr


DEVICE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import duet
    from duet.device import DeviceRuntime

    bundle, url, public_key, window, history, candidates = sys.argv[1:7]
    runtime = DeviceRuntime(bundle, url, "device-1", trusted_keys=public_key, retries=2, timeout=10)
    for item in json.loads(window):
        runtime.observe(item)
    source = runtime.refresh()
    logits = runtime.score(json.loads(history), np.array(json.loads(candidates)))
    print(json.dumps({"duet": duet.__file__, "source": source, "error": runtime.last_error,
                      "signed_by": runtime.bundle.signed_by, "logits": logits.tolist(),
                      "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "pandas", "matplotlib"))}))
""")


def test_the_device_install_alone_scores_like_the_full_package(device_python: Path, duet_run: Path, bundle_dir: Path,
                                                               tmp_path: Path) -> None:
    private, public, key = write_key_pair(tmp_path / "cloud")
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    sign_manifest(bundle, SigningKey.from_file(private))
    window, history, candidates = [5, 9, 2, 7], [1, 4, 5, 9, 2, 7], list(range(1, NUM_ITEMS))
    with ServiceProcess(duet_run, extra_args=["--sign", str(private)]) as service:
        out = run_in(device_python, DEVICE_SCRIPT, str(bundle), service.url, str(public), json.dumps(window),
                     json.dumps(history), json.dumps(candidates))
        full = DeviceRuntime(bundle, service.url, "device-1", trusted_keys=public)
        assert full.refresh(window) == SERVICE
        expected = full.score(history, np.array(candidates))
    device = json.loads(out.strip().splitlines()[-1])
    assert Path(device["duet"]).is_relative_to(device_python.parents[1])  # its own copy, not this checkout
    assert device["source"] == SERVICE, device["error"]
    assert device["signed_by"] == key.public_key.id and device["loaded"] == []
    np.testing.assert_allclose(device["logits"], expected, rtol=0, atol=1e-6)
