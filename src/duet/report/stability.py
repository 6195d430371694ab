"""How much a validation curve oscillates: SWA is claimed to damp it, this measures whether it does."""

from __future__ import annotations

import numpy as np


def oscillation(values: list[float]) -> dict[str, float]:
    """mean |epoch-to-epoch change| and the number of times the curve turns (both lower = steadier).

    Flat steps neither count as a turn nor break one: up, flat, down is one turn."""
    steps = np.diff(np.asarray(values, dtype=float))
    signs = np.sign(steps[steps != 0])
    return {"mean_abs_change": float(np.abs(steps).mean()) if len(steps) else 0.0,
            "direction_changes": int((signs[1:] != signs[:-1]).sum())}
