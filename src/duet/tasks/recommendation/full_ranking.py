"""Full-ranking metrics: each test positive ranked against the whole catalogue.

Sampled metrics (a positive against 4 or 99 drawn negatives) can order methods
differently from a ranking over every item (Krichene and Rendle, KDD 2020), so
reports give both. For every positive record, every item the user has never
interacted with (in any split, or in the histories of its events) is a candidate
beside the positive itself; the positive's rank counts the candidates scoring at
least as high (ties rank the positive last, as the sampled metrics do). Metrics are
means over positives: `ndcg@k` = 1/log2(1 + rank) within the top k, `recall@k` =
[rank <= k] (one positive per event), `mrr` = 1/rank over the whole list.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from duet.tasks.recommendation.data.store import PAD, Dataset, Split
from duet.training.distributed import unwrap

PAIRS_PER_CHUNK = 1 << 17  # (event, item) pairs scored at once: bounds memory for pair-scoring backbones


def interacted_items(data: Dataset, num_users: int) -> list[set[int]]:
    """Per user, every item seen as a positive (any split loaded) or in a history/window."""
    seen: list[set[int]] = [set() for _ in range(num_users)]
    for name in data.splits:
        split = data[name]
        pos = split.label > 0
        for user, item in zip(split.user[pos].tolist(), split.item[pos].tolist(), strict=True):
            seen[user].add(item)
        first = np.zeros(split.num_events, np.int64)
        first[split.event] = split.user  # the user of each event
        for user, row in zip(first.tolist(), np.concatenate([split.history, split.window], 1), strict=True):
            seen[user].update(row[row != PAD].tolist())
    return seen


@torch.no_grad()
def full_ranking(model: nn.Module, split: Split, interacted: list[set[int]], num_items: int,
                 k: int = 10, max_positives: int | None = None, seed: int = 0) -> dict[str, float]:
    """ndcg@k, recall@k and mrr of `split`'s positives over the whole catalogue.

    `max_positives` ranks a seeded random sample of positives instead of all of
    them (pair-scoring backbones such as DIN cost one forward per (event, item)).
    """
    from duet.duet_model import DuetModel

    was_training = model.training
    model.eval()
    positives = np.flatnonzero(split.label > 0)
    if max_positives is not None and len(positives) > max_positives:
        positives = np.sort(np.random.default_rng(seed).choice(positives, max_positives, replace=False))
    all_items = torch.arange(num_items)
    ranks = np.empty(len(positives), np.int64)
    duet = isinstance(unwrap(model), DuetModel)
    recommender = unwrap(model).device_model if duet else unwrap(model)
    head_on = getattr(getattr(recommender, "backbone", None), "head_on", "event")
    per_chunk = 32 if head_on == "event" else max(1, PAIRS_PER_CHUNK // num_items // 8)
    for lo in range(0, len(positives), per_chunk):
        rec = positives[lo:lo + per_chunk]
        events = split.event[rec]
        n = len(rec)
        history = torch.from_numpy(split.history[events].astype(np.int64))
        item = all_items.repeat(n)
        inverse = torch.arange(n).repeat_interleave(num_items)
        if duet:
            window = torch.from_numpy(split.window[events].astype(np.int64))
            scores = model(history, item, inverse, window=window)
        else:
            scores = model(history, item, inverse)
        scores = scores.view(n, num_items).numpy().astype(np.float64)
        for row, (user, target) in enumerate(zip(split.user[rec].tolist(), split.item[rec].tolist(), strict=True)):
            excluded = [i for i in interacted[user] if i != target]
            scores[row, excluded] = -np.inf
            scores[row, PAD] = -np.inf
        target_scores = scores[np.arange(n), split.item[rec]]
        ranks[lo:lo + n] = (scores >= target_scores[:, None]).sum(axis=1)  # the positive itself counts once
    model.train(was_training)
    return ranking_from_ranks(ranks, k)


def ranking_from_ranks(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """Means of ndcg@k, recall@k and mrr for 1-based ranks of single positives."""
    ranks = np.asarray(ranks, dtype=float)
    hit = ranks <= k
    return {
        f"full_ndcg@{k}": float(np.mean(np.where(hit, 1.0 / np.log2(1.0 + ranks), 0.0))),
        f"full_recall@{k}": float(np.mean(hit)),
        "full_mrr": float(np.mean(1.0 / ranks)),
        "full_positives": int(len(ranks)),
    }
