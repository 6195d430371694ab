"""Evaluation metrics for click-through and ranking, in numpy only.

numpy only (no torch, no scipy) so the device runtime can import this module,
and vectorised over groups: one sort of all records replaces a Python loop over
users, which is what keeps per-user AUC for thousands of users well under a
second. scikit-learn is the oracle in the tests, not a dependency here.

Conventions:

- ``labels`` are 0/1, ``scores`` are real-valued logits (higher = more likely
  positive), ``groups`` are integer ids; the records of one group form one
  user's candidate list.
- AUC counts a tied positive/negative pair as 1/2 (average ranks), exactly as
  ``sklearn.metrics.roc_auc_score`` does. Per-group AUC is defined only for
  groups with both labels; the others are left out of UAUC and GAUC.
- Ranking metrics (NDCG@k, HR@k, MRR@k) break ties pessimistically: among equal
  scores, negatives are ranked ahead of positives. A model that scores every
  candidate the same therefore gets no credit for the tie, and the result is
  deterministic (it does not depend on the input order). Only the order of the
  scores matters, so adding a constant or applying any strictly increasing
  transform leaves them unchanged (as long as floating point does not round two
  distinct scores into a tie). Groups without a positive are skipped.
- A metric with nothing to average (no group with both labels, no positive at
  all) is ``nan`` rather than an error, so one degenerate split does not stop
  an evaluation run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "auc",
    "compute_metrics",
    "gauc",
    "logloss",
    "per_group_auc",
    "ranking_metrics",
    "uauc",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def _check_labels(labels: ArrayLike) -> FloatArray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("labels are empty: nothing to evaluate")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"labels must be numeric 0/1, got dtype {y.dtype}")
    y = y.astype(np.float64)
    if not np.all((y == 0.0) | (y == 1.0)):
        bad = np.unique(y[(y != 0.0) & (y != 1.0)])[:5]
        raise ValueError(f"labels must be 0 or 1, found {bad.tolist()}")
    return y


def _check_scores(scores: ArrayLike, n: int, name: str = "scores") -> FloatArray:
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {s.shape}")
    if s.shape[0] != n:
        raise ValueError(f"{name} has {s.shape[0]} entries but labels has {n}")
    if s.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} contain {int(np.sum(~np.isfinite(s)))} non-finite values")
    return s


def _check_groups(groups: ArrayLike, n: int) -> NDArray[np.integer]:
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {g.shape}")
    if g.shape[0] != n:
        raise ValueError(f"groups has {g.shape[0]} entries but labels has {n}")
    if g.dtype.kind not in "iu":
        raise ValueError(f"groups must be integer ids, got dtype {g.dtype}")
    return g


class _Runs(NamedTuple):
    """Records sorted by (group, ascending score), summarised per tie run.

    A run is a maximal stretch of equal scores inside one group. Every metric
    here depends only on how many positives and negatives each run holds and
    where the run sits in its group, so nothing below works record by record.
    """

    group_ids: np.ndarray  # (G,) sorted distinct group ids
    group_size: IntArray  # (G,)
    group_pos: IntArray  # (G,) positives per group
    run_group: IntArray  # (R,) group index of each run
    run_below: IntArray  # (R,) records of the group scored strictly lower
    run_above: IntArray  # (R,) records of the group scored strictly higher
    run_size: IntArray  # (R,)
    run_pos: IntArray  # (R,)


def _runs(
    y: FloatArray,
    s: FloatArray,
    g: NDArray[np.integer] | None,
    by_score: IntArray | None = None,
) -> _Runs:
    """Sort once and summarise; ``g=None`` is one group, ``by_score`` an argsort(s) to reuse."""
    n = y.shape[0]
    # Ties may land in any order: a run is summarised as a whole.
    order = np.argsort(s) if by_score is None else by_score
    if g is not None:
        order = order[np.argsort(g[order], kind="stable")]  # group first, score second
        g_s = g[order]
    else:
        g_s = np.zeros(n, dtype=np.int64)
    s_s, y_s = s[order], y[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(g_s[1:], g_s[:-1], out=new_group[1:])
    new_run = new_group.copy()
    new_run[1:] |= s_s[1:] != s_s[:-1]
    group_start = np.flatnonzero(new_group)  # (G,)
    run_start = np.flatnonzero(new_run)  # (R,)
    group_end = np.append(group_start[1:], n)
    run_end = np.append(run_start[1:], n)
    run_group = np.cumsum(new_group)[run_start] - 1
    run_pos = np.add.reduceat(y_s, run_start).astype(np.int64)
    return _Runs(
        group_ids=g_s[group_start],
        group_size=group_end - group_start,
        group_pos=np.bincount(run_group, weights=run_pos, minlength=group_start.shape[0]).astype(
            np.int64
        ),
        run_group=run_group,
        run_below=run_start - group_start[run_group],
        run_above=group_end[run_group] - run_end,
        run_size=run_end - run_start,
        run_pos=run_pos,
    )


def _group_auc(r: _Runs) -> FloatArray:
    """AUC of every group from tie-averaged ranks (Mann-Whitney U); nan without both labels."""
    # Average 1-based rank of a run within its group: the mean of below+1 .. below+size.
    run_rank = r.run_below + (r.run_size + 1) / 2.0
    rank_sum = np.bincount(r.run_group, weights=run_rank * r.run_pos, minlength=len(r.group_ids))
    n_pos = r.group_pos
    n_neg = r.group_size - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        # U = R_pos - n_pos (n_pos + 1) / 2 counts the won pairs, +1/2 per tied pair.
        aucs = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), aucs, np.nan)


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC with ties counted 1/2 (sklearn's roc_auc_score); nan if one class only."""
    y = _check_labels(labels)
    s = _check_scores(scores, y.shape[0])
    return float(_group_auc(_runs(y, s, None))[0])


def per_group_auc(
    labels: ArrayLike, scores: ArrayLike, groups: ArrayLike
) -> tuple[np.ndarray, FloatArray, IntArray]:
    """(group ids, AUC, records per group) for the groups that have both labels.

    Group ids come back sorted; groups with a single label class have no AUC
    and are omitted rather than reported as nan, so callers can average directly.
    """
    y = _check_labels(labels)
    s = _check_scores(scores, y.shape[0])
    g = _check_groups(groups, y.shape[0])
    return _defined_aucs(_runs(y, s, g))


def _defined_aucs(r: _Runs) -> tuple[np.ndarray, FloatArray, IntArray]:
    aucs = _group_auc(r)
    keep = ~np.isnan(aucs)
    return r.group_ids[keep], aucs[keep], r.group_size[keep]


def _mean_auc(aucs: FloatArray, weights: IntArray | None) -> float:
    if aucs.size == 0:
        return float("nan")
    return float(np.average(aucs, weights=weights))


def uauc(labels: ArrayLike, scores: ArrayLike, groups: ArrayLike) -> float:
    """Plain mean of per-group AUC: every user counts the same, however active."""
    _, aucs, _ = per_group_auc(labels, scores, groups)
    return _mean_auc(aucs, None)


def gauc(labels: ArrayLike, scores: ArrayLike, groups: ArrayLike) -> float:
    """Per-group AUC weighted by the group's record count (impressions)."""
    _, aucs, sizes = per_group_auc(labels, scores, groups)
    return _mean_auc(aucs, sizes)


def logloss(labels: ArrayLike, logits: ArrayLike) -> float:
    """Mean binary cross-entropy computed from logits.

    -log sigmoid(z) = softplus(-z) stays finite and exact for large |z|, where
    going through probabilities would round to 0 or 1 and need clipping.
    """
    y = _check_labels(labels)
    z = _check_scores(logits, y.shape[0], name="logits")
    return _logloss(y, z)


def _logloss(y: FloatArray, z: FloatArray) -> float:
    return float(np.mean(np.logaddexp(0.0, np.where(y == 1.0, -z, z))))


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks is empty: give at least one cut-off")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"each k must be a positive integer, got {k!r}")
    return tuple(int(k) for k in ks)


def ranking_metrics(
    labels: ArrayLike, scores: ArrayLike, groups: ArrayLike, ks: Iterable[int] = (10,)
) -> dict[str, float]:
    """NDCG@k, HR@k and MRR@k averaged over the groups that have a positive.

    Binary relevance: DCG sums 1/log2(rank + 1) over positives in the top k and
    IDCG puts all of the group's positives first. Ties are pessimistic (see the
    module docstring).
    """
    ks = _check_ks(ks)
    y = _check_labels(labels)
    s = _check_scores(scores, y.shape[0])
    g = _check_groups(groups, y.shape[0])
    return _ranking(_runs(y, s, g), ks)


def _ranking(r: _Runs, ks: tuple[int, ...]) -> dict[str, float]:
    n_groups = len(r.group_ids)
    # Pessimistic ties: a run's negatives come first, so its positives take ranks
    # lead + 1 .. lead + run_pos, where lead counts every record ranked ahead of them.
    lead = r.run_above + (r.run_size - r.run_pos)  # (R,)
    with_pos = np.flatnonzero(r.run_pos > 0)
    # Runs ascend in score within a group, so the group's last run holding a
    # positive holds its best-ranked positive.
    last = np.ones(with_pos.shape[0], dtype=bool)
    last[:-1] = r.run_group[with_pos[1:]] != r.run_group[with_pos[:-1]]
    first_rank = np.full(n_groups, np.inf)  # (G,) rank of the best positive
    first_rank[r.run_group[with_pos[last]]] = lead[with_pos[last]] + 1
    has_pos = r.group_pos > 0

    # cum_gain[m] = sum of 1/log2(rank + 1) over ranks 1..m, so a run's DCG is a difference.
    kmax = max(ks)
    cum_gain = np.concatenate(([0.0], np.cumsum(1.0 / np.log2(np.arange(2, kmax + 2)))))
    out: dict[str, float] = {}
    for k in ks:
        run_dcg = cum_gain[np.minimum(lead + r.run_pos, k)] - cum_gain[np.minimum(lead, k)]
        dcg = np.bincount(r.run_group, weights=run_dcg, minlength=n_groups)
        idcg = cum_gain[np.minimum(r.group_pos, k)]
        hit = first_rank <= k
        if has_pos.any():
            out[f"ndcg@{k}"] = float(np.mean(dcg[has_pos] / idcg[has_pos]))
            out[f"hit@{k}"] = float(np.mean(hit[has_pos]))
            out[f"mrr@{k}"] = float(np.mean(np.where(hit, 1.0 / first_rank, 0.0)[has_pos]))
        else:
            out[f"ndcg@{k}"] = out[f"hit@{k}"] = out[f"mrr@{k}"] = float("nan")
    return out


def compute_metrics(
    labels: ArrayLike, scores: ArrayLike, groups: ArrayLike, ks: Iterable[int] = (10,)
) -> dict[str, float]:
    """All evaluation metrics for one split, from logits and per-user groups.

    Keys: auc, uauc, gauc, logloss, ndcg@k, hit@k, mrr@k for each k, n_records,
    and n_groups_auc (groups with both labels, i.e. those uauc/gauc average over).
    """
    ks = _check_ks(ks)
    y = _check_labels(labels)
    s = _check_scores(scores, y.shape[0])
    g = _check_groups(groups, y.shape[0])
    by_score = np.argsort(s)
    runs = _runs(y, s, g, by_score)
    _, aucs, sizes = _defined_aucs(runs)
    out: dict[str, float] = {
        "auc": float(_group_auc(_runs(y, s, None, by_score))[0]),
        "uauc": _mean_auc(aucs, None),
        "gauc": _mean_auc(aucs, sizes),
        "logloss": _logloss(y, s),
    }
    out.update(_ranking(runs, ks))
    out["n_records"] = int(y.shape[0])
    out["n_groups_auc"] = int(aucs.shape[0])
    return out
