"""`--source synthetic-shift`: users whose taste switches between latent profiles, with
a known click model, so the best achievable test uauc is known.

Why: on MovieLens the window is the tail of the history the backbone already reads,
and nobody knows how much better any model could do. Here every click is drawn from
a known model, so the uauc of the true click probabilities on the test records (the
`oracle_uauc` of the manifest) is the ceiling, and a method's share of the
base-to-oracle gap says how much of what the window tells it learns.

The click model, all of it seeded:

* P profiles z_p ~ N(0, I_k) and items v_i ~ N(0, I_k) with a popularity bias b_i;
  under profile p item i has the logit `sharpness * z_p . v_i / sqrt(k) + b_i`.
* Each user starts in a uniform random profile; before every click after the first
  it switches, with probability `switch_rate`, to another profile drawn uniformly.
  So most of a long history shows older profiles, the recent window the current one.
* The user clicks an item drawn by softmax over the logits of the items it has not
  clicked yet (no repeats: a model cannot score a candidate up for having been seen,
  which the true model would not).

Timestamps are the click index; the rest (k-core, splits, negatives) is the
ordinary protocol of `duet.tasks.recommendation.data.prepare`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from duet.errors import DuetError
from duet.tasks.recommendation.data.importers import Interactions


@dataclass(frozen=True)
class ShiftConfig:
    """Generator settings; the defaults leave the global model a clear gap to the oracle."""

    users: int = 500
    items: int = 400
    profiles: int = 8
    switch_rate: float = 0.05  # mean stay in a profile: 20 clicks, so L=50 spans 2-3 profiles
    min_clicks: int = 30
    max_clicks: int = 80
    dim: int = 8
    # Distinct profiles: a few clicks tell which one is current (an observer who knows
    # the model then comes within 0.005 uauc of the oracle), so the gap is learnable.
    sharpness: float = 8.0
    popularity_std: float = 0.5
    seed: int = 0

    def check(self) -> None:
        if self.users < 1 or self.profiles < 2 or self.dim < 1:
            raise DuetError(f"synthetic-shift needs --users >= 1 and --profiles >= 2, got {self.users} and {self.profiles}")
        if not 0.0 <= self.switch_rate <= 1.0:
            raise DuetError(f"--switch-rate must be in [0, 1], got {self.switch_rate}")
        if not 3 <= self.min_clicks <= self.max_clicks:
            raise DuetError(f"clicks per user must satisfy 3 <= min <= max, got {self.min_clicks}..{self.max_clicks}")
        if self.items < self.max_clicks + 5:
            raise DuetError(f"--items must exceed the longest user sequence ({self.max_clicks}) by 5 "
                            f"(no repeated clicks, and negatives must remain), got {self.items}")


@dataclass
class ShiftTruth:
    """What generated the clicks: item logits per profile, the profile behind each click,
    and what an observer who knows the model but not the profile would predict."""

    logits: np.ndarray  # (P, items + 1) float64; column = raw item id (column 0 unused)
    profile: np.ndarray  # (N,) int64: profile of interaction row n when it was clicked
    # (N, P): log P(profile p, and item i is drawn from p's softmax over the user's
    # unclicked items) = log belief_p - log Z_p, from the clicks before row n only.
    observer: np.ndarray

    def click_logits(self, profile: np.ndarray, raw_item: np.ndarray) -> np.ndarray:
        """The true logit of each (profile, raw item) pair: ranking a user's candidates by
        it is ranking them by the true click probability (the softmax shares one normaliser)."""
        return self.logits[profile, raw_item]

    def observer_logits(self, row: np.ndarray, raw_item: np.ndarray) -> np.ndarray:
        """log P(next click = item | the user's earlier clicks): the Bayes filter over profiles.
        No model that sees only clicks can rank better on average; the oracle also sees the profile."""
        return np.logaddexp.reduce(self.observer[row] + self.logits[:, raw_item].T, axis=1)


def generate(cfg: ShiftConfig) -> tuple[Interactions, ShiftTruth]:
    """Interactions (raw item ids 1..items, users 0..users-1, time = click index) and the truth."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    z = rng.normal(size=(cfg.profiles, cfg.dim))
    v = rng.normal(size=(cfg.items, cfg.dim))
    bias = rng.normal(scale=cfg.popularity_std, size=cfg.items)
    logits = cfg.sharpness * z @ v.T / np.sqrt(cfg.dim) + bias  # (P, I)
    lengths = rng.integers(cfg.min_clicks, cfg.max_clicks + 1, cfg.users)
    profile = rng.integers(0, cfg.profiles, cfg.users)
    clicked = np.zeros((cfg.users, cfg.items), bool)
    users, items, times, profiles = [], [], [], []
    for t in range(int(lengths.max())):
        if t > 0:
            switch = rng.random(cfg.users) < cfg.switch_rate
            # another profile, uniformly: add 1..P-1 modulo P
            profile = np.where(switch, (profile + rng.integers(1, cfg.profiles, cfg.users)) % cfg.profiles, profile)
        gumbel = rng.gumbel(size=(cfg.users, cfg.items))  # argmax of logits + Gumbel = a softmax draw
        choice = np.where(clicked, -np.inf, logits[profile] + gumbel).argmax(1)
        active = np.flatnonzero(t < lengths)
        clicked[active, choice[active]] = True
        users.append(active)
        items.append(choice[active] + 1)
        times.append(np.full(len(active), t))
        profiles.append(profile[active])
    order = np.lexsort((np.concatenate(times), np.concatenate(users)))  # rows by user, then time
    inter = Interactions(np.concatenate(users)[order].astype(np.int64), np.concatenate(items)[order].astype(np.int64),
                         np.concatenate(times)[order].astype(np.int64))
    table = np.concatenate([np.full((cfg.profiles, 1), -np.inf), logits], axis=1)
    return inter, ShiftTruth(logits=table, profile=np.concatenate(profiles)[order].astype(np.int64),
                             observer=_filter(inter, logits, cfg.switch_rate))


def _filter(inter: Interactions, logits: np.ndarray, switch_rate: float) -> np.ndarray:
    """(N, P) predictive log weights of the forward (HMM) filter, one user at a time."""
    n_profiles = len(logits)
    stay = np.full((n_profiles, n_profiles), switch_rate / (n_profiles - 1))
    np.fill_diagonal(stay, 1.0 - switch_rate)
    out = np.empty((len(inter), n_profiles))
    starts = np.flatnonzero(np.r_[True, inter.user[1:] != inter.user[:-1]])  # rows are grouped by user
    for lo, hi in zip(starts, np.r_[starts[1:], len(inter)], strict=True):
        belief = np.full(n_profiles, 1.0 / n_profiles)
        free = np.ones(logits.shape[1], bool)
        for k, row in enumerate(range(lo, hi)):
            if k:
                belief = belief @ stay
            log_z = np.logaddexp.reduce(logits[:, free], axis=1)  # (P,) softmax over unclicked items
            out[row] = np.log(belief) - log_z
            item = inter.item[row] - 1
            belief = belief * np.exp(logits[:, item] - log_z)
            belief /= belief.sum()
            free[item] = False
    return out


def source_info(cfg: ShiftConfig) -> dict:
    return {"kind": "synthetic-shift", **asdict(cfg)}
