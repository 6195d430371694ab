"""`duet compare` end to end on a MovieLens subset: every method, the report and the plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from duet.errors import DuetError
from duet.tasks.recommendation.report.compare import (
    DIFFERENCES,
    METHODS,
    CompareConfig,
    DuetVariant,
    compare,
)

VARIANTS = (DuetVariant(rank=2, dropout=0.5), DuetVariant(freeze_static=True, rank=None, dropout=0.1))


def test_compare_writes_a_complete_report(tiny_dir, tmp_path):
    cfg = CompareConfig(data=str(tiny_dir), backbones=("sasrec",), seeds=2, epochs=1, duet_epochs=1,
                        patience=1, finetune_steps=2, threads=1, num_generators=2, duet_variants=VARIANTS,
                        scratch_epochs=1, full_ranking_positives=50)
    # Seed 1 alone first (as a second process would, --only-seeds 1): the full run reuses it.
    part = compare(cfg, tmp_path, progress=False, only_seeds=(1,))
    assert list(part["runs"]["sasrec"]) == ["seed1"]
    assert json.loads((tmp_path / "compare_config.json").read_text())["seeds"] == 2
    base1 = tmp_path / "runs/sasrec/seed1/base/model.safetensors"
    written = base1.stat().st_mtime_ns
    results = compare(cfg, tmp_path, progress=False)
    assert base1.stat().st_mtime_ns == written
    assert results["runs"]["sasrec"]["seed1"]["base"] == part["runs"]["sasrec"]["seed1"]["base"]
    for seed in ("seed0", "seed1"):
        for method in ("duet-noswa", "duet"):
            entry = results["runs"]["sasrec"][seed][method]
            scores = entry["valid_uauc_per_variant"]
            assert list(scores) == [v.name for v in VARIANTS]
            assert scores[entry["variant"]] == max(scores.values())
            # the score is the run's best validation epoch, as its history recorded it
            history = json.loads((tmp_path / "runs/sasrec" / seed / method / entry["variant"] / "history.json").read_text())
            assert scores[entry["variant"]] == max(h["valid_uauc"] for h in history)
    choice = results["runs"]["sasrec"]["seed0"]["finetune"]["choice"]  # the grid's best on validation, kept
    assert f"{choice['steps']}@{choice['lr']:g}" == max(choice["valid_uauc"], key=choice["valid_uauc"].get)
    summary = results["summary"]["sasrec"]
    assert set(summary) == {*METHODS, "differences"}
    diffs = summary["differences"]
    assert set(diffs) == {f"{a} - {b}" for a, b in DIFFERENCES}
    for name, d in diffs.items():  # the interval is around the mean of the paired per-user differences
        a, b = name.split(" - ")
        users = results["runs"]["sasrec"]["seed0"][a]["user_auc"]
        assert d["seeds"] == 2 and d["users"] == len(users) and d["lo"] <= d["mean"] <= d["hi"]
    seed0 = results["runs"]["sasrec"]["seed0"]
    own = np.mean([seed0["duet"]["user_auc"][u] for u in seed0["duet"]["user_auc"]])
    assert own == pytest.approx(seed0["duet"]["test"]["uauc"], abs=1e-5)
    global_file = tmp_path / "runs/sasrec/seed0/duet" / seed0["duet"]["variant"] / "metrics_test_global.json"
    assert json.loads(global_file.read_text()).items() <= seed0["duet-global"]["test"].items()
    assert seed0["duet-global"]["test"]["uauc"] != seed0["duet"]["test"]["uauc"]
    for method in METHODS:
        for metric in ("auc", "uauc", "ndcg@10", "hit@10", "logloss"):
            per_seed = [results["runs"]["sasrec"][seed][method]["test"][metric] for seed in ("seed0", "seed1")]
            assert summary[method][metric] == pytest.approx({"mean": np.mean(per_seed), "std": np.std(per_seed, ddof=1)})
    assert summary["base"]["uauc"]["std"] > 0  # two seeds, two different base models
    assert summary["duet"]["adapt_ms_per_device"]["mean"] < summary["finetune"]["adapt_ms_per_device"]["mean"]
    events = results["runs"]["sasrec"]["seed0"]["base"]["test"]["n_records"] // 5  # 1 positive + 4 negatives
    for method in METHODS:  # every test event lands in one bin of items seen
        bins = results["runs"]["sasrec"]["seed0"][method]["by_seen"]
        assert sum(b["events"] for b in bins.values()) == events, method
    for name in ("results.md", "results.json", "uauc.png", "adaptation.png", "curves.png", "cold.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    markdown = (tmp_path / "results.md").read_text()
    assert "DUET (PPG+SWA)" in markdown and "fine-tune" in markdown and "±" in markdown
    assert "95% interval" in markdown and "full_ndcg@10" in markdown and "items the device had seen" in markdown
    assert f"**{results['runs']['sasrec']['seed0']['duet']['variant']}**" in markdown
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"]["sasrec"]["base"]["uauc"]["mean"] == summary["base"]["uauc"]["mean"]
    # a second call reuses the finished runs instead of training again
    before = (tmp_path / "runs/sasrec/seed0/base/model.safetensors").stat().st_mtime_ns
    compare(cfg, tmp_path, progress=False)
    assert (tmp_path / "runs/sasrec/seed0/base/model.safetensors").stat().st_mtime_ns == before


def test_variant_names_round_trip_and_reject_typos():
    for variant in (*VARIANTS, DuetVariant()):
        assert DuetVariant.parse(variant.name) == variant
    assert DuetVariant().name == "joint-rank4-dropout0.5"
    with pytest.raises(DuetError, match="joint-rank4"):
        DuetVariant.parse("frozen-rank-4")


def test_variant_selection_uses_validation_and_keeps_the_first_on_ties():
    """The engine scores every variant on validation, tests the best only, and keeps the first of a tie."""
    from duet.comparison.engine import Method, Outcome, Scores, run_seed

    variants = (DuetVariant(rank=1), DuetVariant(rank=2), DuetVariant(rank=3))
    valid = dict(zip((v.name for v in variants), (0.70, 0.75, 0.75), strict=True))
    tested = []
    method = Method("duet", lambda _seed, v: tested.append(v) or Outcome(Scores({})), settings=variants,
                    validate=lambda _seed, v: Scores({"uauc": valid[v.name]}), label=lambda v: v.name)
    outcome = run_seed([method], 0, "uauc")["duet"]
    assert outcome.setting == variants[1] and tested == [variants[1]]
    assert {name: s.metrics["uauc"] for name, s in outcome.tried.items()} == valid


def test_oscillation_on_worked_examples():
    from duet.report.stability import oscillation

    assert oscillation([0.5, 0.6, 0.4, 0.7]) == pytest.approx({"mean_abs_change": 0.6 / 3, "direction_changes": 2})
    assert oscillation([0.1, 0.2, 0.2, 0.3]) == {"mean_abs_change": pytest.approx(0.2 / 3), "direction_changes": 0}
    assert oscillation([0.3, 0.5, 0.5, 0.2])["direction_changes"] == 1  # up, flat, down: one turn
    assert oscillation([0.7]) == {"mean_abs_change": 0.0, "direction_changes": 0}


def test_summary_pairs_each_method_with_the_base_of_its_own_seed():
    from duet.tasks.recommendation.report.compare import summarize

    def entry(uauc: float) -> dict:
        return {"test": {"auc": uauc, "uauc": uauc, "ndcg@10": 0.5, "hit@10": 0.9, "logloss": 0.4}}

    # base differs a lot between seeds, DUET is always 0.002 / 0.004 above it
    seeds = {"seed0": {"base": entry(0.80), "duet": entry(0.802)}, "seed1": {"base": entry(0.90), "duet": entry(0.904)}}
    summary = summarize({"runs": {"sasrec": seeds}})["sasrec"]
    assert summary["duet"]["uauc"]["std"] == pytest.approx(np.std([0.802, 0.904], ddof=1))
    assert summary["duet"]["uauc_minus_base"]["mean"] == pytest.approx(0.003)
    assert summary["duet"]["uauc_minus_base"]["std"] == pytest.approx(np.std([0.002, 0.004], ddof=1))
    assert "uauc_minus_base" not in summary["base"]


def test_compare_on_new_devices_keeps_the_global_model_for_fine_tuning(tmp_path):
    """Cutoff split: test devices have no labels of their own, so fine-tuning is the global
    model and has no cost to report; the coldest bin (1-2 items seen) is filled."""
    import pandas as pd

    from duet.config import ProtocolConfig
    from duet.tasks.recommendation.data.prepare import prepare_dataset

    rng = np.random.default_rng(0)
    rows = [(u, int(i), u * 10 + j * 7) for u in range(40)
            for j, i in enumerate(rng.choice(np.arange(1, 60), size=12, replace=False))]
    pd.DataFrame(rows, columns=["user", "item", "timestamp"]).to_csv(tmp_path / "inter.csv", index=False)
    prepare_dataset(tmp_path / "d", "csv", path=tmp_path / "inter.csv", protocol=ProtocolConfig(
        split="cutoff", min_user_interactions=1, min_item_interactions=1, history_len=8, window_len=4))
    cfg = CompareConfig(data=str(tmp_path / "d"), backbones=("sasrec",), seeds=1, epochs=1, duet_epochs=1,
                        patience=1, finetune_steps=1, threads=1, duet_variants=VARIANTS[:1], scratch=False,
                        full_ranking_positives=20)
    seed0 = compare(cfg, tmp_path / "report", progress=False)["runs"]["sasrec"]["seed0"]
    assert "adapt_ms_per_device" not in seed0["finetune"]
    assert seed0["finetune"]["test"]["uauc"] == pytest.approx(seed0["base"]["test"]["uauc"])
    assert "1-2" in seed0["base"]["by_seen"] and "1-2" in seed0["duet"]["by_seen"]


def test_fine_tuning_settings_are_chosen_on_validation(monkeypatch, tmp_path):
    """Equal care: with a grid, each (steps, lr) is scored on the validation split and the best is used."""
    import duet.tasks.recommendation.finetune as finetune_module
    from duet.tasks.recommendation.report import compare as compare_module

    scored = {(5, 1e-4): 0.70, (10, 1e-3): 0.74, (30, 1e-3): 0.72}
    calls = []

    def fake(cfg, out, progress=True):  # noqa: ARG001
        calls.append((cfg.split, cfg.steps, cfg.lr, cfg.sampled_negatives))
        return {"metrics": {"uauc": scored[(cfg.steps, cfg.lr)]}}

    monkeypatch.setattr(finetune_module, "finetune", fake)
    from duet.comparison.engine import Seed, choose

    def method(cfg):
        timings = compare_module.Timings(tmp_path / "timing.json")
        return compare_module._finetune_method(cfg, lambda _seed, name: tmp_path / name, None, None, timings, False)

    grid = method(compare_module.CompareConfig(data=str(tmp_path), finetune_grid=tuple(scored)))
    tried = {grid.label(s): grid.validate(Seed(0), s).metrics["uauc"] for s in grid.settings}
    assert choose(tried) == "10@0.001" and tried == {"5@0.0001": 0.70, "10@0.001": 0.74, "30@0.001": 0.72}
    assert {c[0] for c in calls} == {"valid"} and {c[3] for c in calls} == {4}  # never test; negatives as base
    none = method(compare_module.CompareConfig(data=str(tmp_path), finetune_grid=None, finetune_steps=7))
    assert none.validate is None and none.settings == ((7, 1e-3),)  # given by hand: nothing to choose
    devices = []
    monkeypatch.setattr(finetune_module, "finetune", lambda cfg, *_, **__: devices.append(cfg.max_devices)
                        or {"metrics": {"uauc": scored[(cfg.steps, cfg.lr)]}})
    few = method(compare_module.CompareConfig(data=str(tmp_path), finetune_grid=tuple(scored),
                                              finetune_choice_devices=300))
    few.validate(Seed(0), (10, 1e-3))
    assert devices == [300]  # the grid scored on the first 300 validation devices (the test pass: every one)


def test_only_seeds_are_checked_against_the_comparison_seeds():
    from duet.tasks.recommendation.commands import parse_seeds

    assert parse_seeds(None, 5) is None
    assert parse_seeds("3,4", 5) == (3, 4)
    for bad in ("5", "x", "", "-1"):
        with pytest.raises(DuetError, match="--only-seeds"):
            parse_seeds(bad, 5)
