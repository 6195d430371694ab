"""The reference protocol: data laid out the way the published DUET code's files are.

`duet prepare --protocol reference` builds it from any raw source (by default the
bundled MovieLens sample), so our models and the published code can be compared
on the same records. The steps, each done once, in this order:

1. keep items with >= 5 interactions, then users with >= 10 interactions among
   the remaining ones (one pass each, not an iterated k-core);
2. items renumbered 1..n in raw-id order (0 = padding), users 0..m-1;
3. per user, interactions sorted by (timestamp, item id); every 0-based position
   t >= 2 is a target; targets with t < floor(0.8 n) are train (cloud period), the
   rest test (device period), n = the user's interactions;
4. history = the up-to-30 items before t, window = the up-to-10 items before t,
   both oldest first, left-aligned, 0-padded;
5. 1 negative per train positive and 4 per test positive, drawn uniformly *with
   replacement* from the items the user never touched, by one seeded generator.

The result is two lists of text-format records (train, test) in file order: user
by user, target by target, the positive line first. Validation is carved from the
train records exactly as for imported files (`duet.tasks.recommendation.data.textformat.text_splits`),
so building here and importing the exported files give the same dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from duet.errors import DuetError
from duet.tasks.recommendation.data.importers import Interactions
from duet.tasks.recommendation.data.sampling import NegativeSampler, context
from duet.tasks.recommendation.data.textformat import TextRecords


@dataclass(frozen=True)
class ReferenceProtocol:
    """The published code's data layout; the defaults are the issue's protocol."""

    min_item_interactions: int = 5
    min_user_interactions: int = 10
    first_target: int = 2  # 0-based position of a user's first target
    train_fraction: float = 0.8
    history_len: int = 30
    window_len: int = 10
    train_negatives: int = 1
    test_negatives: int = 4
    seed: int = 42

    def to_json(self) -> dict:
        return {"kind": "reference", **self.__dict__}


def build_reference(inter: Interactions, protocol: ReferenceProtocol = ReferenceProtocol(),
                    ) -> tuple[TextRecords, TextRecords, np.ndarray, np.ndarray]:
    """(train records, test records, item_raw, user_raw) of the reference protocol."""
    p = protocol
    _, i_code, i_count = np.unique(inter.item, return_inverse=True, return_counts=True)
    keep = i_count[i_code] >= p.min_item_interactions
    _, u_code, u_count = np.unique(inter.user[keep], return_inverse=True, return_counts=True)
    rows = np.flatnonzero(keep)[u_count[u_code] >= p.min_user_interactions]
    if not len(rows):
        raise DuetError("no interactions left after the reference protocol's filters")
    user_raw, user = np.unique(inter.user[rows], return_inverse=True)
    item_raw, item = np.unique(inter.item[rows], return_inverse=True)
    item = item + 1  # 0 = padding
    order = np.lexsort((item, inter.timestamp[rows], user))  # user, then time, then item id
    user, item = user[order], item[order]
    num_users, num_items = len(user_raw), len(item_raw) + 1

    count = np.bincount(user, minlength=num_users)
    start = np.cumsum(count) - count
    position = np.arange(len(user)) - start[user]
    target = np.flatnonzero(position >= p.first_target)
    t_user, t_pos = user[target], position[target]
    is_train = t_pos < np.floor(p.train_fraction * count[t_user])

    sampler = NegativeSampler(user, item, num_users, num_items)
    rng = np.random.default_rng(p.seed)
    history = context(item, target, t_pos, p.history_len)
    window = context(item, target, t_pos, p.window_len)
    parts = []
    for sel, k in ((is_train, p.train_negatives), (~is_train, p.test_negatives)):
        idx = np.flatnonzero(sel)
        users = t_user[idx]
        negatives = sampler.sample_with_replacement(users, k, rng)
        candidates = np.concatenate([item[target[idx]][:, None], negatives], axis=1)
        label = np.zeros(candidates.shape, np.int8)
        label[:, 0] = 1
        parts.append(TextRecords(
            user=np.repeat(users, 1 + k).astype(np.int64), item=candidates.ravel().astype(np.int64),
            window=np.repeat(window[idx], 1 + k, axis=0), history=np.repeat(history[idx], 1 + k, axis=0),
            label=label.ravel(),
        ))
    item_raw = np.concatenate([[-1], item_raw]).astype(np.int64)
    return parts[0], parts[1], item_raw, user_raw.astype(np.int64)
