"""The README's bring-your-own-model example runs end to end (one seed, to keep the suite short)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_own_model_example_runs_end_to_end(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "own_model.py"), "--out", str(tmp_path),
                           "--seeds", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert set(results["methods"]) == {"base", "duet", "duet-global"}
    assert results["device_max_abs_diff"] < 1e-4  # the device runtime scores like torch
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    assert "| duet - base |" in (tmp_path / "report" / "results.md").read_text()
