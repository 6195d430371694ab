"""The committed comparison reports re-render byte for byte from their committed JSON with today's
code: the comparisons became configurations of one engine (duet.comparison) without changing what
they write. (Reports written by earlier report code, whose Markdown has since changed wording, are
not in these lists.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECOMMENDATION = ("quick", "compressed-w50", "compressed-film", "reference-sasrec")
GENERIC = ("own_model", "flights")


@pytest.mark.parametrize("name", RECOMMENDATION)
def test_a_recommendation_report_re_renders_and_its_summary_recomputes(name, tmp_path):
    from duet.tasks.recommendation.report.compare import summarize
    from duet.tasks.recommendation.report.render import write_markdown

    committed = ROOT / "docs" / "results" / name
    results = json.loads((committed / "results.json").read_text())
    assert summarize(json.loads((committed / "results.json").read_text())) == results["summary"]
    write_markdown(results, tmp_path)
    assert (tmp_path / "results.md").read_bytes() == (committed / "results.md").read_bytes()


@pytest.mark.parametrize("name", GENERIC)
def test_a_generic_report_re_renders(name):
    from duet.comparison.generic import render

    committed = ROOT / "docs" / "results" / name
    assert render(json.loads((committed / "results.json").read_text())) == (committed / "results.md").read_text()


def test_the_image_report_re_renders_with_the_same_summary(tmp_path):
    """The digits comparison (5 seeds): its summary recomputed by the engine and its Markdown, from the
    committed per-device accuracies and the fleet its configuration names (rebuilt: it is seeded)."""
    from duet.tasks.images.compare import ImageCompareConfig, rerender
    from duet.tasks.images.fleet import FleetConfig, prepare_fleet

    committed = ROOT / "docs" / "results" / "digits"
    report = tmp_path / "digits"
    shutil.copytree(committed, report)
    config = ImageCompareConfig.model_validate_json((report / "compare_config.json").read_text())
    prepare_fleet(tmp_path / "digits-fleet", "digits-fleet", FleetConfig())
    (report / "compare_config.json").write_text(config.model_copy(update={"data": str(tmp_path / "digits-fleet")})
                                               .model_dump_json())
    rerender(report)
    assert json.loads((report / "results.json").read_text())["summary"] == \
        json.loads((committed / "results.json").read_text())["summary"]
    assert (report / "results.md").read_bytes() == (committed / "results.md").read_bytes()
