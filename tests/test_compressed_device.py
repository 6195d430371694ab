"""A compressed device model (`duet train --device-history`, `duet compare --device-model`): it reads
only the last N history items, trains, exports and scores on the device runtime, and `duet compare`
reports its rows, differences, gap closed and cost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NUM_ITEMS, L, W, train_export_and_check_tiny, write_tiny_dataset
from typer.testing import CliRunner

from duet.cli import app
from duet.config import ModelConfig
from duet.errors import DuetError
from duet.tasks.recommendation.models.recommender import Recommender, tail_items
from duet.tasks.recommendation.report.compressed import CompressedDevice, gap_closed

N = 3  # the device model's history, of the tiny dataset's L = 8
runner = CliRunner()


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def test_tail_items_on_a_worked_example():
    history = torch.tensor([[1, 2, 3, 0, 0], [1, 2, 3, 4, 5], [7, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    expected = torch.tensor([[1, 2, 3], [3, 4, 5], [7, 0, 0], [0, 0, 0]])
    assert torch.equal(tail_items(history, 3), expected)
    assert torch.equal(tail_items(expected, 3), expected)  # what the device graph is given: unchanged


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "din"])
def test_the_device_model_reads_only_the_last_n_history_items(backbone):
    torch.manual_seed(0)
    model = Recommender(NUM_ITEMS, L, ModelConfig(backbone=backbone, embed_dim=8, device_history=N)).eval()
    assert model.history_len == N  # what the device graph takes
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([N, N + 1, 5, L])
    history = torch.randint(1, NUM_ITEMS, (4, L), generator=gen) * (torch.arange(L) < lengths[:, None])
    items = torch.randint(1, NUM_ITEMS, (12,), generator=gen)
    inverse = torch.arange(12) % 4
    older = history.clone()  # every item before the last N changed
    for row, length in enumerate(lengths.tolist()):
        older[row, : length - N] = (older[row, : length - N] % (NUM_ITEMS - 1)) + 1
    assert not torch.equal(older, history)
    newest = history.clone()  # one of the last N changed
    newest[torch.arange(4), lengths - 1] = (newest[torch.arange(4), lengths - 1] % (NUM_ITEMS - 1)) + 1
    with torch.no_grad():
        scores = model(history, items, inverse)
        assert torch.equal(model(older, items, inverse), scores)
        assert not torch.allclose(model(newest, items, inverse), scores)
        # a whole-history model of the same weights does read the older items
        full = Recommender(NUM_ITEMS, L, ModelConfig(backbone=backbone, embed_dim=8)).eval()
        if backbone != "sasrec":  # SASRec's position table has L rows there, N here
            full.load_state_dict(model.state_dict())
            assert not torch.allclose(full(older, items, inverse), full(history, items, inverse))


def test_runs_from_before_load_with_the_whole_history():
    saved = {"backbone": "sasrec", "embed_dim": 32, "num_blocks": 2, "num_heads": 1, "dropout": 0.2,
             "head_hidden": None, "activation": "tanh", "film": False}  # a config.json from before the option
    assert ModelConfig.model_validate(saved).device_history is None


@pytest.mark.parametrize("builder, facts", [
    ("duet.tasks.images.task:task", {"num_classes": 3, "image_shape": (1, 8, 8)}),
    ("duet.tasks.sensors.task:task", {"num_classes": 3, "sample_shape": (6, 32)}),
])
def test_tasks_without_a_history_refuse_the_option(builder, facts):
    from duet.config import RunConfig
    from duet.errors import ArtifactError
    from duet.task import load_task

    task = load_task(builder)
    config = RunConfig(data="d", data_hash="h", task=task.name, builder=builder, facts=facts, window_len=4,
                       model=ModelConfig(backbone=task.backbones[0], device_history=3))
    with pytest.raises(ArtifactError, match="--device-history: .* no click history"):
        task.build(config)
    task.build(config.model_copy(update={"model": ModelConfig(backbone=task.backbones[0])}))  # without it: builds


def test_train_export_and_score_on_the_device_runtime(tmp_path):
    """`duet train --device-history` (base, then DUET from it), `duet export`: the graph takes N items,
    the generator reads W, and onnxruntime agrees with torch on whole histories and generated heads."""
    from duet.checkpoint import load_run

    model, bundle = train_export_and_check_tiny(tmp_path, ["--device-history", str(N)], (0, 2, N, L))
    config = load_run(tmp_path / "duet")[0]
    assert config.model.device_history == N and config.window_len == W and model.device_model.history_len == N
    assert bundle.inputs[0].shape == (1, N) and bundle.window_len == W


def test_device_cost_measures_the_exported_model(tmp_path):
    from duet.checkpoint import load_run
    from duet.config import TrainConfig
    from duet.tasks.recommendation.data.store import load_dataset
    from duet.tasks.recommendation.report.compressed import device_cost
    from duet.training.loop import run_config_for, train

    data = write_tiny_dataset(tmp_path / "data")
    config = run_config_for(data, model=ModelConfig(embed_dim=8, num_blocks=1, device_history=N),
                            train=TrainConfig(epochs=1, batch_size=256, threads=1))
    train(config, tmp_path / "run", progress=False)
    cost = device_cost(tmp_path / "run", load_dataset(data)["test"], requests=40, warmup=2)
    _, model, _ = load_run(tmp_path / "run")
    assert cost["parameters"] == sum(p.numel() for p in model.parameters())
    assert cost["head_parameters"] == model.param_spec.numel and cost["history_items"] == N
    assert cost["onnx_bytes"] > cost["onnx_weight_bytes"] >= 4 * (cost["parameters"] - cost["head_parameters"])
    assert cost["requests"] == 40 and 0 < cost["score_ms_p50"] <= cost["score_ms_p90"] < 100


def test_gap_closed_on_a_worked_example():
    def seed(base: float, device: float, duet: float, static: float) -> dict:
        return {m: {"test": {"uauc": u}} for m, u in
                (("base", base), ("device", device), ("device-duet", duet), ("device-global", static))}

    gap = gap_closed({"seed0": seed(0.90, 0.80, 0.86, 0.82), "seed1": seed(0.92, 0.88, 0.90, 0.88)})
    assert gap["gap"]["per_seed"] == pytest.approx({"seed0": 0.10, "seed1": 0.04})
    assert gap["device-duet"]["per_seed"] == pytest.approx({"seed0": 0.6, "seed1": 0.5})
    assert gap["device-duet"]["mean"] == pytest.approx(0.55)
    assert gap["device-duet"]["pooled"] == pytest.approx(0.04 / 0.07)
    assert gap["generation"]["per_seed"] == pytest.approx({"seed0": 0.4, "seed1": 0.5})
    assert gap["device-global"]["mean"] == pytest.approx(0.1)
    assert gap_closed({"seed0": {"base": {"test": {"uauc": 0.9}}}}) == {}


@pytest.mark.parametrize("text, message", [
    ("history=five", "not like history=5,dim=16,blocks=1"),
    ("size=3", "not like history=5"),
    ("dim=16,dim=8", "each once"),
    ("history=0", "history: Input should be greater than or equal to 1"),
])
def test_bad_device_model_spellings_are_one_line_errors(tiny_dir, tmp_path, text, message):
    result = runner.invoke(app, ["compare", "--data", str(tiny_dir), "--out", str(tmp_path / "r"),
                                 "--device-model", text])
    assert result.exit_code == 2 and message in one_line(result.stderr), result.output
    assert not (tmp_path / "r").exists()


def test_a_device_history_longer_than_the_dataset_is_refused_in_one_line(tiny_dir, tmp_path):
    result = runner.invoke(app, ["compare", "--data", str(tiny_dir), "--out", str(tmp_path / "r"),
                                 "--device-model", "history=21", "--no-progress"])
    assert result.exit_code == 2 and "history=21 is longer than the dataset's history (L=20)" in \
        one_line(result.stderr)
    assert not (tmp_path / "r").exists()
    result = runner.invoke(app, ["train", "--data", str(tiny_dir), "--out", str(tmp_path / "t"),
                                 "--device-history", "21"])
    assert result.exit_code == 2 and "--device-history 21: longer than the dataset's history (L=20)" in \
        one_line(result.stderr)


def test_device_model_names_round_trip():
    for text in ("history=5", "history=5,dim=16", "dim=16,blocks=1", "history=5,dim=16,blocks=1", "history=5,film=1"):
        assert CompressedDevice.parse(text).name == text
    assert CompressedDevice.parse("history=5,film=1").model("sasrec") == ModelConfig(backbone="sasrec",
                                                                                     device_history=5, film=True)
    assert CompressedDevice.parse("history=5,film=0") == CompressedDevice(history=5)
    with pytest.raises(DuetError, match="film=0 or 1"):
        CompressedDevice.parse("history=5,film=2")
    with pytest.raises(DuetError, match="at least one of history, dim, blocks"):
        CompressedDevice.parse("film=1")  # FiLM alone makes no model smaller
    assert CompressedDevice.parse("dim=16, history=5").model("din") == ModelConfig(backbone="din", embed_dim=16,
                                                                                   device_history=5)
    with pytest.raises(DuetError, match="not like"):
        CompressedDevice.parse("")
    with pytest.raises(ValueError, match="at least one of history, dim, blocks"):
        CompressedDevice()


def test_compare_with_a_device_model_writes_the_device_rows(tmp_path, monkeypatch):
    from duet.tasks.recommendation.data.store import load_dataset
    from duet.tasks.recommendation.report import compare as compare_module
    from duet.tasks.recommendation.report.summary import summary_of_report

    data = write_tiny_dataset(tmp_path / "data")
    test_records = len(load_dataset(data)["test"])
    measured = []

    def fake_cost(run: Path, split) -> dict[str, float]:  # the real one is tested above; exports take seconds
        assert len(split) == test_records  # measured on the test split's requests
        measured.append(run)
        return {"parameters": 100.0 * len(measured), "head_parameters": 10.0, "onnx_bytes": 9e4,
                "onnx_weight_bytes": 400.0, "history_items": 3.0, "score_ms_p50": 0.05, "score_ms_p90": 0.07,
                "requests": 300.0}

    monkeypatch.setattr(compare_module, "device_cost", fake_cost)
    cfg = compare_module.CompareConfig(
        data=str(data), backbones=("sasrec",), seeds=2, epochs=1, duet_epochs=1, patience=1, threads=1,
        num_generators=2, duet_variants=(compare_module.DuetVariant(rank=2), compare_module.DuetVariant(
            freeze_static=True, rank=None)), scratch=False, finetune_grid=None, finetune_steps=1,
        full_ranking_positives=10, device_model=CompressedDevice(history=N, dim=8))
    results = compare_module.compare(cfg, tmp_path / "report", progress=False)
    runs = tmp_path / "report/runs/sasrec"
    for seed in ("seed0", "seed1"):
        entry = results["runs"]["sasrec"][seed]
        device_config = json.loads((runs / seed / "device/config.json").read_text())["model"]
        assert (device_config["device_history"], device_config["embed_dim"]) == (N, 8)
        chosen = runs / seed / "device-duet" / entry["device-duet"]["variant"]
        scores = entry["device-duet"]["valid_uauc_per_variant"]
        assert scores[entry["device-duet"]["variant"]] == max(scores.values())  # chosen on validation
        duet_config = json.loads((chosen / "config.json").read_text())
        assert duet_config["train"]["init_run"] == str(runs / seed / "device")
        assert duet_config["model"]["device_history"] == N
        global_file = json.loads((chosen / "metrics_test_global.json").read_text())
        assert global_file.items() <= entry["device-global"]["test"].items()
        assert json.loads((runs / seed / "base/config.json").read_text())["model"]["device_history"] is None
        assert {"device_cost"} <= set(entry["device"]) and "device_cost" in entry["base"]
    assert sorted(measured) == sorted([runs / s / m for s in ("seed0", "seed1") for m in ("device", "base")]
                                      + [runs / s / "device-duet" / results["runs"]["sasrec"][s]["device-duet"]
                                         ["variant"] for s in ("seed0", "seed1")])
    summary = results["summary"]["sasrec"]
    assert {"device", "device-duet", "device-global"} <= set(summary)
    diffs = summary["differences"]
    for name in ("device-duet - device", "device-duet - device-global", "device-global - device",
                 "base - device", "device-duet - base"):
        d = diffs[name]
        a, b = name.split(" - ")
        per_seed = [results["runs"]["sasrec"][s][a]["test"]["uauc"] - results["runs"]["sasrec"][s][b]["test"]["uauc"]
                    for s in ("seed0", "seed1")]
        assert d["seeds"] == 2 and d["lo"] <= d["mean"] <= d["hi"]
        assert d["seed_level"]["mean"] == pytest.approx(np.mean(per_seed), abs=1e-6)  # users = the run's uauc
        assert d["seed_level"]["lo"] <= d["seed_level"]["mean"] <= d["seed_level"]["hi"]
    gap = summary["gap_closed"]
    assert set(gap["device-duet"]["per_seed"]) == {"seed0", "seed1"}
    assert summary["device"]["device_cost"]["score_ms_p50"]["mean"] == pytest.approx(0.05)
    markdown = (tmp_path / "report/results.md").read_text()
    assert "device model + DUET" in markdown and "Compressed device model (`--device-model history=3,dim=8`)" in \
        markdown and "ms per request" in markdown and "seed-level 95%" in markdown
    text = summary_of_report(tmp_path / "report")
    assert max(len(line) for line in text.splitlines()) <= 80
    d = diffs["device-duet - device-global"]
    assert f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" in text and "device model + DUET" in text
    assert "gap" in text and "ms per" in text.replace("\n", " ")


def test_a_report_started_before_the_option_is_still_extended(tmp_path):
    """compare_config.json from before --device-model (no such key) reads as the same configuration."""
    from duet.tasks.recommendation.report.compare import CompareConfig, _saved_config

    cfg = CompareConfig(data="d")
    saved = cfg.model_dump(mode="json")
    del saved["device_model"]
    (tmp_path / "compare_config.json").write_text(json.dumps(saved))
    assert _saved_config(tmp_path / "compare_config.json") == cfg
    assert _saved_config(tmp_path / "compare_config.json") != cfg.model_copy(
        update={"device_model": CompressedDevice(history=5)})
