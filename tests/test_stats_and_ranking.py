"""Paired bootstrap intervals (coverage on cases with a known difference) and
full-catalogue ranking metrics (against a brute-force loop)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_tiny_run
from typer.testing import CliRunner

from duet.checkpoint import load_run
from duet.cli import app
from duet.report.stats import difference_matrix, paired_bootstrap
from duet.tasks.recommendation.data.store import load_dataset
from duet.tasks.recommendation.full_ranking import (
    full_ranking,
    interacted_items,
    ranking_from_ranks,
)


@pytest.mark.parametrize("seeds", [1, 3])
def test_bootstrap_interval_covers_the_true_difference_at_its_nominal_rate(seeds: int) -> None:
    rng = np.random.default_rng(0)
    true, trials, covered = 0.01, 200, 0
    for trial in range(trials):
        user_effect = rng.normal(true, 0.05, 300)  # users differ in how much they gain
        diff = user_effect + rng.normal(0, 0.02, (seeds, 300))  # plus run-to-run noise
        ci = paired_bootstrap(diff, n_boot=400, seed=trial)
        covered += ci["lo"] <= true <= ci["hi"]
    assert 0.88 <= covered / trials <= 0.99, covered / trials


def test_bootstrap_marks_a_clear_difference_and_not_a_null_one() -> None:
    rng = np.random.default_rng(1)
    clear = paired_bootstrap(rng.normal(0.02, 0.05, (3, 600)))
    null = paired_bootstrap(rng.normal(0.0, 0.05, (1, 600)))
    assert clear["significant"] and clear["lo"] > 0
    assert null["lo"] < 0 < null["hi"]
    assert clear["mean"] == pytest.approx(0.02, abs=0.005)


def test_difference_matrix_pairs_users_and_drops_undefined_ones() -> None:
    a = [{1: 0.9, 2: 0.6, 3: 0.5}, {1: 0.8, 2: 0.7}]
    b = [{1: 0.5, 2: 0.6, 3: 0.1}, {1: 0.8, 2: 0.5}]
    diff = difference_matrix(list(zip(a, b, strict=True)))
    assert diff.shape == (2, 2)  # user 3 has no AUC in seed 1
    assert np.allclose(diff, [[0.4, 0.0], [0.0, 0.2]])


def test_ranking_metrics_from_ranks_worked_example() -> None:
    got = ranking_from_ranks(np.array([1, 3, 11]), k=10)
    assert got["full_recall@10"] == pytest.approx(2 / 3)
    assert got["full_ndcg@10"] == pytest.approx((1 + 1 / np.log2(4)) / 3)
    assert got["full_mrr"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)


@pytest.mark.parametrize("method", ["base", "duet"])
def test_full_ranking_matches_brute_force(tiny_data: Path, tmp_path: Path, method: str) -> None:
    run = train_tiny_run(tiny_data, tmp_path / method, method=method)
    config, model, _ = load_run(run)
    data = load_dataset(tiny_data)
    test = data["test"]
    seen = interacted_items(data, int(test.user.max()) + 1)
    got = full_ranking(model, test, seen, config.facts["num_items"], k=5)
    ranks = []
    model.eval()
    with torch.no_grad():
        for r in np.flatnonzero(test.label > 0):
            e, user, target = test.event[r], test.user[r], test.item[r]
            history = torch.from_numpy(test.history[e:e + 1].astype(np.int64))
            window = torch.from_numpy(test.window[e:e + 1].astype(np.int64))
            score = {}
            for item in range(1, config.facts["num_items"]):
                if item != target and item in seen[user]:
                    continue
                extra = {"window": window} if method == "duet" else {}
                score[item] = float(model(history, torch.tensor([item]), **extra)[0])
            ranks.append(sum(s >= score[target] for s in score.values()))
    expected = ranking_from_ranks(np.array(ranks), k=5)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_evaluate_json_is_one_object_with_the_table_numbers(tiny_data: Path, tmp_path: Path) -> None:
    run = train_tiny_run(tiny_data, tmp_path / "duet", method="duet")
    result = CliRunner().invoke(app, ["evaluate", "--run", str(run), "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics == json.loads((run / "metrics_test.json").read_text())
    assert {"auc", "uauc", "logloss", "ndcg@10"} <= set(metrics)
    table = CliRunner().invoke(app, ["evaluate", "--run", str(run), "--split", "test"])
    assert f"{metrics['uauc']:.4f}" in table.stdout
    user_auc = json.loads((run / "user_auc_test.json").read_text())
    assert np.mean(list(user_auc.values())) == pytest.approx(metrics["uauc"], abs=1e-5)
    glob = CliRunner().invoke(app, ["evaluate", "--run", str(run), "--head", "global", "--json"])
    assert glob.exit_code == 0, glob.output
    assert json.loads(glob.stdout) == json.loads((run / "metrics_test_global.json").read_text())
