"""What `duet compare` prints fits an 80-column terminal and carries the key numbers:
rendered from committed reports (no training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from duet.tasks.images.commands import compare_summary
from duet.tasks.recommendation.report.summary import summary_of_report

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.mark.parametrize("report", ["quick", "reference-sasrec", "reference-din", "cutoff-sasrec"])
def test_recommendation_summary_fits_80_columns(report):
    folder = RESULTS / report
    text = summary_of_report(folder)
    summary = json.loads((folder / "results.json").read_text())["summary"]
    (backbone, methods), = summary.items()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert f"{methods['base']['uauc']['mean']:.4f} ± {methods['base']['uauc']['std']:.4f}" in text
    assert f"{methods['duet']['uauc']['mean']:.4f}" in text
    for name in ("duet - base", "duet - duet-global"):
        d = methods["differences"][name]
        assert f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" in text
    assert "generator's own share" in text and backbone in text
    assert str(folder / "results.md") in text.replace("\n  ", " ").replace("\n", " ") or "results.md" in text


def test_recommendation_summary_names_the_report_files(tmp_path):
    shutil.copy(RESULTS / "quick" / "results.json", tmp_path / "results.json")
    (tmp_path / "uauc.png").write_bytes(b"")
    text = summary_of_report(tmp_path).replace("\n  ", " ")
    assert "results.md" in text and "results.json" in text and "uauc.png" in text


def test_image_summary_fits_80_columns():
    text = compare_summary(RESULTS / "digits")
    summary = json.loads((RESULTS / "digits" / "results.json").read_text())["summary"]
    assert max(len(line) for line in text.splitlines()) <= 80
    assert f"{summary['table']['duet']['accuracy_unseen']['mean']:.4f}" in text
    d = summary["differences"]["duet - global (unseen)"]
    assert f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" in text
    assert "own share" in text and "results.md" in text
