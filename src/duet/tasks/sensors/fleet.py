"""Build the HAPT sensor fleet: one device per user, fixed-length segments, the image-fleet layout.

Protocol (defaults in brackets):

* A device is a user; its stream is its sessions in order, rows by `sequence`.
* Segments: `segment_len` rows [128 = 2.56 s at 50 Hz] every
  `round(segment_len * (1 - overlap))` rows [overlap 0.5: 64], within one
  session (never across two). A segment's raw label is the majority of its rows'
  labels; a tie goes to the smallest raw label, so unlabelled (-1) wins ties and
  the segment is dropped rather than given a guessed class.
* Classes: activities 1-6 become 0-5; a segment whose majority is a postural
  transition (7-12) or unlabelled is dropped. `keep_transitions=True` makes the
  transitions classes 6-11; unlabelled-majority segments are dropped either way
  (they have no class). Dropped segments leave the stream: positions, windows and
  periods count kept segments only.
* Users: a permutation of the users drawn from `seed // 5` is cut into 5 folds
  (6 users each for 30); fold `seed % 5` is unseen (never trained on), its first
  half scoring validation, the rest test. Over seeds 0-4 every user is unseen
  exactly once.
* A seen user's kept segments are split by time 60/20/20 into train, valid and
  test periods. Segments overlap, so a valid/test segment sharing rows with the
  previous period's last segment (same session) is dropped ("purged") rather
  than let training rows reach the scored periods.
* The first `adapt` segments of every valid/test period (an unseen user's whole
  stream is one such period) are fine-tuning labels, never scored.
* Channels are standardised with the mean and std of every value of the seen
  users' train segments (no other segment is looked at), applied to all and
  recorded in the manifest.

The output is a `duet-images/1` directory (see `duet.tasks.fleet.store`), task
"sensors", `x` (N, 6, segment_len) float32; the same seed gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from duet.errors import DuetError
from duet.tasks.sensors.hapt import CHANNELS, PIP_NAME, SAMPLING_HZ, Session, hapt_path, read_hapt

FOLDS = 5
PERIODS = (0.6, 0.2, 0.2)
ACTIVITIES = ("walking", "walking_upstairs", "walking_downstairs", "sitting", "standing", "laying")
TRANSITIONS = ("stand_to_sit", "sit_to_stand", "sit_to_lie", "lie_to_sit", "stand_to_lie", "lie_to_stand")
RAW_LABELS = np.arange(-1, 13)  # -1 unlabelled, 1-6 activities, 7-12 transitions (0 unused)
SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}


def segment_step(segment_len: int, overlap: float) -> int:
    """Rows between the starts of consecutive segments (at least one)."""
    return max(1, int(round(segment_len * (1 - overlap))))


def segment_starts(length: int, segment_len: int, step: int) -> np.ndarray:
    """First rows of the whole segments of a session of `length` rows (none that would run past its end)."""
    if length < segment_len:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, length - segment_len + 1, step, dtype=np.int64)


def majority_labels(labels: np.ndarray, starts: np.ndarray, segment_len: int) -> np.ndarray:
    """Each segment's most frequent raw label; ties go to the smallest (unlabelled first).

    Per-label cumulative counts make this O(rows x labels), not O(segments x segment_len)."""
    bad = ~np.isin(labels, RAW_LABELS)
    if bad.any():
        raise DuetError(f"unexpected raw labels {sorted(set(labels[bad].tolist()))}: expected -1 to 12")
    index = np.searchsorted(RAW_LABELS, labels)
    onehot = np.zeros((len(labels) + 1, len(RAW_LABELS)), dtype=np.int64)
    onehot[np.arange(1, len(labels) + 1), index] = 1
    cumulative = np.cumsum(onehot, axis=0)
    counts = cumulative[starts + segment_len] - cumulative[starts]
    return RAW_LABELS[np.argmax(counts, axis=1)]


def class_of(raw: np.ndarray, keep_transitions: bool) -> np.ndarray:
    """Class index of each raw label (activities 0-5, transitions 6-11 if kept), -1 for a dropped segment."""
    top = 12 if keep_transitions else 6
    return np.where((raw >= 1) & (raw <= top), raw - 1, -1).astype(np.int64)


def segment_user(sessions: list[Session], segment_len: int, step: int, keep_transitions: bool
                 ) -> dict[str, np.ndarray]:
    """A user's kept segments in time order: x (S, 6, L) float64, y, session, start in it, row in the user's rows."""
    if not sessions:
        raise DuetError("a user without sessions")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "y", "session", "start", "row")}
    offset = 0
    for k, session in enumerate(sessions):
        starts = segment_starts(len(session.labels), segment_len, step)
        y = class_of(majority_labels(session.labels, starts, segment_len), keep_transitions)
        starts = starts[y >= 0]
        rows = starts[:, None] + np.arange(segment_len)[None, :]
        parts["x"].append(session.signals[:, rows].transpose(1, 0, 2))
        parts["y"].append(y[y >= 0])
        parts["session"].append(np.full(len(starts), k, dtype=np.int64))
        parts["start"].append(starts)
        parts["row"].append(offset + starts)
        offset += len(session.labels)
    return {k: np.concatenate(v) for k, v in parts.items()}


def user_roles(users: list[int], seed: int, folds: int = FOLDS) -> dict[int, str]:
    """Each user's role, "seen", "valid" or "test": fold `seed % folds` of a permutation drawn from `seed // folds`."""
    if len(users) < 2 * folds:
        raise DuetError(f"need at least {2 * folds} users for {folds} folds (a valid and a test user each), "
                        f"got {len(users)}")
    order = np.random.default_rng(seed // folds).permutation(np.asarray(sorted(users), dtype=np.int64))
    unseen = np.array_split(order, folds)[seed % folds]
    half = len(unseen) // 2
    roles = {int(u): "seen" for u in users}
    roles.update({int(u): "valid" for u in unseen[:half]})
    roles.update({int(u): "test" for u in unseen[half:]})
    return roles


def period_split(count: int, fractions: tuple[float, ...] = PERIODS) -> np.ndarray:
    """Split codes (0 train, 1 valid, 2 test) of a seen user's `count` segments, chronological."""
    cuts = np.floor(np.cumsum(fractions)[:-1] / sum(fractions) * count).astype(np.int64)
    return np.searchsorted(cuts, np.arange(count), side="right").astype(np.int8)


def purge_overlaps(split: np.ndarray, session: np.ndarray, start: np.ndarray, segment_len: int) -> np.ndarray:
    """Keep-mask: drop a later period's segments that share rows with the previous period's last segment."""
    keep = np.ones(len(split), dtype=bool)
    for boundary in np.flatnonzero(split[1:] != split[:-1]) + 1:
        last = boundary - 1
        j = boundary
        while j < len(split) and split[j] == split[boundary] and session[j] == session[last] \
                and start[j] < start[last] + segment_len:
            keep[j] = False
            j += 1
    return keep


def adapt_flags(split: np.ndarray, adapt: int) -> np.ndarray:
    """1 for the first `adapt` segments of each valid/test period of one device, else 0."""
    flags = np.zeros(len(split), dtype=np.int8)
    for code in (SPLIT_CODE["valid"], SPLIT_CODE["test"]):
        flags[np.flatnonzero(split == code)[:adapt]] = 1
    return flags


def device_stream(segments: dict[str, np.ndarray], role: str, adapt: int, segment_len: int
                  ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """One device's stored segments with split and adapt flags, and how many were purged."""
    n = len(segments["y"])
    if role == "seen":
        split = period_split(n)
        keep = purge_overlaps(split, segments["session"], segments["start"], segment_len)
    else:
        split, keep = np.full(n, SPLIT_CODE[role], dtype=np.int8), np.ones(n, dtype=bool)
    stream = {k: v[keep] for k, v in segments.items()}
    stream["split"] = split[keep]
    stream["adapt"] = adapt_flags(stream["split"], adapt)
    return stream, {"purged": int((~keep).sum())}


def check_periods(user: int, split: np.ndarray, role: str, adapt: int) -> None:
    """Every period must have scored segments left after its adaptation prefix."""
    names = ("train", "valid", "test") if role == "seen" else (role,)
    for name in names:
        size = int((split == SPLIT_CODE[name]).sum())
        if size <= (adapt if name != "train" else 0):
            raise DuetError(f"user {user}: its {name} period has {size} segments, none scored with --adapt {adapt}")


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over all segments and time steps of `x` (N, C, L), in float64."""
    if not len(x):
        raise DuetError("no training segments to fit the channel normalisation on")
    mean = x.mean(axis=(0, 2), dtype=np.float64)
    std = x.std(axis=(0, 2), dtype=np.float64)
    return mean, np.where(std > 0, std, 1.0)


def check_options(segment_len: int, overlap: float, window_len: int, adapt: int, seed: int) -> None:
    """One-line errors for options that cannot make a fleet."""
    for flag, value, low in (("segment-len", segment_len, 2), ("window-len", window_len, 1), ("adapt", adapt, 1),
                             ("seed", seed, 0)):
        if not isinstance(value, int) or value < low:
            raise DuetError(f"--{flag}: expected an integer >= {low}, got {value!r}")
    if not 0 <= overlap < 1:
        raise DuetError(f"--overlap: expected a fraction in [0, 1), got {overlap!r}")


def build_hapt(users: dict[int, list[Session]], seed: int = 0, segment_len: int = 128, overlap: float = 0.5,
               window_len: int = 20, keep_transitions: bool = False, adapt: int = 20
               ) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """(samples, labels of every sample, manifest facts) of the sensor fleet; deterministic for `seed`."""
    check_options(segment_len, overlap, window_len, adapt, seed)
    step = segment_step(segment_len, overlap)
    roles = user_roles(list(users), seed)
    streams, devices, first_row = [], [], 0
    for d, user in enumerate(sorted(users)):
        segments = segment_user(users[user], segment_len, step, keep_transitions)
        segments["row"] = segments["row"] + first_row  # `source`: the raw row it starts at, over all users
        first_row += sum(len(s.labels) for s in users[user])
        stream, info = device_stream(segments, roles[user], adapt, segment_len)
        check_periods(user, stream["split"], roles[user], adapt)
        streams.append(stream)
        devices.append(device_entry(d, user, roles[user], len(users[user]), stream, info["purged"]))
    samples, y = stack_streams(streams)
    train = samples["split"] == SPLIT_CODE["train"]
    mean, std = channel_stats(samples["x"][train])
    samples["x"] = ((samples["x"] - mean[None, :, None]) / std[None, :, None]).astype(np.float32)
    facts = fleet_facts(users, roles, seed, segment_len, overlap, step, window_len, keep_transitions, adapt,
                        mean, std, devices)
    return samples, y, facts


def stack_streams(streams: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The store's sample arrays (sorted by device, then time) and the labels, from per-device streams."""
    samples = {
        "x": np.concatenate([s["x"] for s in streams]),
        "device": np.concatenate([np.full(len(s["y"]), d, dtype=np.int64) for d, s in enumerate(streams)]),
        "position": np.concatenate([np.arange(len(s["y"]), dtype=np.int64) for s in streams]),
        "split": np.concatenate([s["split"] for s in streams]).astype(np.int8),
        "adapt": np.concatenate([s["adapt"] for s in streams]).astype(np.int8),
        "source": np.concatenate([s["row"] for s in streams]).astype(np.int64),
    }
    return samples, np.concatenate([s["y"] for s in streams]).astype(np.int64)


def device_entry(d: int, user: int, role: str, sessions: int, stream: dict[str, np.ndarray], purged: int) -> dict:
    """A device's manifest record (the image fleet's fields plus the user and its segment counts)."""
    periods = {name: int((stream["split"] == code).sum()) for name, code in SPLIT_CODE.items()}
    return {"id": d, "user": user, "kind": "seen" if role == "seen" else "unseen",
            "split": "train" if role == "seen" else role, "shift": {"type": "own"}, "sessions": sessions,
            "segments": int(len(stream["y"])), "periods": {k: v for k, v in periods.items() if v},
            "purged": purged}


def fleet_facts(users: dict[int, list[Session]], roles: dict[int, str], seed: int, segment_len: int,
                overlap: float, step: int, window_len: int, keep_transitions: bool, adapt: int,
                mean: np.ndarray, std: np.ndarray, devices: list[dict]) -> dict:
    """The manifest's facts: source, protocol, classes, shapes, normalisation and devices."""
    classes = ACTIVITIES + (TRANSITIONS if keep_transitions else ())
    shape = [len(CHANNELS), segment_len]
    return {
        "source": {"name": "hapt", "package": PIP_NAME, "users": len(users),
                   "sessions": sum(len(s) for s in users.values()),
                   "rows": sum(len(x.labels) for s in users.values() for x in s), "sampling_hz": SAMPLING_HZ},
        "protocol": {"seed": seed, "segment_len": segment_len, "overlap": overlap, "step": step,
                     "window_len": window_len, "keep_transitions": keep_transitions, "adapt": adapt,
                     "periods": list(PERIODS), "folds": FOLDS, "fold": seed % FOLDS,
                     "unseen_valid_users": sorted(u for u, r in roles.items() if r == "valid"),
                     "unseen_test_users": sorted(u for u, r in roles.items() if r == "test")},
        "num_classes": len(classes), "class_names": list(classes), "channels": list(CHANNELS),
        "sample_shape": shape, "image_shape": shape, "window_len": window_len,
        "normalisation": {"fitted_on": "seen users' train segments", "mean": [float(v) for v in mean],
                          "std": [float(v) for v in std]},
        "devices": devices,
    }


def prepare_hapt(out_dir: str | Path, seed: int = 0, segment_len: int = 128, overlap: float = 0.5,
                 window_len: int = 20, keep_transitions: bool = False, adapt: int = 20,
                 path: str | Path | None = None, overwrite: bool = False) -> dict:
    """Build the sensor dataset directory `out_dir` (atomically) from HAPT.pkl.gz and return its manifest."""
    from duet.atomic import atomic_dir, sha256_file
    from duet.tasks.fleet.store import write_fleet_dataset

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    file = Path(path) if path is not None else hapt_path()
    samples, y, facts = build_hapt(read_hapt(file), seed=seed, segment_len=segment_len, overlap=overlap,
                                   window_len=window_len, keep_transitions=keep_transitions, adapt=adapt)
    facts["source"]["sha256"] = sha256_file(file)
    labels = {name: y[samples["split"] == code] for name, code in SPLIT_CODE.items()}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        from duet.tasks.sensors import BUILDER, NAME

        return write_fleet_dataset(tmp, samples, labels, facts, task=(NAME, BUILDER))
