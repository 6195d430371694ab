"""Summaries of a prepared dataset (`duet data info`): counts, sequence lengths,
item popularity, and an optional figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from duet.atomic import save_png
from duet.tasks.recommendation.data.store import PAD, Dataset, load_dataset, load_vocab


def _lengths(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"min": 0, "median": 0.0, "mean": 0.0, "max": 0}
    return {"min": int(values.min()), "median": float(np.median(values)),
            "mean": float(values.mean()), "max": int(values.max())}


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts: 0 = all equal, -> 1 = one item has all."""
    x = np.sort(np.asarray(counts, np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float(2.0 * np.sum(np.arange(1, n + 1) * x) / (n * total) - (n + 1) / n)


def positive_lengths(data: Dataset, split: str, key: str) -> np.ndarray:
    """Non-padding length of the `key` sequence ("history"/"window") of each positive."""
    s = data[split]
    seqs = getattr(s, key)
    return (seqs != PAD).sum(axis=1)[s.event[s.label == 1]]


def popularity(data: Dataset) -> np.ndarray:
    """Positives per item id over all splits, (num_items,) with index 0 = padding."""
    counts = np.zeros(data.num_items, np.int64)
    for s in data.splits.values():
        counts += np.bincount(s.item[s.label == 1], minlength=data.num_items)
    return counts


def summarize(path: str | Path, top: int = 10) -> dict:
    """Everything `duet data info` prints, as plain data."""
    data = load_dataset(path)
    vocab = load_vocab(path)
    splits = {}
    for name, counts in data.manifest["counts"].items():
        splits[name] = {
            **counts,
            "history": _lengths(positive_lengths(data, name, "history")),
            "window": _lengths(positive_lengths(data, name, "window")),
        }
    counts = popularity(data)[1:]  # real items only
    order = np.argsort(-counts, kind="stable")
    total = int(counts.sum())
    n_top = max(1, int(np.ceil(0.1 * len(counts))))
    top_items = [
        {"item": int(i + 1), "raw": int(vocab["item_raw"][i + 1]), "positives": int(counts[i]),
         "share": float(counts[i] / total) if total else 0.0}
        for i in order[:top]
    ]
    return {
        "path": str(path),
        "source": data.manifest["source"],
        "protocol": data.manifest["protocol"],
        "num_users": data.num_users,
        "num_items": data.num_items,
        "history_len": data.history_len,
        "window_len": data.window_len,
        "splits": splits,
        "popularity": {
            "positives": total,
            "items_with_positives": int((counts > 0).sum()),
            "gini": gini(counts),
            "top10pct_share": float(counts[order[:n_top]].sum() / total) if total else 0.0,
            "top": top_items,
        },
    }


def plot(path: str | Path, png: str | Path) -> None:
    """History-length histogram (train positives) and item popularity by rank (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_dataset(path)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    lengths = positive_lengths(data, "train", "history")
    left.hist(lengths, bins=np.arange(data.history_len + 2) - 0.5)
    left.set_xlabel("history length (non-padding)")
    left.set_ylabel("train positives")
    left.set_yscale("log")
    counts = np.sort(popularity(data)[1:])[::-1]
    counts = counts[counts > 0]
    right.loglog(np.arange(1, len(counts) + 1), counts)
    right.set_xlabel("item rank")
    right.set_ylabel("positives")
    fig.suptitle(Path(path).name)
    save_png(fig, png, dpi=100)
