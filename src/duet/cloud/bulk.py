"""Bulk generation: head parameters for a whole fleet, streamed from a windows file to one safetensors file.

The cloud refreshing millions of devices overnight does not go through HTTP:
`duet generate --run RUN --windows FILE --out FILE` reads the windows in chunks,
runs the same `GeneratorService.generate` the service runs (so a device gets the
bytes it would get from `POST /v1/parameters`) and appends each chunk's rows to
the output. Nothing of the fleet's size is held: an `.npy` input is memory-mapped,
a `.safetensors` one read by slices, a text one line by line, and each chunk's
heads are written out, from a fixed ring of buffers, as the next one is generated
(peak memory grows only by the input file's resident pages; docs/performance.md).

What a window holds is the run's sample (`Task.sample`, a SampleSpec), so the formats
depend on it. A run whose samples are tokens (integer ids, `low..high`):

* `.npy`: an integer array (N, W') of windows, oldest first, left-aligned,
  0 = padding. Any width W' >= 1: each row's last W values are used (W: the run's
  window length). Row i is device i.
* `.safetensors`: the same array under the key `windows`, plus optionally
  `device_id` (N,) integers, copied to the output.
* anything else is text, one window per line: comma-separated values, oldest
  first, optionally preceded by an integer device id and a tab
  (`42<TAB>17,5,803`). Either every line has a device id or none has.

A run whose samples are float arrays of shape S: `.npy` or `.safetensors` (`windows`,
optional `device_id`) of floats (N, W', *S), every position a sample, oldest first;
each row's last W are used (rows shorter than W are zero-padded and masked, as the
service does). Text is refused in one line.

Every window needs at least one sample. A bad file fails in one line naming the
file, the row (arrays, 1-based) or line (text), and what was expected; the
output is written atomically, so it is never half there.

Output (`HEADS_FORMAT`): a safetensors file with `params` (N, numel) in the
head's spec order (the layout of a service answer's data section), in fp32 or
fp16, `device_id` (N,) int64 when the input had ids, and metadata: format, spec
(JSON), spec hash, model version, dtype, window length, sample (JSON). `load_heads`
reads it back.
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from duet.atomic import atomic_path
from duet.errors import DuetError, InputError
from duet.generate import float_windows_hint
from duet.spec import ParamSpec, SampleSpec

HEADS_FORMAT = "duet-heads/1"
# Rows per generator forward. Measured on one core (docs/performance.md): 1,024 beats 4,096
# and 16,384 by 1.5-3x (the (E, numel) output stays in cache); torch's per-op cost is
# already small against it.
DEFAULT_CHUNK = 1024
_IN_FLIGHT = 4  # generated chunks waiting to be written
_ST_DTYPES = {"fp32": ("F32", np.dtype("<f4")), "fp16": ("F16", np.dtype("<f2"))}
PAD = 0  # padding of token windows (a token run's values are >= 1)
# A text file's integer, strictly ASCII digits: int() alone also takes "1_0" (10) and "١" (Arabic-Indic 1).
INTEGER = re.compile(r"\s*-?[0-9]+\s*", re.ASCII)


@dataclass
class Chunk:
    first: int  # 0-based row (text: line) number of the chunk's first window
    windows: np.ndarray  # (n, W', *sample shape) as read
    device_id: np.ndarray | None  # (n,) int64


class WindowsFile:
    """A windows file of a run's samples: its row count up front, then its chunks (see the module docstring)."""

    def __init__(self, path: str | Path, sample: SampleSpec):
        self.path, self.sample = Path(path), sample
        if not self.path.is_file():
            raise DuetError(f"{self.path}: no such windows file")
        suffix = self.path.suffix.lower()
        self.kind = {".npy": "npy", ".safetensors": "safetensors"}.get(suffix, "text")
        self.has_ids = False
        if sample.is_token and (sample.low is None or sample.low <= PAD):
            raise DuetError(f"{self.path}: windows files pad token windows with {PAD}, but this run's values "
                            f"may be {PAD} ({sample.low}..{sample.high}); use POST /v1/parameters")
        if self.kind == "text" and not sample.is_token:
            raise InputError(self.path, None, f"a text windows file holds token ids; {float_windows_hint(sample)}")
        if self.kind == "npy":
            try:
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise InputError(self.path, None, f"not a readable .npy array ({exc})") from None
            self._check_shape(tuple(self._array.shape), np.issubdtype(self._array.dtype, np.integer),
                              np.issubdtype(self._array.dtype, np.floating), str(self._array.dtype), "the array")
        elif self.kind == "safetensors":
            self._open_safetensors()
        else:
            self._count_lines()

    @property
    def expected(self) -> str:
        """The array a windows file holds, for messages."""
        if self.sample.is_token:
            return "a 2-D integer array (N, W) of token ids"
        return f"a float array (N, W, {', '.join(map(str, self.sample.shape))}) of samples"

    def _check_shape(self, shape: tuple[int, ...], integer: bool, floating: bool, dtype: str, what: str) -> None:
        sample = self.sample
        fits = (integer if sample.is_token else floating) and len(shape) == 2 + len(sample.shape) and \
            shape[1] >= 1 and shape[2:] == sample.shape
        if not fits:
            raise InputError(self.path, None, f"{what} must be {self.expected}, got {dtype} of shape {shape}")
        self.rows = int(shape[0])

    def _open_safetensors(self) -> None:
        from safetensors import safe_open

        try:
            self._file = safe_open(str(self.path), framework="np")
            keys = set(self._file.keys())
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise InputError(self.path, None, f"not a readable safetensors file ({exc})") from None
        if "windows" not in keys:
            raise InputError(self.path, None, f"expected a tensor `windows` ({self.expected}), found "
                                              f"{sorted(keys) or 'none'}")
        self._array = self._file.get_slice("windows")
        shape, dtype = tuple(self._array.get_shape()), self._array.get_dtype()
        self._check_shape(shape, dtype.startswith(("I", "U")), dtype in ("F16", "F32", "F64"), dtype, "`windows`")
        if "device_id" in keys:
            ids = self._file.get_slice("device_id")
            if ids.get_shape() != [self.rows] or not ids.get_dtype().startswith(("I", "U")):
                raise InputError(self.path, None, f"`device_id` must be an integer tensor ({self.rows},), got "
                                                  f"{ids.get_dtype()} of shape {tuple(ids.get_shape())}")
            self._ids, self.has_ids = ids, True

    def _count_lines(self) -> None:
        """Rows (and whether lines carry device ids) from a first pass: the output header needs N."""
        rows, ends_with_newline, first = 0, True, b""
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                if not first:
                    first = block.split(b"\n", 1)[0]
                rows += block.count(b"\n")
                ends_with_newline = block.endswith(b"\n")
        self.rows = rows + (not ends_with_newline)
        self.has_ids = b"\t" in first

        if self.rows == 0:
            raise InputError(self.path, None, "no windows in the file")

    def chunks(self, size: int) -> Iterator[Chunk]:
        if self.kind == "text":
            yield from self._text_chunks(size)
            return
        for start in range(0, self.rows, size):
            stop = min(start + size, self.rows)
            windows = np.asarray(self._array[start:stop])
            ids = np.asarray(self._ids[start:stop]).astype(np.int64) if self.has_ids else None
            yield Chunk(start, windows, ids)

    def _text_chunks(self, size: int) -> Iterator[Chunk]:
        rows: list[list[int]] = []
        ids: list[int] = []
        first = 0
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                rows.append(self._parse_line(line.rstrip("\r\n"), number, ids))
                if len(rows) == size:
                    yield self._text_chunk(first, rows, ids)
                    first, rows, ids = number, [], []
        if rows:
            yield self._text_chunk(first, rows, ids)

    def _parse_line(self, line: str, number: int, ids: list[int]) -> list[int]:
        if self.has_ids != ("\t" in line):
            expected = "DEVICE_ID<TAB>IDS" if self.has_ids else "IDS (no device id)"
            raise InputError(self.path, number, f"expected {expected} like line 1, got {line[:60]!r}")
        if self.has_ids:
            device, line = line.split("\t", 1)
            if not INTEGER.fullmatch(device):
                raise InputError(self.path, number, f"device id must be an integer, got {device[:40]!r}")
            ids.append(int(device))
        values = [x for x in line.split(",") if x.strip()]
        if not all(INTEGER.fullmatch(x) for x in values):
            raise InputError(self.path, number, f"expected comma-separated token ids, got {line[:60]!r}")
        items = [int(x) for x in values]
        if not items:
            raise InputError(self.path, number, "empty window: at least one token id is needed")
        return items

    @staticmethod
    def _text_chunk(first: int, rows: list[list[int]], ids: list[int]) -> Chunk:
        width = max(len(r) for r in rows)
        windows = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            windows[i, : len(row)] = row
        return Chunk(first, windows, np.array(ids, dtype=np.int64) if ids else None)


def tail_window(windows: np.ndarray, length: int) -> np.ndarray:
    """Left-aligned, PAD-padded token windows (n, W') -> their last `length` values, left-aligned (n, length)."""
    count = (windows != PAD).sum(1)
    index = np.maximum(count - length, 0)[:, None] + np.arange(length)[None, :]
    values = np.take_along_axis(windows, np.minimum(index, windows.shape[1] - 1), axis=1)
    return np.where(index < count[:, None], values, PAD)


def checked_windows(chunk: Chunk, path: Path, kind: str, sample: SampleSpec,
                    window_len: int) -> tuple[np.ndarray, np.ndarray]:
    """A chunk's windows as the generator's input, (n, W, *shape) in the sample's dtype and their mask (n, W),
    or a one-line error at the first bad row."""
    windows = np.array(chunk.windows, dtype=sample.dtype)  # a writable copy: memory-mapped input is read-only

    def fail(row_in_chunk: int, message: str) -> None:
        number = chunk.first + row_in_chunk + 1
        if kind == "text":
            raise InputError(path, number, message)
        raise InputError(path, None, f"row {number}: {message}")

    if not sample.is_token:
        finite = np.isfinite(windows.reshape(*windows.shape[:2], -1)).all(2)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            fail(row, f"sample {col + 1} is not finite")
        count = min(windows.shape[1], window_len)  # every position holds a sample: the last W count
        out = np.zeros((len(windows), window_len, *sample.shape), dtype=windows.dtype)
        out[:, :count] = windows[:, windows.shape[1] - count:]
        mask = np.zeros((len(windows), window_len), dtype=bool)
        mask[:, :count] = True
        return out, mask
    if np.any(chunk.windows > sample.high):  # before the int64 cast: a uint64 beyond int64 must not wrap
        row, col = np.argwhere(np.asarray(chunk.windows) > sample.high)[0]
        fail(row, f"token ids must be in {sample.low}..{sample.high} ({PAD} = padding), got {chunk.windows[row, col]}")
    bad = (windows != PAD) & ((windows < sample.low) | (windows > sample.high))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        fail(row, f"token ids must be in {sample.low}..{sample.high} ({PAD} = padding), got {windows[row, col]}")
    valid = windows != PAD
    empty = ~valid[:, 0]
    if empty.any():
        fail(int(np.argmax(empty)), "empty window: at least one token id is needed, first (oldest) at column 1")
    gaps = valid[:, 1:] & ~valid[:, :-1]  # a value after padding: not left-aligned
    if gaps.any():
        row, col = np.argwhere(gaps)[0]
        fail(row, f"padding ({PAD}) before a token id at column {col + 2}: windows are left-aligned, oldest first")
    if windows.shape[1] != window_len:
        windows = tail_window(windows, window_len)
    windows = np.ascontiguousarray(windows)
    return windows, windows != PAD


class HeadsWriter:
    """Streams (N, numel) parameter rows into a safetensors file whose header is written first."""

    def __init__(self, file, rows: int, spec: ParamSpec, dtype: str, metadata: dict[str, str], with_ids: bool):
        st_dtype, self.np_dtype = _ST_DTYPES[dtype]
        params_bytes = rows * spec.numel * self.np_dtype.itemsize
        header: dict[str, object] = {
            "__metadata__": dict(sorted(metadata.items())),
            "params": {"dtype": st_dtype, "shape": [rows, spec.numel], "data_offsets": [0, params_bytes]},
        }
        if with_ids:
            header["device_id"] = {"dtype": "I64", "shape": [rows], "data_offsets": [params_bytes, params_bytes + 8 * rows]}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self.file, self.rows, self.numel, self.with_ids = file, rows, spec.numel, with_ids
        self.written, self.ids = 0, [] if with_ids else None
        file.write(struct.pack("<Q", len(text)) + text)

    def append(self, flat: np.ndarray, ids: np.ndarray | None) -> None:
        self.file.write(np.ascontiguousarray(flat, dtype=self.np_dtype).data)
        self.written += len(flat)
        if self.ids is not None:
            self.ids.append(ids.astype("<i8"))  # 8 bytes a device: kept until the params are all written

    def close(self) -> None:
        if self.written != self.rows:
            raise DuetError(f"wrote {self.written} rows, expected {self.rows} (the windows file changed while read?)")
        if self.ids is not None:
            for ids in self.ids:
                self.file.write(ids.data)


def generate_bulk(run: str | Path, windows: str | Path, out: str | Path, chunk_size: int = DEFAULT_CHUNK,
                  dtype: str = "fp32", overwrite: bool = False, device: str = "cpu",
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Generate every window's head into `out`; returns counts and timings."""
    from duet.cloud.generation import GeneratorService

    if dtype not in _ST_DTYPES:
        raise DuetError(f"--dtype must be fp32 or fp16, got {dtype!r}")
    if chunk_size < 1:
        raise DuetError(f"--chunk-size must be at least 1, got {chunk_size}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    if not Path(windows).is_file():  # before the run loads: the cheap mistake first
        raise DuetError(f"{windows}: no such windows file")
    service = GeneratorService(run, device=device)
    source = WindowsFile(windows, service.sample)  # what a window holds is the run's to say
    metadata = {"format": HEADS_FORMAT, "spec": json.dumps(service.spec.to_json(), separators=(",", ":")),
                "spec_hash": service.spec_hash, "model_version": service.version, "dtype": dtype,
                "window_len": str(service.window_len),
                "sample": json.dumps(service.sample.to_json(), separators=(",", ":"))}
    started = time.perf_counter()
    generate_seconds = 0.0
    # Writing (a system call that releases the GIL) overlaps the next chunk's generation;
    # at most `_IN_FLIGHT` chunks wait. The writer reads from a ring of preallocated
    # buffers: handing it each chunk's fresh array to free in its own thread made glibc
    # keep the freed memory, and the peak grew with the fleet (~240 bytes a device).
    ring: list[np.ndarray | None] = [None] * (_IN_FLIGHT + 2)  # > the chunks that can wait
    with atomic_path(out) as tmp, open(tmp, "wb") as f, ThreadPoolExecutor(1) as pool:
        writer = HeadsWriter(f, source.rows, service.spec, dtype, metadata, source.has_ids)
        pending: deque[Future] = deque()
        for index, chunk in enumerate(source.chunks(chunk_size)):
            rows, mask = checked_windows(chunk, source.path, source.kind, service.sample, service.window_len)
            tick = time.perf_counter()
            flat = service.generate(rows, mask, dtype)
            generate_seconds += time.perf_counter() - tick
            slot = index % len(ring)  # its previous chunk was written: at most _IN_FLIGHT wait
            if ring[slot] is None:
                ring[slot] = np.empty((chunk_size, flat.shape[1]), flat.dtype)
            buffer = ring[slot][: len(flat)]
            np.copyto(buffer, flat)
            pending.append(pool.submit(writer.append, buffer, chunk.device_id))
            while len(pending) > _IN_FLIGHT or (pending and pending[0].done()):
                pending.popleft().result()
                if progress is not None:
                    progress(writer.written, source.rows)
        while pending:
            pending.popleft().result()
        writer.close()
    seconds = time.perf_counter() - started
    return {"devices": source.rows, "seconds": seconds, "devices_per_s": source.rows / max(seconds, 1e-9),
            "generate_seconds": generate_seconds, "bytes": out.stat().st_size, "spec_hash": service.spec_hash,
            "model_version": service.version, "dtype": dtype}


def load_heads(path: str | Path) -> tuple[ParamSpec, dict[str, str], np.ndarray, np.ndarray | None]:
    """(spec, metadata, params (N, numel), device_id (N,) or None) of a bulk output file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != HEADS_FORMAT:
            raise DuetError(f"{path}: not a {HEADS_FORMAT} file (format {metadata.get('format')!r})")
        params = f.get_tensor("params")
        ids = f.get_tensor("device_id") if "device_id" in f.keys() else None  # noqa: SIM118 - safe_open has no __contains__
    return ParamSpec.from_json(json.loads(metadata["spec"])), metadata, params, ids
