"""A user's arrays -> a duet dataset of their task (the image-fleet layout, any sample shape).

Each device's samples are ordered by `order`; the first `ratios[0]` of them are training data,
the next `ratios[1]` validation, the rest test (chronological per device, as a phone sees them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from duet.atomic import atomic_dir
from duet.errors import DuetError
from duet.tasks.images.store import write_image_dataset


def write_dataset(out: str | Path, task: object, x: np.ndarray, y: np.ndarray, device: np.ndarray,
                  order: np.ndarray, window_len: int = 10, ratios: tuple[float, float, float] = (0.6, 0.2, 0.2),
                  overwrite: bool = False) -> dict:
    """Write samples `x` (N, *shape), integer labels `y` (N,), `device` ids (N,) and each sample's
    `order` within its device (N,) as a dataset of `task` (an OwnTask) in `out`; returns its manifest."""
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
    if not np.issubdtype(y.dtype, np.integer):
        raise DuetError(f"y: expected integer class labels, got {y.dtype}")
    if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1) > 1e-6:
        raise DuetError(f"ratios: three positive fractions summing to 1, got {ratios}")
    rows = np.lexsort((np.arange(n), order, device))  # by device, then order, then input row
    device_ids, first = np.unique(device[rows], return_index=True)
    counts = np.diff(np.r_[first, n])
    position = np.arange(n) - np.repeat(first, counts)
    cut1 = np.repeat(np.floor(counts * ratios[0]).astype(int), counts)
    cut2 = np.repeat(np.floor(counts * (ratios[0] + ratios[1])).astype(int), counts)
    split = np.where(position < cut1, 0, np.where(position < cut2, 1, 2)).astype(np.int8)
    dense = np.repeat(np.arange(len(device_ids)), counts)  # devices as 0..D-1, in id order
    samples = {"x": x[rows], "device": dense.astype(np.int64), "position": position.astype(np.int64),
               "split": split, "adapt": np.zeros(n, np.int8), "source": rows.astype(np.int64)}
    labels = {name: y[rows][split == code].astype(np.int64) for code, name in enumerate(("train", "valid", "test"))}
    devices = [{"id": i, "raw": device_ids[i].item(), "kind": "seen", "split": "train", "shift": {"type": "own"}}
               for i in range(len(device_ids))]
    facts = {"source": {"name": "arrays", "samples": n}, "sample_shape": list(x.shape[1:]),
             "window_len": int(window_len), "ratios": list(ratios), "devices": devices}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        manifest = write_image_dataset(Path(tmp), samples, labels, facts, task=(task.name, task.builder))
    return manifest
