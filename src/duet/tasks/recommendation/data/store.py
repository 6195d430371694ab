"""The on-disk dataset format, written once by `duet prepare` and read by every later step.

A dataset directory holds:

* `train.safetensors`, `valid.safetensors`, `test.safetensors`, each with
  - per record (impression), length N: `user`, `item`, `label` (0/1), `event`
    (row of `history`/`window` this record uses), `line` (original order);
  - per event, E rows: `history` (E, L) click history and `window` (E, W)
    real-time window. Both are item ids, oldest first, left-aligned, 0 = padding
    (the reference text format's convention). A positive and its negatives share
    one event, so the sequences are stored once, not once per candidate.
* `vocab.safetensors`: `item_raw` (num_items,) and `user_raw` (num_users,), the raw
  ids behind internal ids (item 0 is padding and maps to -1).
* `manifest.json`: source, protocol, counts and the sha256 of every file above.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from duet.atomic import sha256_file, write_json
from duet.errors import ArtifactError
from duet.manifest import read_manifest as _read_manifest
from duet.manifest import verify_file

PAD = 0
SPLITS = ("train", "valid", "test")
FORMAT = "duet-dataset/1"
RECORD_KEYS = ("user", "item", "label", "event", "line")
EVENT_KEYS = ("history", "window")


@dataclass
class Split:
    """One split as numpy arrays (see module docstring for the layout)."""

    user: np.ndarray  # (N,) int32
    item: np.ndarray  # (N,) int32
    label: np.ndarray  # (N,) float32
    event: np.ndarray  # (N,) int32 -> row of history/window
    line: np.ndarray  # (N,) int64 original record order
    history: np.ndarray  # (E, L) int32
    window: np.ndarray  # (E, W) int32

    def __len__(self) -> int:
        return len(self.label)

    @property
    def num_events(self) -> int:
        return len(self.history)

    def to_arrays(self) -> dict[str, np.ndarray]:
        # copy=False: at 100x MovieLens-small a copy of every array is gigabytes of peak memory.
        return {
            "user": self.user.astype(np.int32, copy=False),
            "item": self.item.astype(np.int32, copy=False),
            "label": self.label.astype(np.float32, copy=False),
            "event": self.event.astype(np.int32, copy=False),
            "line": self.line.astype(np.int64, copy=False),
            "history": np.ascontiguousarray(self.history, dtype=np.int32),
            "window": np.ascontiguousarray(self.window, dtype=np.int32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Split:
        return cls(**{k: arrays[k] for k in RECORD_KEYS + EVENT_KEYS})

    def select(self, mask: np.ndarray) -> Split:
        """Records where `mask` holds, with their events renumbered compactly."""
        used, event = np.unique(self.event[mask], return_inverse=True)
        return Split(
            user=self.user[mask], item=self.item[mask], label=self.label[mask],
            event=event.astype(np.int32), line=self.line[mask],
            history=self.history[used], window=self.window[used],
        )


@dataclass
class Dataset:
    path: Path
    manifest: dict
    splits: dict[str, Split]

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    @property
    def num_users(self) -> int:
        return int(self.manifest["num_users"])

    @property
    def history_len(self) -> int:
        return int(self.manifest["history_len"])

    @property
    def window_len(self) -> int:
        return int(self.manifest["window_len"])

    @property
    def hash(self) -> str:
        return manifest_hash(self.path)

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise KeyError(f"split {split!r} was not loaded (loaded: {sorted(self.splits)})")
        return self.splits[split]


def tail_window(history: np.ndarray, length: int) -> np.ndarray:
    """The real-time window of each history: its last `length` items, left-aligned, 0-padded."""
    count = (history != PAD).sum(1)  # (E,) histories are left-aligned
    index = np.maximum(count - length, 0)[:, None] + np.arange(length)[None, :]  # (E, W)
    items = np.take_along_axis(history, np.minimum(index, history.shape[1] - 1), axis=1)
    return np.where(index < count[:, None], items, PAD)


def manifest_hash(path: str | Path) -> str:
    return sha256_file(Path(path) / "manifest.json")


def write_dataset(
    out: Path,
    splits: dict[str, Split],
    item_raw: np.ndarray,
    user_raw: np.ndarray,
    source: dict,
    protocol: dict,
    extra: dict | None = None,
) -> dict:
    """Write the files of a dataset into `out` (a fresh temporary directory) and its manifest;
    `extra` adds top-level manifest keys (a synthetic source's `oracle_uauc`)."""
    histories = {s.history.shape[1] for s in splits.values()}
    windows = {s.window.shape[1] for s in splits.values()}
    if len(histories) != 1 or len(windows) != 1:
        raise ValueError(f"all splits must share L and W, got {histories} and {windows}")
    files = {}
    for name, split in splits.items():
        save_file(split.to_arrays(), str(out / f"{name}.safetensors"))
    save_file(
        {"item_raw": item_raw.astype(np.int64), "user_raw": user_raw.astype(np.int64)},
        str(out / "vocab.safetensors"),
    )
    for name in [*splits, "vocab"]:
        files[f"{name}.safetensors"] = sha256_file(out / f"{name}.safetensors")
    counts = {
        name: {
            "records": len(s),
            "positives": int(s.label.sum()),
            "events": s.num_events,
            "users": int(len(np.unique(s.user))),
            "items": int(len(np.unique(s.item))),
        }
        for name, s in splits.items()
    }
    from duet.tasks.recommendation import BUILDER, NAME

    manifest = {
        "format": FORMAT,
        "task": NAME,
        "builder": BUILDER,
        "source": source,
        "protocol": protocol,
        "num_items": int(len(item_raw)),
        "num_users": int(len(user_raw)),
        "history_len": histories.pop(),
        "window_len": windows.pop(),
        "counts": counts,
        **(extra or {}),
        "files": files,
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def read_manifest(path: str | Path) -> dict:
    try:
        return _read_manifest(path, FORMAT, "duet dataset")
    except ArtifactError as exc:
        if "no manifest.json" in str(exc):
            raise ArtifactError(f"{exc}; run `duet prepare` first") from None
        raise


def load_dataset(path: str | Path, splits: tuple[str, ...] = SPLITS) -> Dataset:
    """Load and verify the requested splits. Training passes ("train", "valid") only."""
    path = Path(path)
    manifest = read_manifest(path)
    loaded = {}
    for name in splits:
        file = verify_file(path, f"{name}.safetensors", manifest)
        try:
            loaded[name] = Split.from_arrays(load_file(str(file)))
        except Exception as exc:  # a corrupt file that still matched its hash is a bug upstream
            raise ArtifactError(f"{file}: unreadable dataset file ({exc})") from None
    return Dataset(path=path, manifest=manifest, splits=loaded)


def load_vocab(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    return load_file(str(verify_file(path, "vocab.safetensors", read_manifest(path))))


def config_hash(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
