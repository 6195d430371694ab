"""Classification metrics of a fleet (checked against scikit-learn in the tests)."""

from __future__ import annotations

import numpy as np


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float((np.asarray(y) == np.asarray(pred)).mean()) if len(y) else float("nan")


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over the classes present in `y` or `pred` of 2 TP / (2 TP + FP + FN)."""
    y, pred = np.asarray(y), np.asarray(pred)
    classes = np.union1d(y, pred)
    if not len(classes):
        return float("nan")
    tp = np.array([np.sum((y == c) & (pred == c)) for c in classes], dtype=float)
    fp = np.array([np.sum((y != c) & (pred == c)) for c in classes], dtype=float)
    fn = np.array([np.sum((y == c) & (pred != c)) for c in classes], dtype=float)
    denom = 2 * tp + fp + fn
    return float(np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0).mean())


def per_group_accuracy(y: np.ndarray, pred: np.ndarray, group: np.ndarray) -> dict[int, float]:
    """{group: accuracy of its records} (a device's accuracy, for paired intervals)."""
    correct = (np.asarray(y) == np.asarray(pred)).astype(float)
    ids, inverse = np.unique(group, return_inverse=True)
    sums = np.bincount(inverse, weights=correct)
    counts = np.bincount(inverse)
    return {int(g): float(s / c) for g, s, c in zip(ids, sums, counts, strict=True)}


def classification_metrics(y: np.ndarray, logits: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, float]:
    """accuracy, macro_f1, logloss overall, and `accuracy_<group>` / `macro_f1_<group>`
    for every named boolean mask in `groups` (seen/unseen devices, shift types)."""
    pred = logits.argmax(1)
    shifted = logits - logits.max(1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    out = {"accuracy": accuracy(y, pred), "macro_f1": macro_f1(y, pred),
           "logloss": float(-log_prob[np.arange(len(y)), y].mean()), "records": float(len(y))}
    for name, mask in groups.items():
        if mask.any():
            out[f"accuracy_{name}"] = accuracy(y[mask], pred[mask])
            out[f"macro_f1_{name}"] = macro_f1(y[mask], pred[mask])
    return out


def device_groups(split) -> dict[str, np.ndarray]:
    """Boolean masks over a fleet split's records: seen / unseen devices, each shift type and, where
    the fleet names its classes, each class on unseen devices."""
    devices = split.data.device_info()
    kind = np.array([devices[d]["kind"] for d in split.device])
    shift = np.array([devices[d]["shift"]["type"] for d in split.device])
    groups = {"seen": kind == "seen", "unseen": kind == "unseen"}
    groups.update({t: shift == t for t in sorted(set(shift.tolist()))})
    for i, name in enumerate(split.data.manifest.get("class_names", [])):  # per class, where the fleet names them
        groups[f"unseen_{name}"] = (kind == "unseen") & (split.y == i)
    return groups
