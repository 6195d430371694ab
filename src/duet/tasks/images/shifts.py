"""Per-device covariate shifts of small grey images in [0, 1], applied with scipy.ndimage.

A device's shift is persistent (drawn once, stored in the dataset manifest) so its
recent unlabeled samples show it: that is what the generator can read off a window.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SHIFT_TYPES = ("rotation", "scale", "thickness", "inversion", "noise")


def draw_shift(kind: str, rng: np.random.Generator) -> dict:
    """A device's shift parameters for one shift kind (JSON-ready)."""
    if kind == "rotation":  # how the device holds its camera: a quarter, half or three-quarter turn, +-10 deg
        return {"type": kind, "angle": float(90 * rng.integers(1, 4) + rng.uniform(-10, 10))}
    if kind == "scale":
        return {"type": kind, "factor": float(rng.choice([rng.uniform(0.55, 0.75), rng.uniform(1.3, 1.6)]))}
    if kind == "thickness":
        return {"type": kind, "strength": float(rng.uniform(0.6, 1.0))}
    if kind == "inversion":
        return {"type": kind, "contrast": float(rng.uniform(0.6, 1.0))}
    if kind == "noise":
        return {"type": kind, "std": float(rng.uniform(0.25, 0.45)), "seed": int(rng.integers(2**31))}
    raise ValueError(f"unknown shift type {kind!r}; expected one of {', '.join(SHIFT_TYPES)}")


def apply_shift(images: np.ndarray, shift: dict) -> np.ndarray:
    """images (N, H, W) float in [0, 1] -> the same images as this device sees them."""
    kind = shift["type"]
    x = images.astype(np.float64)
    if kind == "none":
        out = x
    elif kind == "rotation":
        out = ndimage.rotate(x, shift["angle"], axes=(1, 2), reshape=False, order=1, mode="constant")
    elif kind == "scale":
        out = np.stack([zoom_centered(img, shift["factor"]) for img in x]) if len(x) else x
    elif kind == "thickness":
        thick = ndimage.grey_dilation(x, size=(1, 2, 2))
        out = (1 - shift["strength"]) * x + shift["strength"] * thick
    elif kind == "inversion":
        out = 1.0 - shift["contrast"] * x
    elif kind == "noise":
        noise = np.random.default_rng(shift["seed"]).normal(0.0, shift["std"], x.shape)
        out = x + noise
    else:
        raise ValueError(f"unknown shift type {kind!r}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def zoom_centered(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale one (H, W) image about its centre, keeping its size (an affine map, bilinear)."""
    h, w = image.shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    matrix = np.eye(2) / factor  # output coordinate -> input coordinate
    offset = centre - matrix @ centre
    return ndimage.affine_transform(image, matrix, offset=offset, order=1, mode="constant")
