"""Paired differences between two methods with bootstrap confidence intervals.

Two methods scored on the same test records give each user a per-user AUC under
both; the uauc difference is the mean over users of the per-user differences.
Its uncertainty comes from which users (and, with several seeds, which training
runs) we happened to have, so the interval resamples both: users with
replacement (the same users for every seed: a user is one device, seen by every
seed's models) and seeds with replacement. With one seed only users are resampled.
"""

from __future__ import annotations

import numpy as np

from duet.metrics import per_group_auc

LEVEL = 0.95
BOOTSTRAP = 2000


def per_user_auc(labels: np.ndarray, logits: np.ndarray, users: np.ndarray) -> dict[int, float]:
    """{user: AUC of that user's records} for the users with both labels."""
    ids, aucs, _ = per_group_auc(labels, logits, users)
    return dict(zip(ids.tolist(), aucs.tolist(), strict=True))


def difference_matrix(pairs: list[tuple[dict[int, float], dict[int, float]]]) -> np.ndarray:
    """(seeds, users) per-user AUC of A minus B, one row per seed's (A, B) pair, over the
    users every pair defines (a user without both labels has no AUC anywhere)."""
    common = sorted(set.intersection(*(set(a) & set(b) for a, b in pairs)))
    return np.array([[a[u] - b[u] for u in common] for a, b in pairs], dtype=float)


def paired_bootstrap(diff: np.ndarray, n_boot: int = BOOTSTRAP, level: float = LEVEL,
                     seed: int = 0) -> dict[str, float | bool]:
    """Mean of a (seeds, users) difference matrix and its percentile bootstrap interval.

    Each replicate draws seeds and users with replacement and takes the mean of the
    drawn block; `significant` says the interval excludes 0.
    """
    diff = np.atleast_2d(np.asarray(diff, dtype=float))
    n_seeds, n_users = diff.shape
    if n_users == 0:
        raise ValueError("no users to compare")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        rows = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, int)
        cols = rng.integers(0, n_users, n_users)
        means[b] = diff[np.ix_(rows, cols)].mean()
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return {"mean": float(diff.mean()), "lo": float(lo), "hi": float(hi),
            "significant": bool(lo > 0 or hi < 0), "seeds": n_seeds, "users": n_users}


def seed_interval(diff: np.ndarray, level: float = LEVEL) -> dict[str, float | bool | None]:
    """A t-interval over the seed means of a (seeds, units) difference matrix: the uncertainty of
    training itself, which the paired bootstrap understates with few seeds. None bounds with one seed."""
    from scipy.stats import t

    means = np.atleast_2d(np.asarray(diff, dtype=float)).mean(axis=1)
    if len(means) < 2:
        return {"mean": float(means.mean()), "lo": None, "hi": None, "significant": None, "seeds": len(means)}
    half = float(t.ppf((1 + level) / 2, len(means) - 1) * means.std(ddof=1) / np.sqrt(len(means)))
    lo, hi = float(means.mean()) - half, float(means.mean()) + half
    return {"mean": float(means.mean()), "lo": lo, "hi": hi, "significant": bool(lo > 0 or hi < 0),
            "seeds": len(means)}
