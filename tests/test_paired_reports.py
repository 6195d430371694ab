"""experiments/paired_reports.py: one method of two comparisons, paired on the users and seeds both
scored, against a hand computation."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def report(folder: Path, user_aucs: dict[str, dict[str, float]], valid: dict[str, float]) -> Path:
    runs = {seed: {"device-duet": {"user_auc": aucs, "valid_uauc_per_variant": valid, "variant": max(valid, key=valid.get)}}
            for seed, aucs in user_aucs.items()}
    summary = {"device-duet": {"uauc": {"mean": 0.9, "std": 0.0}, "device_cost": {"head_parameters": {"mean": 12.0}}},
               "gap_closed": {"device-duet": {"pooled": 0.5, "mean": 0.5}}}
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"runs": {"sasrec": runs}, "summary": {"sasrec": summary}}))
    return folder


def run(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["paired_reports.py", *args])
    runpy.run_path(str(ROOT / "experiments" / "paired_reports.py"), run_name="__main__")


def test_difference_is_paired_on_common_users_and_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a: seeds 0, 1 and 2; b: seeds 0 and 1 only. User 3 has no AUC in b's seed 1: it leaves every seed.
    a = report(tmp_path / "a", {"seed0": {"1": 0.9, "2": 0.8, "3": 0.5},
                                "seed1": {"1": 1.0, "2": 0.6, "3": 0.7},
                                "seed2": {"1": 0.0, "2": 0.0, "3": 0.0}}, {"x": 0.7, "y": 0.8})
    b = report(tmp_path / "b", {"seed0": {"1": 0.7, "2": 0.8, "3": 0.9},
                                "seed1": {"1": 0.9, "2": 0.9}}, {"x": 0.6})
    out = tmp_path / "paired.json"
    run(monkeypatch, "--a", str(a), "--b", str(b), "--out", str(out))
    d = json.loads(out.read_text())
    diff = d["a - b"]
    assert diff["seeds"] == ["seed0", "seed1"]
    # seed0: users 1, 2 -> (0.2 + 0.0) / 2 = 0.1; seed1: (0.1 - 0.3) / 2 = -0.1
    assert diff["per_seed"] == pytest.approx({"seed0": 0.1, "seed1": -0.1})
    assert diff["boot"]["mean"] == pytest.approx(0.0, abs=1e-12) and diff["boot"]["users"] == 2
    assert diff["boot"]["lo"] <= 0.0 <= diff["boot"]["hi"] and not diff["boot"]["significant"]
    assert diff["seed_level"]["mean"] == pytest.approx(0.0, abs=1e-12)
    # Each side: its chosen variant's validation uauc (mean over its seeds), payload size, choices.
    assert d["a"]["valid_uauc"] == pytest.approx(0.8) and d["b"]["valid_uauc"] == pytest.approx(0.6)
    assert d["a"]["dynamic_parameters"] == 12.0 and d["a"]["variant"]["seed2"] == "y"


def test_a_report_that_is_not_finished_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = report(tmp_path / "a", {"seed0": {"1": 0.9}}, {"x": 0.7})
    with pytest.raises(SystemExit, match=r"missing[/\\]results.json: not a finished comparison"):
        run(monkeypatch, "--a", str(a), "--b", str(tmp_path / "missing"), "--out", str(tmp_path / "o.json"))
