"""ARM-BN: batch norms normalise each device's group with its own statistics in training, the
batcher groups one device's samples, `duet train --method armbn` scores validation with each
device's window, and the window sweep's smoke mode writes every W."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from duet.checkpoint import load_run
from duet.cli import app
from duet.config import ModelConfig
from duet.tasks.fleet.store import load_fleet
from duet.tasks.images.armbn import GroupBatcher, evaluate_armbn, per_group_norm
from duet.tasks.images.baselines import (
    adaptation_rows,
    batch_norms,
    bnstats_images,
    with_statistics,
)
from duet.tasks.images.evaluation import evaluate_images
from duet.tasks.images.fleet import FleetConfig, prepare_fleet
from duet.tasks.images.model import ImageClassifier
from duet.tasks.images.task import ImageTask

ROOT = Path(__file__).resolve().parents[1]
SMALL = FleetConfig(seen_devices=12, unseen_valid_devices=4, unseen_test_devices=4, train_per_device=20,
                    valid_per_device=12, test_per_device=12, unseen_per_device=16, adapt=8, window_len=6)
runner = CliRunner()


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("armbn") / "fleet"
    prepare_fleet(out, "digits-fleet", SMALL)
    return out


def _model() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier((1, 8, 8), 10, ModelConfig(backbone="cnn", embed_dim=16, dropout=0.0))


def test_each_group_is_normalised_with_its_own_statistics_unlike_plain_batch_norm():
    model = _model().train()
    x = torch.cat([torch.rand(6, 1, 8, 8), torch.rand(4, 1, 8, 8) + 5.0])  # two devices, far-apart means
    first = batch_norms(model)[0]  # weight 1, bias 0: its output is the normalised activation
    captured: list[torch.Tensor] = []
    handle = first.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    with per_group_norm(model, (6, 4)):
        grouped = model(x)
    model(x)  # plain batch norm: one set of statistics for the whole batch
    handle.remove()
    for part in captured[0].split([6, 4]):
        assert part.mean((0, 2, 3)).abs().max() < 1e-4
        torch.testing.assert_close(part.var((0, 2, 3), unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    assert min(float(part.mean((0, 2, 3)).abs().max()) for part in captured[1].split([6, 4])) > 0.5
    with torch.no_grad():  # the same as each device's group alone through the network
        torch.testing.assert_close(grouped.detach(), torch.cat([model(x[:6]), model(x[6:])]), atol=1e-5, rtol=1e-5)
    assert "forward" not in vars(first)  # the context leaves the model as it was


def test_groups_hold_one_devices_samples_with_the_windows_size(fleet_dir):
    train = load_fleet(fleet_dir, ("train",))["train"]
    batcher = GroupBatcher(train, batch_size=20, size=6)
    batches = list(batcher.shuffled(seed=0, epoch=0))
    assert len(batches) == batcher.num_batches() == -(-12 * 3 // 3)  # 3 groups of 6 per 20-sample device
    rows = np.concatenate([b.rows for b in batches])
    assert len(rows) == len(set(rows.tolist())) == 12 * 18  # no sample twice, two per device wait
    for batch in batches:
        assert batch.sizes == (6, 6, 6) and len(batch.x) == len(batch.y) == 18
        for group in np.split(batch.rows, np.cumsum(batch.sizes)[:-1]):
            assert len(set(train.data.device[group].tolist())) == 1
    again = list(batcher.shuffled(seed=0, epoch=0))
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(batches, again, strict=True))
    assert not np.array_equal(batches[0].rows, next(batcher.shuffled(seed=0, epoch=1)).rows)
    whole = next(GroupBatcher(train, batch_size=128, size=50).shuffled(0, 0))  # W above a device's count
    assert set(whole.sizes) == {20}


def test_window_statistics_come_from_the_prefixs_most_recent_samples(fleet_dir):
    data = load_fleet(fleet_dir, ("valid",))
    split, base = data["valid"], _model().eval()
    device = int(split.device[0])
    rows = adaptation_rows(data, "valid", device)
    mine = split.device == device
    local = with_statistics(base, torch.from_numpy(data.x[rows[-3:]]), prior=0)
    with torch.no_grad():
        expected = local(torch.from_numpy(data.x[split.rows[mine]])).numpy()
    np.testing.assert_allclose(bnstats_images(base, split, 0, context=3).logits[mine], expected, atol=1e-5)
    np.testing.assert_allclose(bnstats_images(base, split, 0, context=50).logits,
                               bnstats_images(base, split, 0).logits, atol=1e-6)
    assert not np.allclose(bnstats_images(base, split, 0, context=3).logits[mine], bnstats_images(
        base, split, 0).logits[mine], atol=1e-4)


def test_duet_train_method_armbn_selects_and_scores_with_each_devices_window(fleet_dir, tmp_path):
    run = tmp_path / "armbn"
    common = ["--data", str(fleet_dir), "--threads", "1", "--no-progress", "--embed-dim", "16"]
    result = runner.invoke(app, ["train", "--out", str(run), "--method", "armbn", "--epochs", "2", *common])
    assert result.exit_code == 0, result.output
    config, model, _ = load_run(run)
    assert config.train.method == "armbn"
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and history[0]["records_per_s"] > 0
    data = load_fleet(fleet_dir, ("train", "valid"))
    assert isinstance(ImageTask().batcher(data, config), GroupBatcher)  # trained in groups of one device
    # the epoch was selected with each device's window statistics (logloss: it tells them apart after 2 epochs)
    selected = json.loads((run / "metrics_valid.json").read_text())
    assert selected["logloss"] == pytest.approx(evaluate_armbn(model, data["valid"], SMALL.window_len)["logloss"])
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    test = load_fleet(fleet_dir, ("test",))["test"]
    expected = evaluate_armbn(model, test, SMALL.window_len)
    assert json.loads(result.output)["logloss"] == pytest.approx(expected["logloss"])
    assert expected["logloss"] != pytest.approx(evaluate_images(model, test)["logloss"])  # not the running statistics
    result = runner.invoke(app, ["export", "--run", str(run), "--out", str(tmp_path / "bundle")])
    assert result.exit_code != 0 and "export needs a base or DUET run" in result.output


@pytest.mark.slow
def test_window_sweep_smoke_writes_every_window(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["window_sweep.py", "--smoke", "--out", str(tmp_path)])
    runpy.run_path(str(ROOT / "experiments" / "window_sweep.py"), run_name="__main__")
    sweep = json.loads((tmp_path / "window_sweep.json").read_text())
    assert list(sweep["by_window"]) == ["5", "10", "20", "25", "50"] and sweep["smoke"] is True
    assert (tmp_path / "window_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for window, row in sweep["by_window"].items():
        assert row["window_len"] == int(window) and row["stat_samples"] == min(int(window), 4)
        for method in ("duet", "global", "bnstats", "armbn"):
            assert {"valid_unseen", "test_unseen", "valid_all", "test_all"} <= set(row["accuracy"][method])
        for split in ("valid", "test"):
            assert {"mean", "lo", "hi", "seed_level"} <= set(row["differences"]["duet - global (unseen)"][split])
        assert row["payload"]["float32_bytes"]["duet_upload_raw_window"] == 4 * int(window) * 64
        assert (tmp_path / f"W{window}" / "results.md").is_file()
