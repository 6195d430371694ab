"""`--source synthetic-shift`: a seeded click model with profile switches and a known optimum."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from duet.config import ProtocolConfig
from duet.errors import DuetError
from duet.tasks.recommendation.data.prepare import prepare_dataset
from duet.tasks.recommendation.data.store import load_dataset, load_vocab
from duet.tasks.recommendation.data.synthetic_shift import ShiftConfig, generate

SMALL = ShiftConfig(users=60, items=150, min_clicks=20, max_clicks=40)


def test_the_generator_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a, truth_a = generate(SMALL)
    b, truth_b = generate(SMALL)
    for field in ("user", "item", "timestamp"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert np.array_equal(truth_a.profile, truth_b.profile) and np.array_equal(truth_a.logits, truth_b.logits)
    other, _ = generate(ShiftConfig(**{**SMALL.__dict__, "seed": 1}))
    assert not np.array_equal(a.item[:200], other.item[:200])
    files = [prepare_dataset(tmp_path / name, "synthetic-shift", shift=SMALL)["files"] for name in ("x", "y")]
    assert files[0] == files[1]


def test_clicks_follow_the_model() -> None:
    """No repeated clicks; profiles switch at about the configured rate."""
    cfg = ShiftConfig(users=200, items=150, min_clicks=30, max_clicks=30, switch_rate=0.1)
    inter, truth = generate(cfg)
    pairs = inter.user * 1000 + inter.item
    assert len(np.unique(pairs)) == len(pairs)
    same_user = inter.user[1:] == inter.user[:-1]
    switches = (truth.profile[1:] != truth.profile[:-1])[same_user].mean()
    assert 0.08 < switches < 0.12


def test_oracle_uauc_is_the_true_models_uauc_on_test(tmp_path: Path) -> None:
    """Recomputed here from the generator's truth: each test event found by its positive
    (a user never clicks an item twice), scored by the true logits, AUC by scikit-learn."""
    manifest = prepare_dataset(tmp_path / "d", "synthetic-shift", shift=SMALL)
    inter, truth = generate(SMALL)
    test = load_dataset(tmp_path / "d", splits=("test",))["test"]
    vocab = load_vocab(tmp_path / "d")
    user_raw, item_raw = vocab["user_raw"][test.user], vocab["item_raw"][test.item]
    row_of = {(int(u), int(i)): n for n, (u, i) in enumerate(zip(inter.user, inter.item, strict=True))}
    positives = test.label == 1
    event_row = np.empty(test.num_events, np.int64)
    event_row[test.event[positives]] = [row_of[(int(u), int(i))] for u, i in
                                        zip(user_raw[positives], item_raw[positives], strict=True)]
    profile = truth.profile[event_row[test.event]]
    scores = truth.logits[profile, item_raw]
    aucs = [roc_auc_score(test.label[test.user == u], scores[test.user == u]) for u in np.unique(test.user)
            if 0 < test.label[test.user == u].sum() < (test.user == u).sum()]
    assert manifest["oracle_uauc"] == pytest.approx(np.mean(aucs), abs=1e-9)
    # The observer sees only clicks, so it cannot beat the oracle; it beats chance by far.
    assert 0.6 < manifest["observer_uauc"] <= manifest["oracle_uauc"]
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["source"]["kind"] == "synthetic-shift"


def test_bad_generator_options_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DuetError, match="--switch-rate"):
        prepare_dataset(tmp_path / "a", "synthetic-shift", shift=ShiftConfig(switch_rate=1.5))
    with pytest.raises(DuetError, match="synthetic-shift"):
        prepare_dataset(tmp_path / "b", "movielens-small", shift=SMALL)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_duet_beats_base_where_the_window_holds_what_the_backbone_lacks(tmp_path: Path) -> None:
    """The backbone reads only the last item, the generator the last 8: within a few epochs
    the generated heads must beat the global model they start from by a clear margin. A
    generator that silently stops learning (unregistered weights, a detached window) fails."""
    from duet.config import GeneratorConfig, ModelConfig, TrainConfig
    from duet.training.evaluation import evaluate_run
    from duet.training.loop import run_config_for, train

    shift = ShiftConfig(users=150, items=150, min_clicks=20, max_clicks=40, seed=3)
    data = tmp_path / "d"
    prepare_dataset(data, "synthetic-shift", shift=shift, protocol=ProtocolConfig(history_len=1, window_len=8))
    model = ModelConfig(embed_dim=16, num_blocks=1, dropout=0.0)
    base = run_config_for(data, model=model, train=TrainConfig(method="base", epochs=4, threads=1, batch_size=256))
    train(base, tmp_path / "base", progress=False)
    duet = run_config_for(data, model=model, generator=GeneratorConfig(dropout=0.1),
                          train=TrainConfig(method="duet", epochs=8, threads=1, batch_size=256, freeze_static=True,
                                            init_run=str(tmp_path / "base")))
    train(duet, tmp_path / "duet", progress=False)
    gain = evaluate_run(tmp_path / "duet", "valid")["uauc"] - evaluate_run(tmp_path / "base", "valid")["uauc"]
    assert gain > 0.02, gain
