"""Targets' contexts (the items before them) and uniform negatives from the items a user never touched:
shared by every protocol (the default and the published code's reference layout)."""

from __future__ import annotations

import numpy as np

from duet.errors import DuetError
from duet.tasks.recommendation.data.store import PAD

_CHUNK = 1 << 16  # targets per block when gathering sequences, to bound memory


def context(items: np.ndarray, index: np.ndarray, position: np.ndarray, length: int) -> np.ndarray:
    """For targets at global `index` (position `position` in their user's sequence),
    the `length` items before them: oldest first, left-aligned, 0-padded."""
    out = np.zeros((len(index), length), np.int32)  # (T, length)
    offsets = np.arange(length)
    for lo in range(0, len(index), _CHUNK):
        g, t = index[lo:lo + _CHUNK], position[lo:lo + _CHUNK]
        have = np.minimum(t, length)
        idx = (g - have)[:, None] + offsets  # (chunk, length)
        valid = offsets < have[:, None]
        out[lo:lo + _CHUNK] = np.where(valid, items[np.where(valid, idx, 0)], PAD)
    return out


class NegativeSampler:
    """Uniform negatives from the items (1..num_items-1) a user never interacted with.

    The r-th non-interacted item of a user is found by binary search over the user's
    sorted interacted items, so nothing of size users x items is ever built.
    """

    def __init__(self, user: np.ndarray, item: np.ndarray, num_users: int, num_items: int):
        self.n = num_items - 1  # real items 1..n
        pairs = np.unique(user.astype(np.int64) * (self.n + 1) + item)  # sorted by user, item
        p_user, p_item = pairs // (self.n + 1), pairs % (self.n + 1)
        count = np.bincount(p_user, minlength=num_users)
        start = np.cumsum(count) - count
        # c_j = items not interacted with that come before the j-th interacted item
        below = p_item - 1 - (np.arange(len(pairs)) - start[p_user])
        self.keys = p_user * (self.n + 1) + below
        self.start = start
        self.free = self.n - count  # (num_users,) items available as negatives

    def to_items(self, user: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """The rank-th (0-based) non-interacted item of each user; rank is (P, k)."""
        user = user.astype(np.int64)
        query = user[:, None] * (self.n + 1) + rank
        before = np.searchsorted(self.keys, query, side="right") - self.start[user][:, None]
        return rank + 1 + before

    def _free(self, user: np.ndarray) -> np.ndarray:
        free = self.free[user]
        if (free == 0).any():
            raise DuetError("a user interacted with every item: no negatives can be drawn")
        return free

    def sample_with_replacement(self, user: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """(P, k) negatives, each drawn independently (a row may repeat an item)."""
        rank = rng.integers(0, self._free(user)[:, None], size=(len(user), k))
        return self.to_items(user, rank)

    def sample(self, user: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """(P, k) negatives, distinct within a row when the user has >= k free items."""
        if k == 0 or len(user) == 0:
            return np.zeros((len(user), k), np.int64)
        free = self._free(user)
        rank = rng.integers(0, free[:, None], size=(len(user), k))
        distinct = free >= k
        # Redraw repeated values until each row is distinct; the result is uniform over
        # k-subsets because the procedure treats all items alike.
        rank.sort(axis=1)
        rows = np.flatnonzero(distinct)
        while len(rows):
            sub = rank[rows]
            dup = np.zeros(sub.shape, bool)
            dup[:, 1:] = sub[:, 1:] == sub[:, :-1]
            has = dup.any(axis=1)
            rows, sub, dup = rows[has], sub[has], dup[has]
            if not len(rows):
                break
            r, c = np.nonzero(dup)
            sub[r, c] = rng.integers(0, free[rows[r]])
            sub.sort(axis=1)
            rank[rows] = sub
        return self.to_items(user, rank)
