"""`--source synthetic-scale --scale S`: an interaction log shaped like MovieLens-small, S times its size.

For measuring how prepare, training, evaluation and generation scale, where no real
log of 10 million interactions is at hand. Built with whole-array numpy operations
(no Python object per row), deterministic for a seed.

What makes it realistic enough to time (and to learn from):

* sizes: 671 S users, ~100,000 S interactions (per-user counts log-normal, at least
  20, mean ~149, as in MovieLens-small), 9,000 S^0.4 items (a catalogue grows slower
  than its audience: 100x gives ~57,000 items);
* popularity: item weights Zipf(`ZIPF`) over a random item order, so a few items
  take a large share of the log;
* sessions: each user's log is a run of sessions (geometric, mean `SESSION_MEAN`
  interactions) a few minutes between clicks, days between sessions; a session
  stays on one topic (one of the user's favourite topics, sometimes any), and its
  items are drawn by popularity within that topic. So a window of recent clicks
  says something about the next one, as in real logs.
"""

from __future__ import annotations

import numpy as np

from duet.errors import DuetError
from duet.tasks.recommendation.data.importers import Interactions

BASE_USERS, BASE_ITEMS, MEAN_PER_USER, MIN_PER_USER = 671, 9_000, 149, 20
ZIPF = 1.0  # item popularity exponent
SESSION_MEAN = 8  # interactions per session
FAVOURITES, STAY = 3, 0.8  # favourite topics per user; chance a session is on one of them
MINUTE, DAY = 60, 86_400


def sizes(scale: float) -> tuple[int, int]:
    """(users, items) at `scale` times MovieLens-small."""
    return max(2, round(BASE_USERS * scale)), max(50, round(BASE_ITEMS * scale**0.4))


def synthetic_log(scale: float, seed: int = 0) -> tuple[Interactions, dict]:
    """The log (raw ids: users 1.., items 1..; timestamps in seconds) and its manifest `source` entry."""
    if not 0 < scale <= 10_000:
        raise DuetError(f"--scale must be in (0, 10000], got {scale}")
    rng = np.random.default_rng(seed)
    num_users, num_items = sizes(scale)
    num_topics = max(4, round(20 * scale**0.5))
    # Per-user counts: log-normal with sigma 0.8 has mean exp(mu + 0.32); shifted by the minimum.
    mu = np.log(MEAN_PER_USER - MIN_PER_USER) - 0.32
    count = MIN_PER_USER + rng.lognormal(mu, 0.8, num_users).astype(np.int64)
    user = np.repeat(np.arange(num_users), count)  # (N,)
    n = len(user)
    start = np.cumsum(count) - count
    first = np.zeros(n, bool)
    first[start] = True

    # Sessions: a new one at each user's first interaction and with probability 1/SESSION_MEAN after.
    new_session = first | (rng.random(n) < 1 / SESSION_MEAN)
    session = np.cumsum(new_session) - 1  # (N,) session index
    session_user = user[new_session]  # (S,)
    topic_weight = 1.0 / np.arange(1, num_topics + 1) ** ZIPF
    topic_weight /= topic_weight.sum()
    favourites = rng.choice(num_topics, (num_users, FAVOURITES), p=topic_weight)
    on_favourite = rng.random(len(session_user)) < STAY
    session_topic = np.where(on_favourite, favourites[session_user, rng.integers(0, FAVOURITES, len(session_user))],
                             rng.choice(num_topics, len(session_user), p=topic_weight))

    # Items: a random topic each and a Zipf weight by a random popularity rank. Sampling by
    # weight within a topic: items sorted by topic, one cumulative weight over all of them,
    # a uniform draw inside the topic's stretch of it, then a binary search.
    item_topic = rng.integers(0, num_topics, num_items)
    item_weight = 1.0 / (rng.permutation(num_items) + 1.0) ** ZIPF
    by_topic = np.argsort(item_topic, kind="stable")
    cumulative = np.cumsum(item_weight[by_topic])
    topic_end = cumulative[np.searchsorted(item_topic[by_topic], np.arange(num_topics), side="right") - 1]
    topic_start = np.concatenate([[0.0], topic_end[:-1]])
    empty = np.bincount(item_topic, minlength=num_topics) == 0
    topic = session_topic[session]  # (N,)
    topic = np.where(empty[topic], item_topic[by_topic[0]], topic)  # a topic without items: any non-empty one
    draw = topic_start[topic] + rng.random(n) * (topic_end[topic] - topic_start[topic])
    item = by_topic[np.minimum(np.searchsorted(cumulative, draw, side="right"), num_items - 1)]

    # Time: minutes between clicks in a session, days between sessions, users starting over a year.
    gap = np.where(new_session, rng.exponential(2 * DAY, n), rng.exponential(3 * MINUTE, n))
    clock = np.cumsum(gap)
    user_start = rng.uniform(0, 365 * DAY, num_users)
    timestamp = (clock - clock[start][user] + user_start[user]).astype(np.int64) + 1_500_000_000

    source = {"kind": "synthetic-scale", "scale": scale, "seed": seed, "rows": int(n), "users": num_users,
              "items": num_items, "topics": num_topics}
    return Interactions(user=user.astype(np.int64) + 1, item=item.astype(np.int64) + 1, timestamp=timestamp), source
