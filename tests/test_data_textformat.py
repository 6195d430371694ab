"""The reference text format: import, export, exact round trips, and a 200k-line file."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from duet.atomic import sha256_file
from duet.cli import app
from duet.tasks.recommendation.data.prepare import prepare_dataset
from duet.tasks.recommendation.data.store import SPLITS, load_dataset, load_vocab, read_manifest
from duet.tasks.recommendation.data.textformat import (
    export_text,
    format_text,
    read_text,
    valid_mask,
)

runner = CliRunner()


def _line(user, item, window, history, label):
    return f"{user};{item};{','.join(map(str, window))};{','.join(map(str, history))};{label}"


def _handmade() -> tuple[str, str]:
    """Users 0 (12 train records: 1 valid), 3 (9: none) and 5 (21: 2 valid), their
    impressions interleaved; the candidates of an impression share window and history."""
    rng = np.random.default_rng(3)
    impressions = {0: 4, 3: 3, 5: 7}
    train, test = [], []
    for k in range(max(impressions.values())):
        for user, count in impressions.items():
            if k >= count:
                continue
            length = int(rng.integers(1, 6))
            history = [int(x) for x in rng.integers(1, 40, size=length)] + [0] * (5 - length)
            window = history[:2] + [0]
            for j, item in enumerate(rng.integers(1, 39, size=3)):
                train.append(_line(user, int(item), window, history, int(j == 0)))
    for user in impressions:
        test.append(_line(user, 39, [7, 0, 0], [7, 8, 9, 0, 0], 1))
        test.append(_line(user, 2, [7, 0, 0], [7, 8, 9, 0, 0], 0))
    return "\n".join(train) + "\n", "\n".join(test) + "\n"


def _files(tmp_path: Path, train: str, test: str) -> tuple[Path, Path]:
    (tmp_path / "train.txt").write_text(train)
    (tmp_path / "test.txt").write_text(test)
    return tmp_path / "train.txt", tmp_path / "test.txt"


def _round_trip(train: Path, test: Path, tmp_path: Path) -> None:
    """import -> export -> import: identical text and identical dataset files."""
    first, second = tmp_path / "first", tmp_path / "second"
    prepare_dataset(first, "duet-text", train=train, test=test)
    export_text(first, tmp_path / "train2.txt", tmp_path / "test2.txt")
    assert (tmp_path / "train2.txt").read_bytes() == train.read_bytes()
    assert (tmp_path / "test2.txt").read_bytes() == test.read_bytes()
    prepare_dataset(second, "duet-text", train=tmp_path / "train2.txt", test=tmp_path / "test2.txt")
    for name in (*SPLITS, "vocab"):
        assert sha256_file(first / f"{name}.safetensors") == sha256_file(second / f"{name}.safetensors")
    a, b = read_manifest(first), read_manifest(second)
    a.pop("source"), b.pop("source")
    assert a == b


def test_handmade_round_trip(tmp_path):
    train, test = _files(tmp_path, *_handmade())
    _round_trip(train, test, tmp_path)


def test_handmade_import(tmp_path):
    train, test = _files(tmp_path, *_handmade())
    out = tmp_path / "data"
    manifest = prepare_dataset(out, "duet-text", train=train, test=test)
    assert manifest["protocol"] == {"kind": "duet-text", "valid_fraction": 0.1}
    assert manifest["source"]["train"]["sha256"] == sha256_file(train)
    data, vocab = load_dataset(out), load_vocab(out)
    records = read_text(train)
    valid = data["valid"]
    # user 0: 12 records -> its last one; user 3: 9 -> none; user 5: 21 -> its last two
    expected = {0: [11], 5: [19, 20]}
    lines = np.flatnonzero(records.user == 0)[expected[0]].tolist()
    lines += np.flatnonzero(records.user == 5)[expected[5]].tolist()
    assert sorted(valid.line.tolist()) == sorted(lines)
    # events are unique (window, history) rows, shared by an impression's candidates
    train_split = data["train"]
    rows = np.concatenate([train_split.window, train_split.history], axis=1)
    assert len(np.unique(rows, axis=0)) == train_split.num_events < len(train_split)
    np.testing.assert_array_equal(train_split.history[train_split.event], records.history[train_split.line])
    np.testing.assert_array_equal(train_split.window[train_split.event], records.window[train_split.line])
    assert data.num_items == 40 and vocab["item_raw"][0] == -1
    np.testing.assert_array_equal(vocab["item_raw"][1:], np.arange(1, 40))
    np.testing.assert_array_equal(vocab["user_raw"], np.arange(6))
    assert (data.history_len, data.window_len) == (5, 3)


def test_valid_mask_takes_floor_tenth_from_the_end():
    user = np.array([1] * 30 + [2] * 9 + [1] * 5 + [4] * 10)
    mask = valid_mask(user)
    assert mask[np.flatnonzero(user == 1)].tolist() == [False] * 32 + [True] * 3
    assert not mask[user == 2].any()
    assert mask[np.flatnonzero(user == 4)].tolist() == [False] * 9 + [True]


def test_format_text_matches_python():
    rng = np.random.default_rng(0)
    n = 50
    user = rng.integers(0, 10**9, n)
    item = rng.integers(1, 100, n)
    window = rng.integers(0, 12345, (n, 3))
    history = rng.integers(0, 7, (n, 4))
    label = rng.integers(0, 2, n)
    want = "".join(_line(*row) + "\n" for row in zip(user, item, window.tolist(), history.tolist(), label,
                                                     strict=True))
    assert format_text(user, item, window, history, label).decode() == want


def test_movielens_export_round_trip(movielens_dir, tmp_path):
    """A raw-source dataset exports in `line` order and re-imports exactly."""
    result = runner.invoke(app, ["export-text", str(movielens_dir), "--train", str(tmp_path / "tr.txt"),
                                 "--test", str(tmp_path / "te.txt")])
    assert result.exit_code == 0, result.output
    data = load_dataset(movielens_dir)
    with open(tmp_path / "tr.txt", "rb") as f:
        assert sum(1 for _ in f) == len(data["train"]) + len(data["valid"])
    test = read_text(tmp_path / "te.txt")
    split = data["test"]
    np.testing.assert_array_equal(test.item, split.item[np.argsort(split.line)])
    np.testing.assert_array_equal(test.history, split.history[split.event][np.argsort(split.line)])
    round_dir = tmp_path / "round"
    round_dir.mkdir()
    _round_trip(tmp_path / "tr.txt", tmp_path / "te.txt", round_dir)


def test_export_refuses_to_overwrite(tiny_dir, tmp_path):
    (tmp_path / "tr.txt").write_text("keep me\n")
    args = ["export-text", str(tiny_dir), "--train", str(tmp_path / "tr.txt"), "--test", str(tmp_path / "te.txt")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert (tmp_path / "tr.txt").read_text() == "keep me\n" and not (tmp_path / "te.txt").exists()
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert (tmp_path / "tr.txt").read_text() != "keep me\n"


def test_crlf_and_missing_final_newline_are_read(tmp_path):
    train, test = _handmade()
    crlf = _files(tmp_path, train.replace("\n", "\r\n"), test.rstrip("\n"))
    a = read_text(crlf[0])
    b = read_text(crlf[1], (3, 5))
    (tmp_path / "plain.txt").write_text(train)
    np.testing.assert_array_equal(a.history, read_text(tmp_path / "plain.txt").history)
    assert len(b) == 6


@pytest.mark.slow
def test_import_200k_lines(tmp_path):
    rng = np.random.default_rng(1)
    n, width, length = 200_000, 10, 50
    user = np.sort(rng.integers(0, 5000, n))
    item = rng.integers(1, 4000, n)
    have = rng.integers(1, length + 1, n)
    history = np.where(np.arange(length) < have[:, None], rng.integers(1, 4000, (n, length)), 0)
    window = history[:, :width].copy()
    label = (rng.random(n) < 0.2).astype(np.int64)
    train = tmp_path / "train.txt"
    train.write_bytes(format_text(user, item, window, history, label))
    test = tmp_path / "test.txt"
    test.write_bytes(format_text(user[:1000], item[:1000], window[:1000], history[:1000], label[:1000]))
    started = time.process_time()  # this process's CPU time: what other jobs on the machine do not change
    result = runner.invoke(app, ["prepare", "--source", "duet-text", "--train", str(train), "--test", str(test),
                                 "--out", str(tmp_path / "big")])
    seconds = time.process_time() - started
    assert result.exit_code == 0, result.output
    assert seconds < 30, f"200k-line import took {seconds:.1f} s of CPU"
    data = load_dataset(tmp_path / "big")
    assert len(data["train"]) + len(data["valid"]) == n and len(data["test"]) == 1000
    for name in ("train", "valid"):
        split = data[name]
        np.testing.assert_array_equal(split.item, item[split.line])
        np.testing.assert_array_equal(split.history[split.event], history[split.line])
        np.testing.assert_array_equal(split.window[split.event], window[split.line])
        np.testing.assert_array_equal(split.label, label[split.line])
    assert data.num_items == max(item.max(), history.max()) + 1
