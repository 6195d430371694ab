"""`--source synthetic-scale`: sizes that grow with --scale, Zipf popularity, session structure,
determinism, and a dataset that `duet prepare` builds from it like from any raw log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from duet.cli import app
from duet.tasks.recommendation.data.store import load_dataset
from duet.tasks.recommendation.data.synthetic import DAY, MIN_PER_USER, synthetic_log

runner = CliRunner()


def test_sizes_grow_with_the_scale() -> None:
    small, _ = synthetic_log(1)
    big, source = synthetic_log(4)
    assert 80_000 < len(small) < 120_000 and len(np.unique(small.user)) == 671  # about MovieLens-small
    assert 3.5 < len(big) / len(small) < 4.5 and source["users"] == 4 * 671
    assert source["items"] > len(np.unique(small.item))  # the catalogue grows too
    assert np.bincount(small.user)[1:].min() >= MIN_PER_USER


def test_popularity_is_heavy_tailed_and_sessions_stay_on_a_topic() -> None:
    log, _ = synthetic_log(1, seed=3)
    counts = np.sort(np.bincount(log.item)[1:])[::-1]
    assert counts[: len(counts) // 10].sum() > 0.5 * counts.sum()  # the top 10% of items hold most clicks
    # Consecutive clicks of a user: within a session minutes apart, between sessions days apart;
    # and a click's item says something about the next one (same topic), unlike a shuffled log.
    order = np.lexsort((log.timestamp, log.user))
    user, item, time = log.user[order], log.item[order], log.timestamp[order]
    same_user = user[1:] == user[:-1]
    gaps = np.diff(time)[same_user]
    assert np.median(gaps) < 3_600 and np.quantile(gaps, 0.95) > DAY / 2
    pairs = {(int(a), int(b)) for a, b in zip(item[:-1][same_user], item[1:][same_user], strict=True)}
    shuffled = np.random.default_rng(0).permutation(item)
    random_pairs = {(int(a), int(b)) for a, b in zip(shuffled[:-1][same_user], shuffled[1:][same_user], strict=True)}
    assert len(pairs) < 0.9 * len(random_pairs)  # repeated transitions: sequences are predictable


def test_the_same_seed_gives_the_same_log() -> None:
    a, b, c = synthetic_log(0.5, seed=1), synthetic_log(0.5, seed=1), synthetic_log(0.5, seed=2)
    for name in ("user", "item", "timestamp"):
        np.testing.assert_array_equal(getattr(a[0], name), getattr(b[0], name))
    assert not np.array_equal(a[0].item, c[0].item)


def test_prepare_builds_a_dataset_from_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", "--source", "synthetic-scale", "--scale", "0.3", "--out",
                                 str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    data = load_dataset(tmp_path / "d")
    assert data.manifest["source"]["kind"] == "synthetic-scale" and data.manifest["source"]["scale"] == 0.3
    assert data.num_users == round(0.3 * 671) and len(data["train"]) > len(data["test"]) > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "synthetic-scale"], "--source synthetic-scale needs --scale"),
    (["--source", "synthetic-scale", "--scale", "0"], "--scale must be in (0, 10000], got 0.0"),
    (["--source", "movielens-small", "--scale", "2"], "--scale is for --source synthetic-scale"),
])
def test_bad_scale_options_are_one_line_errors(tmp_path: Path, args, message) -> None:
    result = runner.invoke(app, ["prepare", "--out", str(tmp_path / "d"), *args])
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()
