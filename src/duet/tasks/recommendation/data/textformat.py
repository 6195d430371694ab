"""The reference implementation's text format, read and written.

One record a line: `user_id;item_id;trigger_seq;click_seq;label`. The sequences are
comma-separated item ids, left-aligned, 0 = padding; `trigger_seq` is our real-time
`window` (length W) and `click_seq` our `history` (length L). L and W are fixed by
the first line of the train file and every line of both files must match.

Parsing is vectorised over the bytes of the file: a pass of numpy checks finds the
first bad line, and only that line is re-read in Python to say what is wrong with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from duet.atomic import atomic_path, sha256_file
from duet.errors import InputError
from duet.tasks.recommendation.data.importers import check_file
from duet.tasks.recommendation.data.store import PAD, Split, load_dataset

log = logging.getLogger(__name__)

FIELDS = ("user_id", "item_id", "trigger_seq", "click_seq", "label")
RECORD = ";".join(FIELDS)
MAX_ID = np.iinfo(np.int32).max  # ids are stored as int32
VALID_FRACTION = 0.1  # of each user's train records, taken from the end, as validation
_FORMAT_BLOCK = 1 << 15  # rows formatted at a time
_NL, _SEMI, _COMMA = ord("\n"), ord(";"), ord(",")
_ALLOWED = np.zeros(256, bool)
_ALLOWED[[ord(c) for c in "0123456789;,\n"]] = True
_SEPARATOR = np.zeros(256, bool)
_SEPARATOR[[_NL, _SEMI, _COMMA]] = True


@dataclass
class TextRecords:
    """The records of one text file, in file order (record i is line i + 1)."""

    user: np.ndarray  # (N,) int64
    item: np.ndarray  # (N,) int64
    window: np.ndarray  # (N, W) int32, trigger_seq
    history: np.ndarray  # (N, L) int32, click_seq
    label: np.ndarray  # (N,) int8

    def __len__(self) -> int:
        return len(self.label)


def read_text(path: str | Path, lengths: tuple[int, int] | None = None,
              lengths_from: str | None = None) -> TextRecords:
    """Read one file. `lengths` = (W, L); None takes them from this file's first line.
    `lengths_from` names where they came from, for error messages."""
    path = Path(path)
    check_file(path)
    data = path.read_bytes()
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    if not data.strip():
        raise InputError(path, 1, f"empty file; expected one record a line: {RECORD}")
    if not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(buf == _NL)
    starts = np.concatenate([[0], newlines[:-1] + 1])
    lines = len(newlines)

    def line_text(i: int) -> bytes:
        return data[starts[i]:newlines[i]]

    if lengths is None:
        fields = line_text(0).split(b";")
        if len(fields) != len(FIELDS):
            raise InputError(path, 1, _explain(line_text(0), None))
        lengths = (fields[2].count(b",") + 1, fields[3].count(b",") + 1)
        lengths_from = f"line 1 of {path}"
    width, length = lengths

    first_bad = _first_structural_error(buf, newlines, width, length)
    valid_lines = lines if first_bad is None else first_bad
    values = _parse(data[:starts[valid_lines]] if valid_lines < lines else data,
                    valid_lines, width + length + 3)
    records = TextRecords(
        user=values[:, 0],
        item=values[:, 1],
        window=values[:, 2:2 + width].astype(np.int32),
        history=values[:, 2 + width:2 + width + length].astype(np.int32),
        label=values[:, -1].astype(np.int8),
    )
    semantic = _value_errors(values, width, length)
    if len(semantic):
        first_bad = int(semantic[0]) if first_bad is None else min(first_bad, int(semantic[0]))
    if first_bad is not None:
        message = _explain(line_text(first_bad), (width, length), lengths_from)
        raise InputError(path, first_bad + 1, message)
    log.info("read %d records (W=%d, L=%d) from %s", lines, width, length, path)
    return records


def _first_structural_error(
    buf: np.ndarray, newlines: np.ndarray, width: int, length: int,
) -> int | None:
    """The 0-based index of the first line whose bytes cannot be a record, or None."""
    lines = len(newlines)
    candidates = []
    bad = ~_ALLOWED[buf]
    if bad.any():
        candidates.append(np.searchsorted(newlines, np.argmax(bad)))
    # Every token lies between two separators: two separators in a row (";;", ",\n",
    # an empty line) leave an empty one. Tokens too long for int64 saturate when
    # parsed and are caught as too large with the other values.
    is_sep = _SEPARATOR[buf]
    empty = is_sep[1:] & is_sep[:-1]
    if is_sep[0]:
        candidates.append(0)
    elif empty.any():
        candidates.append(np.searchsorted(newlines, np.argmax(empty) + 1))
    # The separators after the tokens of a line must follow the record's pattern.
    pattern = np.array([_SEMI, _SEMI] + [_COMMA] * (width - 1) + [_SEMI] + [_COMMA] * (length - 1)
                       + [_SEMI, _NL], np.uint8)
    kinds = buf[is_sep]
    if len(kinds) == lines * len(pattern):
        # Rows stay aligned up to the first line with a wrong count, which then mismatches.
        mismatch = (kinds.reshape(lines, len(pattern)) != pattern).any(axis=1)
    else:
        ends = np.flatnonzero(kinds == _NL)
        count = np.diff(ends, prepend=-1)
        line_of = np.repeat(np.arange(lines), count)
        index = np.arange(len(kinds)) - (ends - count + 1)[line_of]
        wrong = (count[line_of] != len(pattern)) | (kinds != pattern[np.minimum(index, len(pattern) - 1)])
        mismatch = np.zeros(lines, bool)
        mismatch[line_of[wrong]] = True
    if mismatch.any():
        candidates.append(np.argmax(mismatch))
    return int(min(candidates)) if candidates else None


def _parse(data: bytes, lines: int, columns: int) -> np.ndarray:
    """Integers of structurally valid lines as a (lines, columns) int64 array."""
    if lines == 0:
        return np.zeros((0, columns), np.int64)
    flat = np.fromstring(data.replace(b";", b",").replace(b"\n", b","), np.int64, sep=",")
    return flat.reshape(lines, columns)


def _value_errors(values: np.ndarray, width: int, length: int) -> np.ndarray:
    """0-based lines whose values are out of range, sorted."""
    seqs = values[:, 2:2 + width + length]
    bad = (values[:, :-1] > MAX_ID).any(axis=1)
    bad |= values[:, 1] == PAD
    bad |= (values[:, -1] != 0) & (values[:, -1] != 1)
    for lo, hi in ((0, width), (width, width + length)):
        seq = seqs[:, lo:hi]
        bad |= ((seq[:, 1:] != PAD) & (seq[:, :-1] == PAD)).any(axis=1)
    return np.flatnonzero(bad)


def _explain(text: bytes, lengths: tuple[int, int] | None, lengths_from: str | None = None) -> str:
    """What is wrong with one line (re-read slowly; only called for the first bad line)."""
    line = text.decode("utf-8", errors="replace")
    if not line.strip():
        return f"empty line; expected a record {RECORD}"
    fields = line.split(";")
    if len(fields) != len(FIELDS):
        return f"expected {len(FIELDS)} ';'-separated fields {RECORD}, found {len(fields)}"
    for name, field in zip(FIELDS[:2], fields[:2], strict=True):
        problem = _check_id(field)
        if problem:
            return f"{name}: {problem}"
    if int(fields[1]) == PAD:
        return "item_id: 0 is the padding id; expected an item id >= 1"
    assert lengths is not None
    for name, field, size in zip(FIELDS[2:4], fields[2:4], lengths, strict=True):
        tokens = field.split(",")
        if len(tokens) != size:
            return (f"{name}: expected {size} comma-separated ids (the length set by "
                    f"{lengths_from}), found {len(tokens)}")
        for token in tokens:
            problem = _check_id(token)
            if problem:
                return f"{name}: {problem}"
        ids = [int(t) for t in tokens]
        if any(a == PAD and b != PAD for a, b in zip(ids, ids[1:], strict=False)):
            return f"{name}: expected a left-aligned sequence (padding 0 only at the end), found {field!r}"
    label = fields[4]
    if not (label.isascii() and label.isdigit() and int(label) in (0, 1)):
        return f"label: expected 0 or 1, found {label!r}"
    return f"unexpected content; expected a record {RECORD}"  # pragma: no cover


def _check_id(token: str) -> str | None:
    if not (token.isascii() and token.isdigit()):
        return f"expected a non-negative integer id, found {token!r}"
    if int(token) > MAX_ID:
        return f"id {token} is too large (at most {MAX_ID})"
    return None


def _split(records: TextRecords, mask: np.ndarray, line: np.ndarray) -> Split:
    """Records where `mask` holds; identical (window, history) rows become one event,
    numbered in order of first appearance."""
    rows = np.ascontiguousarray(np.concatenate([records.window[mask], records.history[mask]], axis=1))
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    events = rows[first[order]]
    width = records.window.shape[1]
    return Split(
        user=records.user[mask], item=records.item[mask],
        label=records.label[mask].astype(np.float32),
        event=rank[inverse.ravel()], line=line[mask],
        history=events[:, width:], window=events[:, :width],
    )


def valid_mask(user: np.ndarray) -> np.ndarray:
    """The last floor(VALID_FRACTION * n) records of each user with n records, in file order."""
    order = np.argsort(user, kind="stable")
    sorted_user = user[order]
    _, start, count = np.unique(sorted_user, return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(start)), count)
    rank = np.arange(len(user)) - start[group]
    take = count // 10  # floor(VALID_FRACTION * n) in integers: 0.1 * 30 is not 3.0 in floats
    mask = np.zeros(len(user), bool)
    mask[order] = rank >= (count - take)[group]
    return mask


def import_text(train: str | Path, test: str | Path) -> tuple[dict[str, Split], np.ndarray, np.ndarray, dict]:
    """Both files as splits (valid carved from train), item_raw, user_raw and the source dict.

    Ids are used as they are: num_items = max item id seen + 1 (0 = padding),
    num_users = max user id + 1.
    """
    train, test = Path(train), Path(test)
    tr = read_text(train)
    te = read_text(test, (tr.window.shape[1], tr.history.shape[1]), f"line 1 of {train}")
    max_item = max(
        int(a.max(initial=0))
        for r in (tr, te) for a in (r.item, r.window, r.history)
    )
    item_raw = np.arange(max_item + 1, dtype=np.int64)
    item_raw[PAD] = -1
    user_raw = np.arange(max(int(tr.user.max(initial=-1)), int(te.user.max(initial=-1))) + 1,
                         dtype=np.int64)
    source = {"kind": "duet-text",
              **{name: {"path": str(p), "sha256": sha256_file(p)} for name, p in (("train", train), ("test", test))}}
    return text_splits(tr, te), item_raw, user_raw, source


def text_splits(train: TextRecords, test: TextRecords) -> dict[str, Split]:
    """Train/valid/test splits of text-format records: valid is carved from the end of
    each user's train records (`valid_mask`), test is the test file as it is."""
    in_valid = valid_mask(train.user)
    return {
        "train": _split(train, ~in_valid, np.arange(len(train))),
        "valid": _split(train, in_valid, np.arange(len(train))),
        "test": _split(test, np.ones(len(test), bool), np.arange(len(test))),
    }


def _digits4() -> np.ndarray:
    """(10000,) uint32 whose 4 bytes are the zero-padded ASCII digits of 0..9999."""
    i = np.arange(10_000)
    ascii4 = (48 + np.stack([i // 1000, i // 100 % 10, i // 10 % 10, i % 10], axis=1)).astype(np.uint8)
    return np.ascontiguousarray(ascii4).view(np.uint32).ravel()


_DIGITS4 = _digits4()


def format_text(user: np.ndarray, item: np.ndarray, window: np.ndarray,
                history: np.ndarray, label: np.ndarray) -> bytes:
    """Records as text, one a line.

    Vectorised: every value gets a slot of bytes holding its digits right-aligned (4 at a
    time from a table, gathered as uint32 words) and its separator; a mask chosen by the
    value's digit count (gathered as uint64 words) keeps the digits and the separator.
    Rows go in blocks so the buffers stay small and are reused.
    """
    parts = [np.asarray(user)[:, None], np.asarray(item)[:, None], np.asarray(window),
             np.asarray(history), np.asarray(label)[:, None]]
    rows = len(parts[0])
    if rows == 0:
        return b""
    for part in parts:
        if part.size and (part.min() < 0 or part.max() > MAX_ID):
            raise ValueError(f"the text format holds ids in 0..{MAX_ID}")
    cols = sum(p.shape[1] for p in parts)
    digits = len(str(max(int(p.max()) for p in parts)))
    chunks = -(-digits // 4)  # 4-digit words per value
    slot = 8 * -(-(chunks + 1) // 2)  # bytes per value: digits, separator word, padding
    seps = np.zeros((cols, 4), np.uint8)
    seps[:, 0] = _COMMA
    seps[[0, 1, 1 + parts[2].shape[1], cols - 2], 0] = _SEMI  # after user, item, window, history
    seps[-1, 0] = _NL
    patterns = np.zeros((digits + 1, slot), bool)  # by digit count: which bytes to keep
    for n in range(1, digits + 1):
        patterns[n, 4 * chunks - n:4 * chunks + 1] = True
    patterns64 = patterns.view(np.uint64)  # (digits + 1, slot / 8)
    block = min(rows, _FORMAT_BLOCK)
    words = np.empty((block, cols, slot // 4), np.uint32)  # (B, C, slot / 4)
    words[:, :, chunks] = seps.view(np.uint32).ravel()
    keep = np.empty((block, cols, slot // 8), np.uint64)
    out = []
    for lo in range(0, rows, block):
        values = np.concatenate([p[lo:lo + block].astype(np.intp) for p in parts], axis=1)  # (b, C)
        b = len(values)
        rest = values
        for c in range(chunks - 1, -1, -1):
            rest, low = np.divmod(rest, 10_000)
            words[:b, :, c] = _DIGITS4[low]
        ndig = np.ones(values.shape, np.intp)
        for k in range(1, digits):
            ndig += values >= 10**k
        for w in range(slot // 8):
            keep[:b, :, w] = patterns64[:, w][ndig]
        out.append(words[:b].view(np.uint8)[keep[:b].view(bool)].tobytes())
    return b"".join(out)


def export_text(path: str | Path, train_out: str | Path, test_out: str | Path,
                overwrite: bool = False) -> dict[str, int]:
    """Write a prepared dataset in the text format: train+valid merged back in `line`
    order into `train_out`, test into `test_out`. Returns the records per file."""
    train_out, test_out = Path(train_out), Path(test_out)
    for out in (train_out, test_out):
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    data = load_dataset(path)
    written = {}
    for out, names in ((train_out, ("train", "valid")), (test_out, ("test",))):
        parts = [_flat(data[name]) for name in names]
        merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        order = np.argsort(merged["line"], kind="stable")
        text = format_text(*(merged[key][order] for key in ("user", "item", "window", "history", "label")))
        with atomic_path(out) as tmp:
            tmp.write_bytes(text)
        written[str(out)] = len(order)
    return written


def _flat(split: Split) -> dict[str, np.ndarray]:
    """One row per record, sequences expanded from the events."""
    return {
        "user": split.user, "item": split.item,
        "window": split.window[split.event], "history": split.history[split.event],
        "label": split.label.astype(np.int64), "line": split.line,
    }
