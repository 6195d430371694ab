"""Cold devices: every method's test metrics binned by how many items the device had
seen before the event.

A device with one or two items has almost nothing to personalise from, for a
backbone or a generator alike; a device with hundreds has a history the global
model already reads. Where generation pays, if anywhere, shows up per bin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from duet.metrics import auc, per_group_auc
from duet.tasks.recommendation.data.store import PAD, Dataset, Split

BINS: tuple[tuple[int, int | None], ...] = ((1, 2), (3, 5), (6, 10), (11, 50), (51, None))


def bin_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


LABELS = tuple(bin_label(lo, hi) for lo, hi in BINS)


def event_user_line(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(E,) user and first record line of each event."""
    user = np.zeros(split.num_events, np.int64)
    user[split.event] = split.user
    line = np.full(split.num_events, np.iinfo(np.int64).max)
    np.minimum.at(line, split.event, split.line.astype(np.int64))
    return user, line


def items_seen(data: Dataset, split: str) -> np.ndarray:
    """(E,) items the device had seen before each event of `split`.

    Lines number each user's timeline, so a user's events over every loaded split in
    line order are its targets in time order: the first one had as many items before
    it as its history shows, and every later one, one more than the one before.
    """
    users, lines, firsts, owner = [], [], [], []
    for name, s in data.splits.items():
        user, line = event_user_line(s)
        users.append(user)
        lines.append(line)
        firsts.append((s.history != PAD).sum(1))
        owner.append(np.full(len(user), name == split))
    user, line, first, mine = (np.concatenate(a) for a in (users, lines, firsts, owner))
    order = np.lexsort((line, user))
    user_sorted = user[order]
    start = np.r_[0, np.flatnonzero(user_sorted[1:] != user_sorted[:-1]) + 1]  # each user's first event
    rank = np.arange(len(order)) - np.repeat(start, np.diff(np.r_[start, len(order)]))
    seen = np.empty(len(order), np.int64)
    seen[order] = np.repeat(first[order][start], np.diff(np.r_[start, len(order)])) + rank
    return seen[mine]


def bin_of(seen: np.ndarray) -> np.ndarray:
    """Index into BINS of each count (counts below 1 fall in the first bin)."""
    edges = np.array([lo for lo, _ in BINS[1:]])
    return np.searchsorted(edges, seen, side="right")


def by_seen(split: Split, seen: np.ndarray, scores: Path) -> dict[str, dict[str, float]]:
    """uauc, auc, users and events per bin, from a run's saved per-record logits."""
    saved = load_file(str(scores))
    order = np.argsort(saved["line"])
    position = np.searchsorted(saved["line"], split.line, sorter=order)
    found = position < len(order)
    found[found] = saved["line"][order[position[found]]] == split.line[found]
    logits = np.where(found, saved["logits"][order[np.minimum(position, len(order) - 1)]], np.nan)
    record_bin = bin_of(seen)[split.event]
    out = {}
    for index, label in enumerate(LABELS):
        mask = (record_bin == index) & found
        if not mask.any():
            continue
        ids, aucs, _ = per_group_auc(split.label[mask], logits[mask], split.user[mask])
        if not len(ids):
            continue
        out[label] = {"uauc": float(aucs.mean()), "auc": auc(split.label[mask], logits[mask]),
                      "users": int(len(ids)), "events": int(len(np.unique(split.event[mask])))}
    return out
