"""Bad input through the real CLI: one line on stderr naming file and line, a non-zero
exit, no traceback and no output directory (not even a temporary one) left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from duet.cli import app
from duet.tasks.recommendation.data.store import load_dataset

runner = CliRunner()

GOOD = ["0;5;1,2,0;1,2,3,4;1", "0;6;1,2,0;1,2,3,4;0", "1;7;3,0,0;3,0,0,0;1"]


def _prepare(tmp_path: Path, *args: str):
    out = tmp_path / "out"
    result = runner.invoke(app, ["prepare", "--out", str(out), *args])
    return result, out


def _assert_one_line_error(result, out: Path, prefix: str) -> str:
    assert result.exit_code == 2, result.output
    message = result.stderr.rstrip("\n")
    assert "\n" not in message, message
    assert "Traceback" not in result.output
    assert message.startswith(f"error: {prefix}"), message
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return message


def _text(tmp_path: Path, train: list[str], test: list[str] | None = None) -> list[str]:
    (tmp_path / "train.txt").write_text("".join(line + "\n" for line in train))
    (tmp_path / "test.txt").write_text("".join(line + "\n" for line in (test if test is not None else GOOD)))
    return ["--source", "duet-text", "--train", str(tmp_path / "train.txt"), "--test", str(tmp_path / "test.txt")]


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("0;5;1,2,0;1,2,3,4", "expected 5 ';'-separated fields"),
        ("0;5;1,2,0;1,2,3,4;1;9", "expected 5 ';'-separated fields"),
        ("0;5;1,x,0;1,2,3,4;1", "trigger_seq: expected a non-negative integer id, found 'x'"),
        ("a;5;1,2,0;1,2,3,4;1", "user_id: expected a non-negative integer id, found 'a'"),
        ("0;5;1,2,0;1,2,3,-4;1", "click_seq: expected a non-negative integer id, found '-4'"),
        ("0;5;1,2,0;1,2,3,4;2", "label: expected 0 or 1, found '2'"),
        ("0;5;1,2,0;1,2,3,4;", "label: expected 0 or 1, found ''"),
        ("0;5;1,2;1,2,3,4;1", "trigger_seq: expected 3 comma-separated ids (the length set by line 1"),
        ("0;5;1,2,0;1,2,3,4,5;1", "click_seq: expected 4 comma-separated ids"),
        ("0;5;1,2,0;1,2,,4;1", "click_seq: expected a non-negative integer id, found ''"),
        ("0;0;1,2,0;1,2,3,4;1", "item_id: 0 is the padding id"),
        ("0;5;0,2,0;1,2,3,4;1", "trigger_seq: expected a left-aligned sequence"),
        ("0;5;1,2,0;1,2,3,99999999999999999999999;1", "click_seq: id 99999999999999999999999 is too large"),
        ("0;3000000000;1,2,0;1,2,3,4;1", "item_id: id 3000000000 is too large"),
        ("", "empty line"),
        ("0;5;1,2,0;1 ,2,3,4;1", "click_seq: expected a non-negative integer id, found '1 '"),
    ],
)
def test_bad_text_line(tmp_path, bad, expected):
    args = _text(tmp_path, [GOOD[0], GOOD[1], bad, GOOD[2]])
    result, out = _prepare(tmp_path, *args)
    message = _assert_one_line_error(result, out, f"{tmp_path / 'train.txt'}:3: ")
    assert expected in message


def test_bad_line_in_test_file_uses_train_lengths(tmp_path):
    args = _text(tmp_path, GOOD, [GOOD[0], "0;5;1,2,0;1,2,3;1"])
    result, out = _prepare(tmp_path, *args)
    message = _assert_one_line_error(result, out, f"{tmp_path / 'test.txt'}:2: click_seq: expected 4")
    assert f"line 1 of {tmp_path / 'train.txt'}" in message


def test_first_bad_line_wins(tmp_path):
    # a value error on line 2 comes before a structural error on line 3
    args = _text(tmp_path, [GOOD[0], "0;5;1,2,0;1,2,3,4;7", "0;5", GOOD[2]])
    result, out = _prepare(tmp_path, *args)
    _assert_one_line_error(result, out, f"{tmp_path / 'train.txt'}:2: label")


@pytest.mark.parametrize("content", ["", "\n\n", "  \n"])
def test_empty_text_file(tmp_path, content):
    args = _text(tmp_path, [])
    (tmp_path / "train.txt").write_text(content)
    result, out = _prepare(tmp_path, *args)
    _assert_one_line_error(result, out, f"{tmp_path / 'train.txt'}:1: empty file")


def test_empty_test_file(tmp_path):
    args = _text(tmp_path, GOOD, [])
    result, out = _prepare(tmp_path, *args)
    _assert_one_line_error(result, out, f"{tmp_path / 'test.txt'}:1: empty file")


# ---------------------------------------------------------------- csv and recbole


def _csv(tmp_path: Path, text: str, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_missing_column(tmp_path):
    path = _csv(tmp_path, "user,item,time\n1,2,3\n")
    result, out = _prepare(tmp_path, "--source", "csv", "--path", str(path))
    message = _assert_one_line_error(result, out, f"{path}:1: missing column 'timestamp'")
    assert "--timestamp-col" in message and "found columns: user, item, time" in message


def test_csv_missing_named_rating_column(tmp_path):
    path = _csv(tmp_path, "user,item,timestamp\n1,2,3\n")
    result, out = _prepare(tmp_path, "--source", "csv", "--path", str(path), "--rating-col", "stars")
    _assert_one_line_error(result, out, f"{path}:1: missing column 'stars'")


@pytest.mark.parametrize(
    ("rows", "line", "expected"),
    [
        ("1,2,3\nx,2,4\n", 3, "expected an integer user id in column 'user', found 'x'"),
        ("1,2,3\n1,2,4\n1,2.5,5\n", 4, "expected an integer item id in column 'item', found '2.5'"),
        ("1,2,3\n1,,4\n", 3, "expected an integer item id in column 'item', found an empty field"),
        ("1,2,3\n1,2,soon\n", 3, "expected a number (timestamp) in column 'timestamp', found 'soon'"),
        ("1,2,3\n\n1,2,3\n", 3, "expected an integer user id"),
        ("1,2,3\n1,2,3,4,5\n", 3, "malformed row: expected 3 fields, found 5"),
    ],
)
def test_csv_bad_value(tmp_path, rows, line, expected):
    path = _csv(tmp_path, "user,item,timestamp\n" + rows)
    result, out = _prepare(tmp_path, "--source", "csv", "--path", str(path))
    message = _assert_one_line_error(result, out, f"{path}:{line}: ")
    assert expected in message


def test_csv_bad_rating(tmp_path):
    path = _csv(tmp_path, "user,item,rating,timestamp\n1,2,4.5,3\n1,3,good,4\n")
    result, out = _prepare(tmp_path, "--source", "csv", "--path", str(path))
    _assert_one_line_error(result, out, f"{path}:3: expected a number (rating)")


@pytest.mark.parametrize("content", ["", "\n"])
def test_csv_empty_file(tmp_path, content):
    path = _csv(tmp_path, content)
    result, out = _prepare(tmp_path, "--source", "csv", "--path", str(path))
    _assert_one_line_error(result, out, f"{path}:1: empty file")


def test_csv_header_only(tmp_path):
    path = _csv(tmp_path, "user,item,timestamp\n")
    result, out = _prepare(tmp_path, "--source", "csv", "--path", str(path))
    _assert_one_line_error(result, out, f"{path}:2: no interactions")


def test_recbole_missing_column_and_string_ids(tmp_path):
    path = _csv(tmp_path, "user_id:token\titem:token\ttimestamp:float\n1\t2\t3\n", "a.inter")
    result, out = _prepare(tmp_path, "--source", "recbole", "--path", str(path))
    message = _assert_one_line_error(result, out, f"{path}:1: missing column 'item_id'")
    assert "found columns: user_id:token, item:token, timestamp:float" in message
    path = _csv(tmp_path, "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\nA1B\t2\t4\n", "b.inter")
    result, out = _prepare(tmp_path, "--source", "recbole", "--path", str(path))
    _assert_one_line_error(result, out, f"{path}:3: expected an integer user id in column 'user_id', found 'A1B'")


def test_missing_file(tmp_path):
    result, out = _prepare(tmp_path, "--source", "csv", "--path", str(tmp_path / "nope.csv"))
    _assert_one_line_error(result, out, f"{tmp_path / 'nope.csv'}: no such file")


# ---------------------------------------------------------------- options and output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--history-len", "0"], "--history-len: Input should be greater than or equal to 1"),
        (["--ratios", "0.5,0.5,0.5"], "ratios must be positive and sum to 1"),
        (["--ratios", "a,b,c"], "--ratios: expected three numbers"),
        (["--split", "random"], "--split: Input should be 'ratio', 'loo' or 'cutoff'"),
        (["--max-users", "0"], "--max-users must be >= 1"),
        (["--source", "csv"], "--source csv needs --path"),
        (["--source", "parquet", "--path", "x"], "unknown 'parquet'"),
        (["--source", "duet-text", "--train", "a", "--test", "b", "--seed", "3"], "--source duet-text takes"),
        (["--source", "duet-text", "--train", "a"], "--source duet-text needs --train and --test"),
        (["--train", "a"], "--train/--test are for --source duet-text"),
    ],
)
def test_bad_options(tmp_path, args, expected):
    result, out = _prepare(tmp_path, *args)
    message = _assert_one_line_error(result, out, "")
    assert expected in message


def test_existing_output_needs_overwrite(tmp_path):
    args = _text(tmp_path, GOOD)
    result, out = _prepare(tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert "train" in result.stdout and str(out) in result.stdout
    before = (out / "manifest.json").read_text()
    result, _ = _prepare(tmp_path, *args)
    assert result.exit_code == 2 and "already exists" in result.stderr and "--overwrite" in result.stderr
    (tmp_path / "train.txt").write_text("".join(line + "\n" for line in GOOD[:2]))
    result, _ = _prepare(tmp_path, *args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").read_text() != before
    assert len(load_dataset(out)["train"]) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import duet.tasks.recommendation.data.prepare as prepare

    def broken(out, *_args, **_kwargs):
        (out / "train.safetensors").write_bytes(b"partial")
        raise prepare.DuetError("disk full")

    monkeypatch.setattr(prepare, "write_dataset", broken)
    args = _text(tmp_path, GOOD)
    result, out = _prepare(tmp_path, *args)
    _assert_one_line_error(result, out, "disk full")
