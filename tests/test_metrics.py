"""duet.metrics against scikit-learn, slow per-group loops, and hand-worked cases.

The oracles are scikit-learn (roc_auc_score, ndcg_score, log_loss) and a plain
Python loop written straight from the definitions; expected numbers in the
hand-worked cases are derived in the comments, never copied from our output.
"""

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.special import expit
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from duet import metrics as M

PROPERTY = settings(max_examples=100, deadline=None)
KS = (1, 2, 3, 5, 10)


def D(rank: int) -> float:
    """Discount of a relevant item at 1-based rank: 1/log2(rank + 1)."""
    return 1.0 / math.log2(rank + 1)


# ---------------------------------------------------------------- strategies


@st.composite
def grouped(draw, *, unique: bool = False, max_size: int = 60, n_groups: int = 6):
    """(labels, scores, groups); tie-heavy integer scores unless ``unique``."""
    n = draw(st.integers(1, max_size))
    labels = draw(arrays(np.int64, n, elements=st.integers(0, 1)))
    groups = draw(arrays(np.int64, n, elements=st.integers(0, n_groups - 1)))
    if unique:
        scores = draw(
            arrays(np.float64, n, elements=st.floats(-20, 20, allow_subnormal=False), unique=True)
        )
    elif draw(st.booleans()):
        scores = draw(arrays(np.float64, n, elements=st.integers(-3, 3).map(float)))
    else:
        scores = draw(arrays(np.float64, n, elements=st.floats(-20, 20, allow_subnormal=False)))
    return labels, scores, groups


def slow_ranking(labels, scores, k: int) -> tuple[float, float, float]:
    """(ndcg@k, hit@k, mrr@k) of one group with a positive, from the definitions.

    Sorting on (-score, label) puts negatives ahead of positives among equal
    scores: the pessimistic tie rule.
    """
    ranked = [
        lab for _, lab in sorted(zip(scores, labels, strict=True), key=lambda p: (-p[0], p[1]))
    ]
    dcg = sum(D(r) for r, lab in enumerate(ranked[:k], start=1) if lab == 1)
    idcg = sum(D(r) for r in range(1, min(sum(ranked), k) + 1))
    first = next(r for r, lab in enumerate(ranked, start=1) if lab == 1)
    return dcg / idcg, float(first <= k), (1.0 / first if first <= k else 0.0)


def slow_metrics(labels, scores, groups, ks) -> dict[str, float]:
    """compute_metrics by a per-group loop over scikit-learn and slow_ranking."""
    aucs, sizes, ranking = [], [], {f"{m}@{k}": [] for k in ks for m in ("ndcg", "hit", "mrr")}
    for gid in np.unique(groups):
        y, s = labels[groups == gid], scores[groups == gid]
        if 0 < y.sum() < len(y):
            aucs.append(roc_auc_score(y, s))
            sizes.append(len(y))
        if y.sum() > 0:
            for k in ks:
                for name, value in zip(("ndcg", "hit", "mrr"), slow_ranking(y, s, k), strict=True):
                    ranking[f"{name}@{k}"].append(value)
    nan = float("nan")
    both = 0 < labels.sum() < len(labels)
    out = {
        "auc": roc_auc_score(labels, scores) if both else nan,
        "uauc": float(np.mean(aucs)) if aucs else nan,
        "gauc": float(np.average(aucs, weights=sizes)) if aucs else nan,
        # -log sigmoid(+-z), not sklearn's log_loss: 1 - sigmoid(z) cancels badly for
        # z near 20 (test_logloss_matches_sklearn keeps to |z| <= 15 for that reason).
        "logloss": float(np.mean(-np.log(expit(np.where(labels == 1, scores, -scores))))),
        "n_records": len(labels),
        "n_groups_auc": len(aucs),
    }
    out.update({key: float(np.mean(v)) if v else nan for key, v in ranking.items()})
    return out


def assert_metrics_close(got: dict[str, float], want: dict[str, float], tol: float = 1e-9):
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=tol, nan_ok=True), key


# ---------------------------------------------------------------- hand-worked cases

# One group, ranked by score: 0.9 (neg) r1, 0.8 (pos) r2, 0.7 (neg) r3, 0.1 (pos) r4.
HAND_Y = np.array([0, 1, 0, 1])
HAND_S = np.array([0.9, 0.8, 0.7, 0.1])


def test_hand_worked_auc():
    # Positive/negative pairs: (0.8, 0.9) lost, (0.8, 0.7) won, (0.1, 0.9) lost,
    # (0.1, 0.7) lost -> 1 won of 4 -> AUC = 1/4.
    assert M.auc(HAND_Y, HAND_S) == pytest.approx(0.25)


def test_hand_worked_ranking():
    # Positives sit at ranks 2 and 4; IDCG puts them at ranks 1 and 2.
    # ndcg@1: nothing relevant at rank 1 -> 0.
    # ndcg@2: D(2) / (D(1) + D(2)) = 0.6309 / 1.6309 = 0.3869.
    # ndcg@4: (D(2) + D(4)) / (D(1) + D(2)) = (0.6309 + 0.4307) / 1.6309 = 0.6509.
    # hit: first positive at rank 2 -> hit@1 = 0, hit@2 = 1; mrr@1 = 0, mrr@2 = mrr@4 = 1/2.
    got = M.ranking_metrics(HAND_Y, HAND_S, np.zeros(4, dtype=int), ks=(1, 2, 4))
    assert got["ndcg@1"] == 0.0
    assert got["ndcg@2"] == pytest.approx(D(2) / (D(1) + D(2)))
    assert got["ndcg@2"] == pytest.approx(0.38685, abs=1e-5)
    assert got["ndcg@4"] == pytest.approx((D(2) + D(4)) / (D(1) + D(2)))
    assert got["ndcg@4"] == pytest.approx(0.65093, abs=1e-5)
    assert (got["hit@1"], got["hit@2"], got["hit@4"]) == (0.0, 1.0, 1.0)
    assert (got["mrr@1"], got["mrr@2"], got["mrr@4"]) == (0.0, 0.5, 0.5)


def test_hand_worked_tie():
    # Scores [2, 2, 1], labels [1, 0, 0]: the positive ties with a negative at the top.
    # AUC: the tied pair counts 1/2, the pair against score 1 is won -> (1/2 + 1) / 2 = 3/4.
    # Ranking, pessimistic: the tied negative goes first, the positive is rank 2
    # (even though it comes first in the input) -> ndcg@1 = hit@1 = mrr@1 = 0,
    # ndcg@2 = D(2) / D(1) = 0.6309, mrr@2 = 1/2.
    y, s, g = np.array([1, 0, 0]), np.array([2.0, 2.0, 1.0]), np.zeros(3, dtype=int)
    assert M.auc(y, s) == pytest.approx(0.75)
    assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s))
    got = M.ranking_metrics(y, s, g, ks=(1, 2))
    assert (got["ndcg@1"], got["hit@1"], got["mrr@1"]) == (0.0, 0.0, 0.0)
    assert got["ndcg@2"] == pytest.approx(D(2))
    assert (got["hit@2"], got["mrr@2"]) == (1.0, 0.5)


def test_uauc_and_gauc_weight_groups_differently():
    # Group 42: the hand-worked group above, AUC 1/4, 4 records.
    # Group 7: scores [0.3, 0.6], labels [0, 1] -> the positive wins, AUC 1, 2 records.
    # Group 1000: only negatives -> no AUC, left out of uauc and gauc.
    # uauc = (1/4 + 1) / 2 = 0.625; gauc = (4 * 1/4 + 2 * 1) / (4 + 2) = 3/6 = 0.5.
    # Records are interleaved on purpose: groups need not be contiguous.
    labels = np.array([0, 0, 1, 0, 0, 1, 0, 0, 1])
    scores = np.array([0.9, 0.3, 0.8, 0.4, 0.7, 0.6, 0.2, 0.1, 0.1])
    groups = np.array([42, 7, 42, 1000, 42, 7, 1000, 1000, 42])
    ids, aucs, sizes = M.per_group_auc(labels, scores, groups)
    assert ids.tolist() == [7, 42]
    assert aucs.tolist() == pytest.approx([1.0, 0.25])
    assert sizes.tolist() == [2, 4]
    assert M.uauc(labels, scores, groups) == pytest.approx(0.625)
    assert M.gauc(labels, scores, groups) == pytest.approx(0.5)

    got = M.compute_metrics(labels, scores, groups, ks=(2,))
    assert (got["uauc"], got["gauc"]) == (pytest.approx(0.625), pytest.approx(0.5))
    assert (got["n_records"], got["n_groups_auc"]) == (9, 2)
    # Ranking skips group 1000 (no positive); group 7 ranks its positive first (ndcg 1).
    # ndcg@2 = (0.3869 + 1) / 2, hit@2 = 1, mrr@2 = (1/2 + 1) / 2 = 0.75.
    assert got["ndcg@2"] == pytest.approx((D(2) / (D(1) + D(2)) + 1.0) / 2)
    assert (got["hit@2"], got["mrr@2"]) == (1.0, 0.75)
    assert got["auc"] == pytest.approx(roc_auc_score(labels, scores))


def test_constant_scores_get_no_credit_from_ties():
    # Every candidate scores 0. Pessimistic ties put all negatives first, so
    #   group 0: 4 negatives + 1 positive   -> positive at rank 5
    #   group 1: 11 negatives + 1 positive  -> positive at rank 12
    #   group 2: 3 positives                -> ranks 1, 2, 3 (nothing to lose to)
    # hit@1 = (0 + 0 + 1) / 3 = 1/3; hit@5 = (1 + 0 + 1) / 3 = 2/3; hit@12 = 1.
    # mrr@10 = (1/5 + 0 + 1) / 3 = 0.4.
    # ndcg@5 = (D(5) / D(1) + 0 + 1) / 3 = (0.3869 + 1) / 3.
    # AUC: all pairs tied -> 1/2 in groups 0 and 1; group 2 has no negative.
    groups = np.repeat([0, 1, 2], [5, 12, 3])
    labels = np.concatenate([[0, 0, 0, 0, 1], [1] + [0] * 11, [1, 1, 1]])
    scores = np.zeros(20)
    got = M.compute_metrics(labels, scores, groups, ks=(1, 5, 10, 12))
    assert got["hit@1"] == pytest.approx(1 / 3)
    assert got["hit@5"] == pytest.approx(2 / 3)
    assert got["hit@12"] == 1.0
    assert got["mrr@10"] == pytest.approx(0.4)
    assert got["ndcg@5"] == pytest.approx((D(5) + 1.0) / 3)
    assert (got["auc"], got["uauc"], got["gauc"], got["n_groups_auc"]) == (0.5, 0.5, 0.5, 2)


def test_logloss_hand_worked_and_stable():
    # sigmoid(0) = 1/2 -> each record costs log 2.
    assert M.logloss([0, 1], [0.0, 0.0]) == pytest.approx(math.log(2))
    # sigmoid(ln 3) = 3/4: a positive costs -log(3/4), a negative -log(1/4).
    assert M.logloss([1, 0], [math.log(3)] * 2) == pytest.approx(
        (math.log(4 / 3) + math.log(4)) / 2
    )
    # A confident mistake at logit 1000 costs 1000 (softplus), not inf or a clipped value;
    # a confident hit costs exp(-1000) ~ 0.
    assert M.logloss([1, 0], [-1000.0, 1000.0]) == pytest.approx(1000.0)
    assert M.logloss([1, 0], [1000.0, -1000.0]) == 0.0


def test_undefined_metrics_are_nan():
    got = M.compute_metrics([0, 0, 0], [0.1, 0.2, 0.3], [1, 1, 2], ks=(1,))
    assert math.isnan(got["auc"]) and math.isnan(got["uauc"]) and math.isnan(got["gauc"])
    assert math.isnan(got["ndcg@1"]) and math.isnan(got["hit@1"]) and math.isnan(got["mrr@1"])
    assert got["n_groups_auc"] == 0
    assert M.per_group_auc([1, 1], [0.1, 0.2], [1, 1])[0].size == 0


def test_compute_metrics_keys():
    got = M.compute_metrics([0, 1], [0.0, 1.0], [0, 0], ks=(5, 20))
    assert list(got) == [
        "auc", "uauc", "gauc", "logloss",
        "ndcg@5", "hit@5", "mrr@5", "ndcg@20", "hit@20", "mrr@20",
        "n_records", "n_groups_auc",
    ]  # fmt: skip


# ---------------------------------------------------------------- against scikit-learn


@PROPERTY
@given(grouped(max_size=80))
def test_auc_matches_sklearn(data):
    labels, scores, _ = data
    if 0 < labels.sum() < len(labels):
        assert M.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    else:
        assert math.isnan(M.auc(labels, scores))


@PROPERTY
@given(grouped())
def test_per_group_auc_matches_sklearn_loop(data):
    labels, scores, groups = data
    ids, aucs, sizes = M.per_group_auc(labels, scores, groups)
    want_ids = [g for g in np.unique(groups) if 0 < labels[groups == g].sum() < (groups == g).sum()]
    assert ids.tolist() == want_ids
    want = [roc_auc_score(labels[groups == g], scores[groups == g]) for g in want_ids]
    assert aucs.tolist() == pytest.approx(want, abs=1e-12)
    assert sizes.tolist() == [int((groups == g).sum()) for g in want_ids]
    if want:
        assert M.uauc(labels, scores, groups) == pytest.approx(np.mean(want), abs=1e-12)
        weights = [(groups == g).sum() for g in want_ids]
        assert M.gauc(labels, scores, groups) == pytest.approx(
            np.average(want, weights=weights), abs=1e-12
        )


@PROPERTY
@given(grouped(unique=True), st.sampled_from(KS))
def test_ndcg_matches_sklearn_without_ties(data, k):
    labels, scores, groups = data
    want = []
    for g in np.unique(groups):
        y, s = labels[groups == g], scores[groups == g]
        if y.sum() == 0:
            continue  # no positive: skipped by definition
        # sklearn refuses a one-document list; its only item is the positive at rank 1.
        want.append(ndcg_score([y], [s], k=k) if len(y) > 1 else 1.0)
    got = M.ranking_metrics(labels, scores, groups, ks=(k,))[f"ndcg@{k}"]
    if want:
        assert got == pytest.approx(np.mean(want), abs=1e-12)
    else:
        assert math.isnan(got)


@PROPERTY
@given(arrays(np.float64, st.integers(1, 80), elements=st.floats(-15, 15)), st.data())
def test_logloss_matches_sklearn(logits, data):
    # |logit| <= 15 keeps sklearn's probability route free of clipping and cancellation.
    labels = data.draw(arrays(np.int64, len(logits), elements=st.integers(0, 1)))
    want = log_loss(labels, expit(logits), labels=[0, 1])
    assert M.logloss(labels, logits) == pytest.approx(want, rel=1e-9, abs=1e-12)


@PROPERTY
@given(grouped())
def test_compute_metrics_matches_slow_loop_with_ties(data):
    labels, scores, groups = data
    assert_metrics_close(
        M.compute_metrics(labels, scores, groups, ks=KS), slow_metrics(labels, scores, groups, KS)
    )


def test_vectorised_matches_loop_on_5k_records():
    rng = np.random.default_rng(0)
    n = 5000
    groups = rng.integers(0, 100, n) * 37 + 5  # sparse, unordered ids
    labels = (rng.random(n) < 0.2).astype(int)
    scores = np.round(rng.normal(size=n) + labels, 1)  # one decimal: plenty of ties
    labels[groups == groups[0]] = 0  # at least one group with no positive
    ks = (1, 5, 10, 50)
    got = M.compute_metrics(labels, scores, groups, ks=ks)
    assert_metrics_close(got, slow_metrics(labels, scores, groups, ks))
    assert got["n_groups_auc"] < 100


# ---------------------------------------------------------------- invariances

TRANSFORMS = {
    "shift": lambda x: x + 1000.0,
    "negative shift": lambda x: x - 37.25,
    "affine": lambda x: 3.0 * x - 7.0,
    "cube": lambda x: x**3,
    "exp": lambda x: np.exp(x / 8.0),
    "arctan": np.arctan,
}


@PROPERTY
@given(
    grouped(max_size=60),
    arrays(np.float64, 60, elements=st.integers(-200, 200).map(lambda i: i / 4)),
    st.sampled_from(sorted(TRANSFORMS)),
)
def test_metrics_unchanged_by_increasing_transform(data, quarter_scores, name):
    # Scores on a grid of quarters so every transform stays strictly increasing
    # in floating point too (no two distinct scores collapse into a tie).
    labels, _, groups = data
    scores = quarter_scores[: len(labels)]
    moved = TRANSFORMS[name](scores)
    distinct = np.unique(scores)
    assert np.all(np.diff(TRANSFORMS[name](distinct)) > 0)  # guard on the test itself
    before = M.compute_metrics(labels, scores, groups, ks=KS)
    after = M.compute_metrics(labels, moved, groups, ks=KS)
    for key in before:
        if key != "logloss":
            assert after[key] == pytest.approx(before[key], abs=1e-12, nan_ok=True), key


@PROPERTY
@given(grouped(), st.randoms(use_true_random=False))
def test_metrics_do_not_depend_on_record_order(data, rand):
    labels, scores, groups = data
    perm = np.array(rand.sample(range(len(labels)), len(labels)))
    before = M.compute_metrics(labels, scores, groups, ks=KS)
    after = M.compute_metrics(labels[perm], scores[perm], groups[perm], ks=KS)
    assert_metrics_close(after, before, tol=1e-12)


# ---------------------------------------------------------------- validation, dependencies


@pytest.mark.parametrize(
    ("labels", "scores", "groups", "match"),
    [
        ([0, 1], [0.1], [0, 0], "scores has 1 entries"),
        ([0, 1], [0.1, 0.2], [0], "groups has 1 entries"),
        ([0, 2], [0.1, 0.2], [0, 0], "0 or 1"),
        ([0, np.nan], [0.1, 0.2], [0, 0], "0 or 1"),
        (["a", "b"], [0.1, 0.2], [0, 0], "numeric"),
        ([0, 1], [0.1, np.inf], [0, 0], "non-finite"),
        ([0, 1], [np.nan, 0.2], [0, 0], "non-finite"),
        ([0, 1], [0.1, 0.2], [0.5, 1.5], "integer ids"),
        ([], [], [], "empty"),
        ([[0, 1]], [[0.1, 0.2]], [[0, 0]], "1-D"),
    ],
)
def test_bad_inputs_raise(labels, scores, groups, match):
    with pytest.raises(ValueError, match=match):
        M.compute_metrics(labels, scores, groups)


@pytest.mark.parametrize("ks", [(), (0,), (-1,), (2.5,), (True,)])
def test_bad_ks_raise(ks):
    with pytest.raises(ValueError, match="k"):
        M.compute_metrics([0, 1], [0.1, 0.2], [0, 0], ks=ks)


def test_bad_logits_raise():
    with pytest.raises(ValueError, match="logits"):
        M.logloss([0, 1], [0.0, np.inf])


def test_accepts_bool_labels_and_float32_scores():
    labels = np.array([False, True, False, True])
    got = M.compute_metrics(labels, HAND_S.astype(np.float32), np.zeros(4, dtype=np.int32))
    assert got["auc"] == pytest.approx(0.25)


def test_module_imports_neither_torch_nor_scipy():
    # The device runtime imports this module with numpy only.
    code = "import sys, duet.metrics; print(sorted({'torch', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
