"""A user's arrays -> a duet dataset of their task (the sample-fleet layout, any sample shape).

Devices are seen or unseen. A seen device's samples, ordered by `order`, are split in time: the
first `ratios[0]` of them are training data, the next `ratios[1]` validation, the rest test (as a
phone sees them). With `unseen`, a share of the devices drawn with `seed` never appears in
training: their whole streams are scored, half of them on validation (where choices are made)
and half on test, as the image and sensor fleets hold devices out. A dataset of new devices only
(`unseen=1, unseen_valid=0`) can be scored by runs trained on another dataset of the same task:
`duet evaluate --data`, `duet simulate --data`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from duet.atomic import atomic_dir
from duet.errors import ArtifactError, DuetError
from duet.tasks.fleet.store import SPLIT_CODE, write_fleet_dataset


def checked_task(task: object, options: Mapping[str, Any]) -> object:
    """The task as another process will rebuild it: its builder imported and called with `options`.
    A builder that cannot be imported (a typo, a module not on the path) is one line with a hint, here
    rather than at `duet serve`."""
    from duet.task import load_task

    builder = getattr(task, "builder", None)
    if not isinstance(builder, str):
        raise DuetError(f"task: expected an OwnTask (with a builder `package.module:function`), got {task!r}")
    try:
        rebuilt = load_task(builder, options)
    except ArtifactError as exc:
        raise DuetError(str(exc)) from None
    if rebuilt.name != task.name:
        raise DuetError(f"task builder {builder!r} returns task {rebuilt.name!r}, not {task.name!r}")
    return rebuilt


def device_roles(count: int, unseen: float, unseen_valid: float, seed: int) -> np.ndarray:
    """Each device's role, 0 seen, 1 unseen scored on validation, 2 unseen scored on test: a share
    `unseen` of the devices drawn with `seed`, a share `unseen_valid` of those validate."""
    if not 0 <= unseen <= 1 or not 0 <= unseen_valid <= 1:
        raise DuetError(f"unseen {unseen}, unseen_valid {unseen_valid}: shares between 0 and 1")
    held = int(round(unseen * count))
    order = np.random.default_rng(seed).permutation(count)[:held]
    roles = np.zeros(count, dtype=np.int8)
    valid = int(round(unseen_valid * held))
    roles[order[:valid]], roles[order[valid:]] = 1, 2
    return roles


def write_dataset(out: str | Path, task: object, x: np.ndarray, y: np.ndarray, device: np.ndarray,
                  order: np.ndarray, window_len: int = 10, ratios: tuple[float, float, float] = (0.6, 0.2, 0.2),
                  overwrite: bool = False, unseen: float = 0.0, unseen_valid: float = 0.5, seed: int = 0,
                  builder_options: Mapping[str, Any] | None = None) -> dict:
    """Write samples `x` (N, *shape), labels `y` (N,: integer classes, or floats for a regression),
    `device` ids (N,) and each sample's `order` within its device (N,) as a dataset of `task` (an
    OwnTask) in `out`; returns its manifest. `unseen`: the share of devices held out of training
    (drawn with `seed`; `unseen_valid` of them validate, the others test). `builder_options`: keyword
    arguments of the task's builder, recorded so that every process rebuilds the same task."""
    options = dict(builder_options or {})
    task = checked_task(task, options)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y, device, order = (np.asarray(a).reshape(-1) for a in (y, device, order))
    n = len(x)
    for name, array in (("y", y), ("device", device), ("order", order)):
        if len(array) != n:
            raise DuetError(f"{name}: {len(array)} values for {n} samples")
    if x.ndim < 2 or n == 0:
        raise DuetError(f"x: expected (samples, *shape), got {x.shape}")
    if not np.isfinite(x).all():
        raise DuetError(f"x: sample {int(np.nonzero(~np.isfinite(x.reshape(n, -1)).all(1))[0][0])} is not finite")
    try:
        task.spec(x.shape[1:]).rows(x)  # the task's declared sample: shape, each column's range and codes
    except ValueError as exc:
        raise DuetError(f"x: {exc} (the task's columns)") from None
    regression = np.issubdtype(y.dtype, np.floating)
    if not regression and not np.issubdtype(y.dtype, np.integer):
        raise DuetError(f"y: expected integer class labels or float targets (a regression), got {y.dtype}")
    if regression and not np.isfinite(y).all():
        raise DuetError(f"y: label {int(np.nonzero(~np.isfinite(y))[0][0])} is not finite")
    if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1) > 1e-6:
        raise DuetError(f"ratios: three positive fractions summing to 1, got {ratios}")
    rows = np.lexsort((np.arange(n), order, device))  # by device, then order, then input row
    device_ids, first = np.unique(device[rows], return_index=True)
    counts = np.diff(np.r_[first, n])
    position = np.arange(n) - np.repeat(first, counts)
    role = np.repeat(device_roles(len(device_ids), unseen, unseen_valid, seed), counts)
    cut1 = np.repeat(np.floor(counts * ratios[0]).astype(int), counts)
    cut2 = np.repeat(np.floor(counts * (ratios[0] + ratios[1])).astype(int), counts)
    seen_split = np.where(position < cut1, 0, np.where(position < cut2, 1, 2))
    split = np.where(role == 0, seen_split, role).astype(np.int8)  # an unseen device's whole stream: its role
    dense = np.repeat(np.arange(len(device_ids)), counts)  # devices as 0..D-1, in id order
    samples = {"x": x[rows], "device": dense.astype(np.int64), "position": position.astype(np.int64),
               "split": split, "adapt": np.zeros(n, np.int8), "source": rows.astype(np.int64)}
    labels = {name: y[rows][split == code].astype(np.float32 if regression else np.int64)
              for name, code in SPLIT_CODE.items()}
    roles = role[first]
    devices = [{"id": i, "raw": raw.item() if isinstance(raw, np.generic) else raw,  # ids: numbers or text
                "kind": "seen" if roles[i] == 0 else "unseen", "split": ("train", "valid", "test")[roles[i]],
                "shift": {"type": "own"}} for i, raw in enumerate(device_ids)]
    facts = {"source": {"name": "arrays", "samples": n}, "sample_shape": list(x.shape[1:]),
             "window_len": int(window_len), "ratios": list(ratios), "devices": devices,
             **({"target": "value"} if regression else {}), **({"builder_options": options} if options else {}),
             **({"protocol": {"unseen": unseen, "unseen_valid": unseen_valid, "seed": seed}} if unseen else {})}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        manifest = write_fleet_dataset(Path(tmp), samples, labels, facts, task=(task.name, task.builder))
    return manifest
