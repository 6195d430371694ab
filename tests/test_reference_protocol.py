"""The reference protocol (`duet prepare --protocol reference`), checked against an
independent pandas computation of the same rules and a hand-followed user."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from duet.cli import app
from duet.tasks.recommendation.data.importers import read_movielens_small
from duet.tasks.recommendation.data.store import load_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "reference"
    result = runner.invoke(app, ["prepare", "--protocol", "reference", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """The protocol's filters and order, written plainly with pandas."""
    inter, _ = read_movielens_small()
    df = pd.DataFrame({"user": inter.user, "item": inter.item, "ts": inter.timestamp})
    df = df[df.groupby("item")["item"].transform("size") >= 5]
    df = df[df.groupby("user")["user"].transform("size") >= 10]
    return df.sort_values(["user", "ts", "item"], kind="stable").reset_index(drop=True)


def test_counts_match_the_protocol(reference_dir: Path, raw: pd.DataFrame) -> None:
    data = load_dataset(reference_dir)
    n = raw.groupby("user").size().to_numpy()
    train_targets = np.maximum(np.floor(0.8 * n).astype(int) - 2, 0).sum()
    test_targets = (n - np.maximum(np.floor(0.8 * n).astype(int), 2)).sum()
    train_records = len(data["train"]) + len(data["valid"])
    assert train_records == 2 * train_targets  # 1 negative per train positive
    assert len(data["test"]) == 5 * test_targets  # 4 negatives per test positive
    assert int(data["test"].label.sum()) == test_targets
    assert data.manifest["num_users"] == raw.user.nunique()
    assert data.manifest["num_items"] == raw.item.nunique() + 1  # + padding
    assert (data.history_len, data.window_len) == (30, 10)
    # valid = the last floor(n/10) train records of each user, in file order
    per_user = np.bincount(np.concatenate([data["train"].user, data["valid"].user]))
    assert np.array_equal(np.bincount(data["valid"].user, minlength=len(per_user)), per_user // 10)


def test_a_hand_followed_user(reference_dir: Path, raw: pd.DataFrame) -> None:
    data = load_dataset(reference_dir)
    vocab = load_file(reference_dir / "vocab.safetensors")
    internal = {int(r): i for i, r in enumerate(vocab["item_raw"]) if i > 0}
    user_raw = int(vocab["user_raw"][3])
    seq = [internal[i] for i in raw[raw.user == user_raw].item]  # oldest first
    n = len(seq)
    test = data["test"]
    mine = np.flatnonzero((test.user == 3) & (test.label == 1))
    mine = mine[np.argsort(test.line[mine])]
    first_test = int(np.floor(0.8 * n))
    assert len(mine) == n - first_test
    for k, record in enumerate(mine):
        t = first_test + k
        assert test.item[record] == seq[t]
        history, window = test.history[test.event[record]], test.window[test.event[record]]
        before = seq[max(0, t - 30):t]
        assert history[:len(before)].tolist() == before and not history[len(before):].any()
        assert window[:min(10, t)].tolist() == seq[max(0, t - 10):t]
        negatives = test.item[record + 1:record + 5]
        assert test.label[record + 1:record + 5].sum() == 0
        assert not set(negatives.tolist()) & set(seq)  # never an item the user touched


def test_exported_text_imports_to_the_same_records(reference_dir: Path, tmp_path: Path) -> None:
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    result = runner.invoke(app, ["export-text", str(reference_dir), "--train", str(train), "--test", str(test)])
    assert result.exit_code == 0, result.output
    assert train.read_text().splitlines()[0].count(";") == 4
    out = tmp_path / "imported"
    result = runner.invoke(app, ["prepare", "--source", "duet-text", "--train", str(train), "--test", str(test),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    built, imported = load_dataset(reference_dir), load_dataset(out)
    for name in ("train", "valid", "test"):
        a, b = built[name], imported[name]
        for key in ("user", "item", "label", "line"):
            assert np.array_equal(getattr(a, key), getattr(b, key)), (name, key)
        assert np.array_equal(a.history[a.event], b.history[b.event])
        assert np.array_equal(a.window[a.event], b.window[b.event])


def test_same_seed_same_dataset(reference_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert runner.invoke(app, ["prepare", "--protocol", "reference", "--out", str(out)]).exit_code == 0
    first = json.loads((reference_dir / "manifest.json").read_text())["files"]
    assert json.loads((out / "manifest.json").read_text())["files"] == first


def test_protocol_options_are_refused_with_a_named_protocol(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", "--protocol", "reference", "--history-len", "20",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--protocol reference" in result.output
    result = runner.invoke(app, ["prepare", "--protocol", "nope", "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "unknown --protocol" in result.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
