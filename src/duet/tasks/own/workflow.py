"""Train, evaluate and compare a user's task end to end from Python: the generic comparison of the
comparison engine (`duet.comparison.generic`: the global model, DUET on top of it, and DUET's own
static part with the global head, with paired intervals over devices and seeds), which `duet
compare` runs on an own task's dataset too.
"""

from __future__ import annotations

from duet.comparison.generic import compare_with_global, render, train_runs

__all__ = ["compare_with_global", "render", "train_runs"]
