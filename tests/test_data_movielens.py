"""MovieLens-100K from the pinned recbole wheel, MovieLens-1M's ratings.dat, and `--protocol loo`
(the reconstruction's leave-one-out layout), on small synthetic files: no network."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from duet.cli import app
from duet.errors import DuetError, InputError
from duet.tasks.recommendation.data import importers
from duet.tasks.recommendation.data import wheel as pinned
from duet.tasks.recommendation.data.prepare import prepare_dataset
from duet.tasks.recommendation.data.store import PAD, load_dataset, load_vocab

USERS, ITEMS = 12, 260


def synthetic_log(seed: int = 0) -> pd.DataFrame:
    """12 users with 14-30 ratings each of 260 items, timestamps with ties inside users."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, USERS + 1):
        n = int(rng.integers(14, 31))
        items = rng.choice(np.arange(1, ITEMS + 1), n, replace=False)
        times = 880_000_000 + np.sort(rng.integers(0, 40, n)) * 1000  # repeated times: ties
        rows += [(user, int(i), int(rng.integers(1, 6)), int(t)) for i, t in zip(items, times, strict=True)]
    order = np.random.default_rng(seed + 1).permutation(len(rows))  # source rows not in time order
    return pd.DataFrame([rows[i] for i in order], columns=["user", "item", "rating", "timestamp"])


def write_inter(frame: pd.DataFrame, path: Path) -> Path:
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    text += "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in frame.itertuples(index=False))
    path.write_text(text)
    return path


def make_wheel(inter: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(inter, pinned.ML100K_MEMBER)
        archive.writestr("recbole/__init__.py", "raise SystemExit('never imported')\n")
    return path


def timelines(frame: pd.DataFrame) -> dict[int, list[int]]:
    """Each user's items in (timestamp, source row) order, recomputed with pandas."""
    ordered = frame.reset_index().sort_values(["user", "timestamp", "index"], kind="stable")
    return {int(u): g["item"].tolist() for u, g in ordered.groupby("user")}


@pytest.fixture
def inter(tmp_path):
    frame = synthetic_log()
    return frame, write_inter(frame, tmp_path / "ml-100k.inter")


# ---------------------------------------------------------------- --protocol loo


def test_loo_protocol_is_the_reconstructions_layout(inter, tmp_path):
    frame, path = inter
    manifest = prepare_dataset(tmp_path / "d", "ml-100k", path=path, named_protocol="loo")
    assert manifest["protocol"]["name"] == "loo" and manifest["protocol"]["window_lag"] == 1
    assert (manifest["history_len"], manifest["window_len"]) == (10, 10)
    data = load_dataset(tmp_path / "d")
    vocab = load_vocab(tmp_path / "d")
    item_raw, user_raw = vocab["item_raw"], vocab["user_raw"]
    lines = timelines(frame)
    assert len(user_raw) == USERS  # no k-core: every user and every rated item is kept
    assert len(item_raw) - 1 == frame["item"].nunique()
    steps = {name: {} for name in ("train", "valid", "test")}
    for name, negatives in (("train", 4), ("valid", 99), ("test", 99)):
        split = data[name]
        assert len(split) == split.num_events * (1 + negatives)
        for e in range(split.num_events):
            rows = np.flatnonzero(split.event == e)
            user = int(user_raw[split.user[rows[0]]])
            target = int(item_raw[split.item[rows[0]]])
            assert split.label[rows[0]] == 1 and not split.label[rows[1:]].any()  # positive first
            rated = set(lines[user])
            assert not {int(item_raw[i]) for i in split.item[rows[1:]]} & rated  # never-rated negatives
            assert len(set(split.item[rows[1:]].tolist())) == negatives  # distinct
            history = [int(item_raw[i]) for i in split.history[e] if i != PAD]
            window = [int(item_raw[i]) for i in split.window[e] if i != PAD]
            # the target's step i: history = the (up to) 10 items before it; window = the previous step's
            i = len(lines[user]) - 1 - next(k for k in range(len(lines[user]))
                                              if lines[user][len(lines[user]) - 1 - k] == target)
            assert history == lines[user][max(0, i - 10):i]
            assert window == lines[user][max(0, i - 11):max(0, i - 1)]
            steps[name].setdefault(user, []).append(i)
    for user, line in lines.items():
        n = len(line)
        assert steps["test"][user] == [n - 1]
        assert steps["valid"][user] == [n - 2]
        assert sorted(steps["train"][user]) == list(range(1, n - 2))  # the validation step is not trained on


def test_options_beside_loo_override_it(inter, tmp_path):
    _, path = inter
    result = CliRunner().invoke(app, ["prepare", "--source", "ml-100k", "--path", str(path), "--protocol", "loo",
                                      "--history-len", "20", "--window-lag", "0", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    manifest = load_dataset(tmp_path / "d").manifest
    assert manifest["history_len"] == 20
    assert manifest["protocol"].items() >= {"window_lag": 0, "split": "loo", "eval_negatives": 99,
                                            "train_negatives": 4}.items()
    test = load_dataset(tmp_path / "d")["test"]
    np.testing.assert_array_equal(test.window, _tails(test.history, 10))  # lag 0: the history's tail


def _tails(history: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros((len(history), length), history.dtype)
    for r, row in enumerate(history):
        items = row[row != PAD][-length:]
        out[r, :len(items)] = items
    return out


def test_reference_protocol_still_refuses_options(inter, tmp_path):
    _, path = inter
    result = CliRunner().invoke(app, ["prepare", "--source", "recbole", "--path", str(path), "--protocol",
                                      "reference", "--history-len", "20", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "fixes every protocol option" in result.output


# ---------------------------------------------------------------- the pinned wheel


def test_wheel_and_inter_file_give_the_same_dataset(inter, tmp_path, monkeypatch):
    _, path = inter
    wheel = make_wheel(path, tmp_path / pinned.WHEEL)
    monkeypatch.setattr(pinned, "WHEEL_SHA256", pinned.sha256_file(wheel))
    from_wheel, source = importers.read_ml100k(wheel)
    from_inter, _ = importers.read_ml100k(path)
    for key in ("user", "item", "timestamp"):
        np.testing.assert_array_equal(getattr(from_wheel, key), getattr(from_inter, key))
    assert source["kind"] == "ml-100k" and source["package"] == "recbole==1.2.1"


def test_a_wheel_with_other_bytes_is_refused(inter, tmp_path):
    wheel = make_wheel(inter[1], tmp_path / pinned.WHEEL)
    with pytest.raises(DuetError, match=r"sha256 .* is not recbole==1\.2\.1's"):
        importers.read_ml100k(wheel)


def test_fetch_downloads_once_into_the_cache(inter, tmp_path, monkeypatch):
    wheel = make_wheel(inter[1], tmp_path / "built.whl")
    monkeypatch.setattr(pinned, "WHEEL_SHA256", pinned.sha256_file(wheel))
    calls = []

    def fake_download(requirement: str, dest: Path) -> None:
        calls.append(requirement)
        (dest / pinned.WHEEL).write_bytes(wheel.read_bytes())

    monkeypatch.setattr(pinned, "pip_download", fake_download)
    cache = tmp_path / "cache"
    assert pinned.fetch_wheel(cache) == cache / pinned.WHEEL
    assert pinned.fetch_wheel(cache) == cache / pinned.WHEEL
    assert calls == ["recbole==1.2.1"]
    assert [p.name for p in cache.iterdir()] == [pinned.WHEEL]  # no temporary folder left behind


def test_no_wheel_is_one_line(tmp_path, monkeypatch):
    def failing_pip(command, **_):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version that satisfies "
                                           "the requirement recbole==1.2.1 (from versions: none)\n")

    monkeypatch.setattr(pinned.subprocess, "run", failing_pip)
    monkeypatch.setenv("DUET_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["prepare", "--source", "ml-100k", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "could not download recbole==1.2.1 with pip (ERROR: Could not find" in lines[0]
    assert "--path" in lines[0] and not (tmp_path / "d").exists()


def test_not_a_zip_is_one_line(tmp_path, monkeypatch):
    fake = tmp_path / pinned.WHEEL
    fake.write_text("not a zip")
    monkeypatch.setattr(pinned, "WHEEL_SHA256", pinned.sha256_file(fake))
    with pytest.raises(DuetError, match="not a zip file"):
        importers.read_ml100k(fake)


# ---------------------------------------------------------------- MovieLens-1M's ratings.dat


def test_movielens_1m_reads_like_the_same_csv(tmp_path):
    frame = synthetic_log(3)
    dat = tmp_path / "ratings.dat"
    dat.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in frame.itertuples(index=False)))
    csv = tmp_path / "ratings.csv"
    frame.to_csv(csv, index=False)
    a = prepare_dataset(tmp_path / "a", "movielens-1m", path=dat, named_protocol="loo")
    b = prepare_dataset(tmp_path / "b", "csv", path=csv, named_protocol="loo")
    assert a["source"]["kind"] == "movielens-1m" and a["source"]["rows"] == len(frame)
    assert a["files"] == b["files"]  # the same records, byte for byte


@pytest.mark.parametrize(("line", "expected"), [
    ("3::7::4", "expected UserID::MovieID::Rating::Timestamp, found '3::7::4'"),
    ("3::7::4::5::6", "expected UserID::MovieID::Rating::Timestamp, found '3::7::4::5::6'"),
    ("3:7::4::5", "expected UserID::MovieID::Rating::Timestamp, found '3:7::4::5'"),
    ("", "expected UserID::MovieID::Rating::Timestamp, found ''"),
    ("3::x::4::5", "expected an integer item id in column 'item', found 'x'"),
    ("3::7::4::soon", "expected an integer timestamp in column 'timestamp', found 'soon'"),
])
def test_movielens_1m_bad_line_is_named(tmp_path, line, expected):
    dat = tmp_path / "ratings.dat"
    dat.write_text("1::2::5::978300760\n2::3::4::978300761\n" + line + "\n")
    with pytest.raises(InputError) as error:
        importers.read_movielens_1m(dat)
    assert str(error.value).startswith(f"{dat}:3: ") and expected in str(error.value)
