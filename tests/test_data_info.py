"""`duet data info`: summaries and the figure."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from duet.cli import app
from duet.tasks.recommendation.data.info import gini, summarize
from duet.tasks.recommendation.data.store import SPLITS, load_dataset

runner = CliRunner()


def test_gini_worked_examples():
    assert gini(np.array([3, 3, 3, 3])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)  # (n - 1) / n
    assert gini(np.array([1, 2, 3])) == pytest.approx(2 / 9)
    assert gini(np.zeros(3)) == 0.0


def test_summarize(tiny_dir):
    info = summarize(tiny_dir, top=5)
    data = load_dataset(tiny_dir)
    assert info["num_users"] == data.num_users and info["history_len"] == data.history_len
    for name in SPLITS:
        s = info["splits"][name]
        assert s["records"] == len(data[name])
        assert 1 <= s["history"]["min"] <= s["history"]["median"] <= s["history"]["max"] <= data.history_len
        assert s["window"]["max"] <= data.window_len
    pop = info["popularity"]
    assert pop["positives"] == sum(int(data[s].label.sum()) for s in SPLITS)
    shares = [row["positives"] for row in pop["top"]]
    assert len(shares) == 5 and shares == sorted(shares, reverse=True)
    assert 0 < pop["gini"] < 1 and 0.1 <= pop["top10pct_share"] <= 1
    # the most popular item really is the most frequent positive
    counts = sum(np.bincount(data[s].item[data[s].label == 1], minlength=data.num_items) for s in SPLITS)
    assert pop["top"][0]["item"] == int(np.argmax(counts))


def test_cli_info_and_plot(tiny_dir, tmp_path):
    png = tmp_path / "fig" / "info.png"
    result = runner.invoke(app, ["data", "info", str(tiny_dir), "--plot", str(png), "--top", "3"])
    assert result.exit_code == 0, result.output
    assert "gini" in result.stdout and "history" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["info.png"]


def test_cli_info_not_a_dataset(tmp_path):
    result = runner.invoke(app, ["data", "info", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "not a duet dataset" in result.stderr
