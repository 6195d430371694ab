"""When a device asks the cloud for new head parameters (numpy only: runs on the device).

Asking at every new sample is what DUET's paper does; IntellectReq (WWW 2024) showed
that asking on a small share of occasions keeps almost all of the gain. A policy
compares the current window with the window the current parameters were generated
for and says whether a request is due:

* `always`: at every refresh (today's behaviour);
* `every`: once `k` new samples have entered the window since the last answer;
* `drift`: once the window's mean feature (the generator's own input, from the bundle's
  features graph; optionally over the `recent` newest samples only) has turned away
  from the generated-for window's by a cosine distance of at least `threshold`: the
  device asks when its stream moved, not when the clock says so.

Windows are the rows of raw samples (n, *shape), oldest first, without padding, so a
policy works alike for token ids and float samples. A device without parameters from the
service (none yet, or the last request failed) always asks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

POLICIES = ("always", "every", "drift")


def new_items(last: np.ndarray, current: np.ndarray) -> int:
    """How many samples entered the window since `last` (both rows of samples, oldest first).

    The smallest shift s with last[s:] a prefix of current: a window that slid by s
    samples has s new ones; one that shares no aligned run with `last` is all new.
    """
    a = [np.asarray(row).tobytes() for row in np.asarray(last)]
    b = [np.asarray(row).tobytes() for row in np.asarray(current)]
    for shift in range(len(a) + 1):
        kept = a[shift:]
        if b[: len(kept)] == kept:
            return len(b) - len(kept)
    return len(b)  # unreachable: shift = len(a) keeps nothing, always a prefix


def window_drift(last: np.ndarray, current: np.ndarray, recent: int | None = None) -> float:
    """1 - cosine similarity of two windows' mean features ((n, D) each; 0: same direction),
    over each window's `recent` newest samples (None: all of them)."""
    a = np.asarray(last)[-recent if recent else None:].mean(0)
    b = np.asarray(current)[-recent if recent else None:].mean(0)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 - float(a @ b) / denom if denom > 0 else 1.0


@dataclass(frozen=True)
class RequestPolicy:
    """`kind` always | every (with `k`) | drift (with `threshold`); `due` decides."""

    kind: str = "always"
    k: int = 1
    threshold: float = 0.1
    # drift over the newest samples only: a long window's mean moves slowly after a switch,
    # while the generator (a GRU's last state) follows the newest ones
    recent: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.kind!r}")
        if self.k < 1:
            raise ValueError(f"every: k must be >= 1, got {self.k}")
        if self.recent is not None and self.recent < 1:
            raise ValueError(f"drift: recent must be >= 1 samples, got {self.recent}")
        if not 0.0 <= self.threshold <= 2.0:
            raise ValueError(f"drift: threshold must be in [0, 2] (a cosine distance), got {self.threshold}")

    @property
    def name(self) -> str:
        drift = f"drift-{self.threshold:g}" + (f"-recent{self.recent}" if self.recent else "")
        return {"always": "always", "every": f"every-{self.k}", "drift": drift}[self.kind]

    def due(self, last: np.ndarray | None, current: np.ndarray,
            features: Callable[[np.ndarray], np.ndarray] | None = None) -> bool:
        """Whether to ask for parameters for the window `current`, given the generated-for window
        `last` (None: the device has no service parameters, so it asks); `features`: samples -> (n, D)."""
        if last is None or self.kind == "always":
            return True
        if self.kind == "every":
            return new_items(last, current) >= self.k
        if features is None:
            raise ValueError("the drift policy needs the window's features (the bundle's features graph)")
        return window_drift(features(last), features(current), self.recent) >= self.threshold
