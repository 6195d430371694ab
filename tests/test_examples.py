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


@pytest.mark.slow
def test_flights_example_runs_end_to_end_on_held_out_aircraft(tmp_path):
    """The real-data example, small: aircraft held out of training, a regression in minutes, the
    bundle served and an unseen aircraft's device runtime predicting like torch."""
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "flights.py"), "--out", str(tmp_path),
                           "--seeds", "1", "--aircraft", "20", "--per-aircraft", "40", "--epochs", "2",
                           "--duet-epochs", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["higher_is_better"] is False and results["devices"] == {"seen": 14, "unseen": 6}
    assert results["device_max_abs_diff"] < 1e-4 and results["flights"]["flights"] == 20 * 40
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["target"] == "value" and set(manifest["builder_options"]) == {"carrier", "origin", "dest", "hour"}
    assert set(results["unseen_differences"]) == {"duet - base", "duet - duet-global"}
