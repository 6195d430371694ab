"""Bulk generation: head parameters for a whole fleet, streamed from a windows file to one safetensors file.

The cloud refreshing millions of devices overnight does not go through HTTP:
`duet generate --run RUN --windows FILE --out FILE` reads the windows in chunks,
runs the same `GeneratorService.generate` the service runs (so a device gets the
bytes it would get from `POST /v1/parameters`) and appends each chunk's rows to
the output. Nothing of the fleet's size is held: an `.npy` input is memory-mapped,
a `.safetensors` one read by slices, a text one line by line, and each chunk's
heads are written out, from a fixed ring of buffers, as the next one is generated
(peak memory grows only by the input file's resident pages; docs/PERFORMANCE.md).

Windows file formats (item ids are the dataset's internal ids, 1 .. num_items-1):

* `.npy`: an integer array (N, W') of windows, oldest item first, left-aligned,
  0 = padding. Any width W' >= 1: each row's last W items are used (W: the run's
  window length). Row i is device i.
* `.safetensors`: the same array under the key `windows`, plus optionally
  `device_id` (N,) integers, copied to the output.
* anything else is text, one window per line: comma-separated item ids, oldest
  first, optionally preceded by an integer device id and a tab
  (`42<TAB>17,5,803`). Either every line has a device id or none has.

Every window needs at least one item. A bad file fails in one line naming the
file, the row (arrays, 1-based) or line (text), and what was expected; the
output is written atomically, so it is never half there.

Output (`HEADS_FORMAT`): a safetensors file with `params` (N, numel) in the
head's spec order (the layout of a service answer's data section), in fp32 or
fp16, `device_id` (N,) int64 when the input had ids, and metadata: format, spec
(JSON), spec hash, model version, dtype. `load_heads` reads it back.
"""

from __future__ import annotations

import json
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
from duet.spec import ParamSpec
from duet.tasks.recommendation.data.store import PAD, tail_window

HEADS_FORMAT = "duet-heads/1"
# Rows per generator forward. Measured on one core (docs/PERFORMANCE.md): 1,024 beats 4,096
# and 16,384 by 1.5-3x (the (E, numel) output stays in cache); torch's per-op cost is
# already small against it.
DEFAULT_CHUNK = 1024
_IN_FLIGHT = 4  # generated chunks waiting to be written
_ST_DTYPES = {"fp32": ("F32", np.dtype("<f4")), "fp16": ("F16", np.dtype("<f2"))}


@dataclass
class Chunk:
    first: int  # 0-based row (text: line) number of the chunk's first window
    windows: np.ndarray  # (n, W') integer item ids as read
    device_id: np.ndarray | None  # (n,) int64


class WindowsFile:
    """A windows file: its row count and width up front, then its chunks (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DuetError(f"{self.path}: no such windows file")
        suffix = self.path.suffix.lower()
        self.kind = {".npy": "npy", ".safetensors": "safetensors"}.get(suffix, "text")
        self.has_ids = False
        if self.kind == "npy":
            try:
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise InputError(self.path, None, f"not a readable .npy array ({exc})") from None
            self._check_array(self._array, "the array")
        elif self.kind == "safetensors":
            self._open_safetensors()
        else:
            self._count_lines()

    def _check_array(self, array: np.ndarray, what: str) -> None:
        if array.ndim != 2 or array.shape[1] < 1 or not np.issubdtype(array.dtype, np.integer):
            raise InputError(self.path, None, f"{what} must be a 2-D integer array (N, W) of item ids, "
                                              f"got {array.dtype} of shape {tuple(array.shape)}")
        self.rows = int(array.shape[0])

    def _open_safetensors(self) -> None:
        from safetensors import safe_open

        try:
            self._file = safe_open(str(self.path), framework="np")
            keys = set(self._file.keys())
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise InputError(self.path, None, f"not a readable safetensors file ({exc})") from None
        if "windows" not in keys:
            raise InputError(self.path, None, f"expected a tensor `windows` (N, W), found {sorted(keys) or 'none'}")
        self._array = self._file.get_slice("windows")
        shape, dtype = self._array.get_shape(), self._array.get_dtype()
        if len(shape) != 2 or shape[1] < 1 or not dtype.startswith(("I", "U")):
            raise InputError(self.path, None, f"`windows` must be a 2-D integer tensor (N, W), got {dtype} of "
                                              f"shape {tuple(shape)}")
        self.rows = int(shape[0])
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
            expected = "DEVICE_ID<TAB>ITEMS" if self.has_ids else "ITEMS (no device id)"
            raise InputError(self.path, number, f"expected {expected} like line 1, got {line[:60]!r}")
        if self.has_ids:
            device, line = line.split("\t", 1)
            try:
                ids.append(int(device))
            except ValueError:
                raise InputError(self.path, number, f"device id must be an integer, got {device[:40]!r}") from None
        try:
            items = [int(x) for x in line.split(",") if x.strip()]
        except ValueError:
            raise InputError(self.path, number, f"expected comma-separated item ids, got {line[:60]!r}") from None
        if not items:
            raise InputError(self.path, number, "empty window: at least one item id is needed")
        return items

    @staticmethod
    def _text_chunk(first: int, rows: list[list[int]], ids: list[int]) -> Chunk:
        width = max(len(r) for r in rows)
        windows = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            windows[i, : len(row)] = row
        return Chunk(first, windows, np.array(ids, dtype=np.int64) if ids else None)


def checked_windows(chunk: Chunk, path: Path, kind: str, num_items: int, window_len: int) -> np.ndarray:
    """A chunk's windows as the generator's input (n, W) int64, or a one-line error at the first bad row."""
    windows = np.array(chunk.windows, dtype=np.int64)  # a writable copy: memory-mapped input is read-only

    def fail(row_in_chunk: int, message: str) -> None:
        number = chunk.first + row_in_chunk + 1
        if kind == "text":
            raise InputError(path, number, message)
        raise InputError(path, None, f"row {number}: {message}")

    bad = (windows < 0) | (windows >= num_items)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        fail(row, f"item ids must be in 1..{num_items - 1} (0 = padding), got {windows[row, col]}")
    valid = windows != PAD
    empty = ~valid[:, 0]
    if empty.any():
        fail(int(np.argmax(empty)), "empty window: at least one item id is needed, first (oldest) at column 1")
    gaps = valid[:, 1:] & ~valid[:, :-1]  # an item after padding: not left-aligned
    if gaps.any():
        row, col = np.argwhere(gaps)[0]
        fail(row, f"padding (0) before an item at column {col + 2}: windows are left-aligned, oldest first")
    if windows.shape[1] == window_len:
        return np.ascontiguousarray(windows)
    return tail_window(windows, window_len)


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
    source = WindowsFile(windows)
    service = GeneratorService(run, device=device)
    metadata = {"format": HEADS_FORMAT, "spec": json.dumps(service.spec.to_json(), separators=(",", ":")),
                "spec_hash": service.spec_hash, "model_version": service.version, "dtype": dtype,
                "window_len": str(service.window_len)}
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
            rows = checked_windows(chunk, source.path, source.kind, service.num_items, service.window_len)
            tick = time.perf_counter()
            flat = service.generate(rows, dtype)
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
