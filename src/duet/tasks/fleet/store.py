"""The on-disk sample fleet: devices, each a stream of samples of one shape. Written by
`duet prepare` for the image and sensor fleets and by `duet.tasks.own.write_dataset` for a
user's own arrays; read by every task built on the fleet kit (`duet.tasks.fleet`).

A dataset directory holds:

* `samples.safetensors`: every sample of every device, sorted by (device, time):
  `x` (N, *sample shape) float32 as the device sees it (an image fleet: its shift applied), `device` (N,),
  `position` (N,) the sample's place in its device's stream, `split` (N,) 0 train,
  1 valid, 2 test, `adapt` (N,) 1 for a valid/test sample in its device's
  adaptation prefix (its labels may be used by per-device fine-tuning; no method
  is scored on it), `source` (N,) the index of the raw sample it was made from.
  No labels: they live per split, so training never loads the test labels.
* `labels_train.safetensors`, `labels_valid...`, `labels_test...`: `y` (N_split,), int64 class
  labels or float32 targets (regression).
* `manifest.json`: task, classes or sample shape, window length W, every device's
  kind (seen: its earlier samples are training data; unseen: never in training)
  and shift, counts, and the sha256 of every file.

A sample's window is its device's W most recent samples up to and including it
(unlabeled): rows `max(first row of its device, i - W + 1) .. i`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from duet.atomic import sha256_file, write_json
from duet.errors import ArtifactError
from duet.manifest import read_manifest, verify_file

FORMAT = "duet-images/1"  # the layout's name since the image fleet introduced it
SPLITS = ("train", "valid", "test")
SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}
SAMPLE_KEYS = ("x", "device", "position", "split", "adapt", "source")


def is_fleet_dataset(path: str | Path) -> bool:
    """Whether `path` holds a sample-fleet dataset (its manifest says so)."""
    import json

    file = Path(path) / "manifest.json"
    try:
        return json.loads(file.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class FleetSplit:
    """The scored records of one split (rows into the shared sample arrays) and their labels."""

    name: str
    rows: np.ndarray  # (N,) int64 rows of the samples scored in this split
    y: np.ndarray  # (N,) labels of those rows: int64 classes or float32 targets
    data: FleetData = field(repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def device(self) -> np.ndarray:
        return self.data.device[self.rows]

    def select(self, mask: np.ndarray) -> FleetSplit:
        """The records where `mask` holds (some devices, a shift type), same split and data."""
        return FleetSplit(self.name, self.rows[mask], self.y[mask], self.data)


@dataclass
class FleetData:
    """A loaded sample fleet: every sample (for windows) and the labels of the loaded splits."""

    path: Path
    manifest: dict
    x: np.ndarray  # (N, *sample shape) float32
    device: np.ndarray  # (N,) int64
    position: np.ndarray
    split: np.ndarray
    adapt: np.ndarray
    source: np.ndarray
    labels: dict[str, np.ndarray]  # split -> y of every sample of that split (row order)
    splits: dict[str, FleetSplit] = field(default_factory=dict)

    def __post_init__(self) -> None:
        starts = np.flatnonzero(np.r_[True, self.device[1:] != self.device[:-1]])
        self.first_row = np.repeat(starts, np.diff(np.r_[starts, len(self.device)]))
        for name, y in self.labels.items():
            rows = np.flatnonzero(self.split == SPLIT_CODE[name])
            scored = self.adapt[rows] == 0
            self.splits[name] = FleetSplit(name, rows[scored], _labels(y[scored]), self)

    @property
    def hash(self) -> str:
        return sha256_file(self.path / "manifest.json")

    @property
    def window_len(self) -> int:
        return int(self.manifest["window_len"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    def __getitem__(self, split: str) -> FleetSplit:
        if split not in self.splits:
            raise KeyError(f"split {split!r} was not loaded (loaded: {sorted(self.splits)})")
        return self.splits[split]

    def split_labels(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, y) of every sample of a loaded split, the adaptation prefix included."""
        return np.flatnonzero(self.split == SPLIT_CODE[split]), _labels(self.labels[split])

    def window_rows(self, rows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(E, W) sample rows of each row's window, oldest first, left-aligned, and its mask.

        Padding positions hold row 0 (masked out)."""
        rows = np.asarray(rows, dtype=np.int64)
        count = np.minimum(rows - self.first_row[rows] + 1, length)  # (E,) >= 1: a window holds its sample
        offsets = np.arange(length)[None, :]
        mask = offsets < count[:, None]
        index = np.where(mask, rows[:, None] - count[:, None] + 1 + offsets, 0)
        return index, mask

    def device_info(self) -> list[dict]:
        return self.manifest["devices"]


def _labels(y: np.ndarray) -> np.ndarray:
    """Class labels as int64, regression targets (floats) as float32."""
    return y.astype(np.float32 if np.issubdtype(y.dtype, np.floating) else np.int64)


def write_fleet_dataset(out: Path, samples: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                        manifest: dict, task: tuple[str, str]) -> dict:
    """Write the files of a fleet dataset of `task` (name, builder) into `out` (a fresh temporary
    directory). Labels are int64 classes, or float32 targets where they are floats (regression)."""
    task_name, builder = task
    save_file({k: np.ascontiguousarray(samples[k]) for k in SAMPLE_KEYS}, str(out / "samples.safetensors"))
    files = {"samples.safetensors": sha256_file(out / "samples.safetensors")}
    for name in SPLITS:
        file = out / f"labels_{name}.safetensors"
        save_file({"y": _labels(np.ascontiguousarray(labels[name]))}, str(file))
        files[file.name] = sha256_file(file)
    counts = {name: {"samples": int((samples["split"] == SPLIT_CODE[name]).sum()),
                     "scored": int(((samples["split"] == SPLIT_CODE[name]) & (samples["adapt"] == 0)).sum()),
                     "devices": int(len(np.unique(samples["device"][samples["split"] == SPLIT_CODE[name]])))}
              for name in SPLITS}
    manifest = {"format": FORMAT, "task": task_name, "builder": builder, **manifest, "counts": counts, "files": files}
    write_json(out / "manifest.json", manifest)
    return manifest


def load_fleet(path: str | Path, splits: tuple[str, ...] = SPLITS) -> FleetData:
    """Load and verify a fleet dataset with the labels of `splits` only (training: train, valid)."""
    path = Path(path)
    manifest = read_manifest(path, FORMAT, "duet fleet dataset")

    def read(name: str) -> dict[str, np.ndarray]:
        file = verify_file(path, name, manifest)
        try:
            return load_file(str(file))
        except Exception as exc:
            raise ArtifactError(f"{file}: unreadable dataset file ({exc})") from None

    samples = read("samples.safetensors")
    labels = {name: read(f"labels_{name}.safetensors")["y"] for name in splits}
    return FleetData(path=path, manifest=manifest, x=samples["x"], device=samples["device"].astype(np.int64),
                     position=samples["position"], split=samples["split"], adapt=samples["adapt"],
                     source=samples["source"], labels=labels)
