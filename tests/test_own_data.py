"""A user's own data as a first-class task: held-out devices, a declared sample (ranges and
categorical codes) that the data, export and the service hold samples to, regression through
compare, export, serve and simulate, the builder checked where the data is written, and scoring
runs on another dataset of the same task.

The task is a table: each sample is two categorical codes (embedded by the static module) and
three numeric columns; each device adds its own offset to the target, which its recent rows
reveal. Runs record this module's builder, which `duet serve` (another process) imports.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_own_task import invoke
from torch import nn
from typer.testing import CliRunner

from duet.cli import app
from duet.errors import DuetError
from duet.tasks.own import Column, OwnTask, compare_with_global, write_dataset

runner = CliRunner()
CODES = (4, 3)  # categories of the two code columns
NUMERIC = 3


class Table(nn.Module):
    """Rows (N, 5): two codes embedded, three numbers -> features (N, 12)."""

    def __init__(self, codes: tuple[int, ...] = CODES) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, 4) for n in codes)
        self.numeric = nn.Linear(NUMERIC, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [e(x[:, i].long()) for i, e in enumerate(self.embeddings)]
        return torch.relu(torch.cat([*parts, self.numeric(x[:, len(self.embeddings):])], dim=1))


def mae(labels: np.ndarray, outputs: np.ndarray) -> float:
    return float(np.abs(outputs.reshape(-1) - labels).mean())


def mse(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs.squeeze(1), y)


def build_task(codes: tuple[int, ...] = CODES) -> OwnTask:
    """The task's builder (recorded in every artifact, called with the recorded `codes`)."""
    return table_task(tuple(codes))


def table_task(codes: tuple[int, ...], declared: tuple[int, ...] | None = None) -> OwnTask:
    """A regression over table rows; `declared` claims other code counts than the embeddings have."""
    columns = (*(Column.code(n) for n in (declared or codes)), *(Column(-10.0, 10.0) for _ in range(NUMERIC)))
    return OwnTask(name="test-table", builder=f"{__name__}:build_task", static=lambda: Table(tuple(codes)),
                   head=lambda: nn.Linear(12, 1), loss_fn=mse, metric=mae, metric_name="mae",
                   higher_is_better=False, columns=columns)


def table(devices: int = 12, per_device: int = 30, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x, y, device, order = [], [], [], []
    for d in range(devices):
        rows = np.column_stack([rng.integers(0, CODES[0], per_device), rng.integers(0, CODES[1], per_device),
                                rng.normal(0, 1, (per_device, NUMERIC))])
        offset = rng.normal(0, 3)
        x.append(rows)
        y.append(rows[:, 0] + rows[:, 2] + offset + rng.normal(0, 0.3, per_device))
        device.append(np.full(per_device, 1000 + d))
        order.append(np.arange(per_device))
    return tuple(np.concatenate(a) for a in (x, y, device, order))


def one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("table")
    x, y, device, order = table()
    write_dataset(tmp / "data", build_task(), x, y.astype(np.float32), device, order, window_len=5, unseen=0.5,
                  seed=3, builder_options={"codes": list(CODES)})
    return tmp


def test_held_out_devices_are_chosen_by_the_seed_and_never_trained_on(data, tmp_path):
    from duet.tasks.fleet.store import SPLIT_CODE, load_fleet

    manifest = json.loads((data / "data" / "manifest.json").read_text())
    unseen = {d["id"]: d["split"] for d in manifest["devices"] if d["kind"] == "unseen"}
    assert len(unseen) == 6 and sorted(unseen.values()) == ["test"] * 3 + ["valid"] * 3
    fleet = load_fleet(data / "data", ("train", "valid", "test"))
    train_devices = set(fleet.device[fleet.split == SPLIT_CODE["train"]].tolist())
    assert train_devices.isdisjoint(unseen) and len(train_devices) == 6
    for d, split in unseen.items():  # an unseen device's whole stream is scored where it was sent
        assert set(fleet.split[fleet.device == d].tolist()) == {SPLIT_CODE[split]}
    assert set(fleet["test"].device.tolist()) >= {d for d, s in unseen.items() if s == "test"}
    x, y, device, order = table()
    other = write_dataset(tmp_path / "other", build_task(), x, y.astype(np.float32), device, order, unseen=0.5,
                          seed=4, builder_options={"codes": list(CODES)})
    assert {d["id"] for d in other["devices"] if d["kind"] == "unseen"} != set(unseen)
    assert manifest["target"] == "value" and manifest["builder_options"] == {"codes": list(CODES)}
    assert manifest["protocol"] == {"unseen": 0.5, "unseen_valid": 0.5, "seed": 3}


def test_a_builder_typo_is_one_line_naming_the_module_and_the_fix(tmp_path):
    x, y, device, order = table(devices=3)
    typo = build_task()
    typo.builder = f"{__name__}:build_tsak"
    with pytest.raises(DuetError, match=r"has no function 'build_tsak' \(did you mean 'build_task'\?\)") as info:
        write_dataset(tmp_path / "a", typo, x, y, device, order)
    assert __name__ in str(info.value) and "\n" not in str(info.value)
    typo.builder = "no_such_module_here:build_task"
    with pytest.raises(DuetError, match="cannot be imported.*PYTHONPATH") as info:
        write_dataset(tmp_path / "b", typo, x, y, device, order)
    assert "\n" not in str(info.value) and not (tmp_path / "b").exists()


def test_the_declared_sample_refuses_codes_out_of_range_in_the_data(tmp_path):
    x, y, device, order = table(devices=3)
    x[7, 1] = CODES[1]  # one past the last code of the second column
    with pytest.raises(DuetError, match=f"x: sample 7, column 1: {CODES[1]} is not a whole number in 0..{CODES[1] - 1}"):
        write_dataset(tmp_path / "a", build_task(), x, y, device, order)
    x[7, 1] = 0.5  # not a code at all
    with pytest.raises(DuetError, match="column 1: 0.5 is not a whole number"):
        write_dataset(tmp_path / "a", build_task(), x, y, device, order)


@pytest.fixture(scope="module")
def compared(data) -> dict:
    """The regression compared with the global model (2 seeds), as `duet compare` would."""
    return compare_with_global(data / "data", data / "report", seeds=2, epochs=3, duet_epochs=2, threads=1,
                               progress=False)


def test_regression_compares_with_lower_is_better_and_both_intervals(compared, data):
    assert compared["metric"] == "mae" and compared["higher_is_better"] is False
    for name in ("base", "duet", "duet-global"):
        assert len(compared["methods"][name]["per_seed"]) == 2 and compared["methods"][name]["mean"] > 0
    for d in compared["differences"].values():
        assert d["paired"]["users"] == 9 and d["seed_level"]["lo"] is not None  # the test devices, seen and unseen
    config = json.loads((data / "report" / "seed0" / "duet" / "config.json").read_text())
    assert config["facts"] == {"sample_shape": [5], "target": "value"} and config["options"] == {}
    assert config["builder_options"] == {"codes": list(CODES)}
    history = json.loads((data / "report" / "seed0" / "base" / "history.json").read_text())
    best = json.loads((data / "report" / "seed0" / "base" / "manifest.json").read_text())["best_epoch"]
    assert history[best]["valid_mae"] == min(h["valid_mae"] for h in history)  # selected on the lowest error
    assert "(lower is better)" in (data / "report" / "results.md").read_text()


@pytest.mark.usefixtures("compared")
def test_regression_exports_serves_and_simulates_like_torch(data, monkeypatch):
    """A float target through the exported bundle, a real `duet serve` (which imports this module's
    builder with the recorded options) and the torch-free device runtime."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    run = data / "report" / "seed0" / "duet"
    invoke("export", "--run", str(run), "--out", str(data / "bundle"))
    manifest = json.loads((data / "bundle" / "manifest.json").read_text())
    assert manifest["sample"]["columns"][0] == {"low": 0, "high": CODES[0] - 1, "integer": True}
    assert manifest["builder_options"] == {"codes": list(CODES)}
    invoke("simulate", "--run", str(run), "--bundle", str(data / "bundle"), "--devices", "4",
           "--out", str(data / "simulation.json"))
    results = json.loads((data / "simulation.json").read_text())
    assert results["agree"] is True and results["sources"].get("service", 0) > 0
    assert results["metrics"]["device"]["mae"] == pytest.approx(results["metrics"]["offline"]["mae"], abs=1e-4)


@pytest.mark.usefixtures("compared")
def test_the_service_schema_refuses_a_code_out_of_range_with_422(data):
    from fastapi.testclient import TestClient

    from duet.cloud import Settings, create_app

    row = [1, 2, 0.5, -0.5, 0.0]
    with TestClient(create_app(Settings(run=data / "report" / "seed0" / "duet"))) as client:
        assert client.post("/v1/parameters", json={"device_id": "a", "samples": [row] * 3}).status_code == 200
        bad = client.post("/v1/parameters", json={"device_id": "a", "samples": [row, [1, CODES[1], 0, 0, 0]]})
        assert bad.status_code == 422
        error = bad.json()["error"]
        assert error["field"] == "samples[1][1]" and str(CODES[1] - 1) in error["message"]
        schema = client.get("/openapi.json").json()
        body = schema["paths"]["/v1/parameters"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["samples"]["items"]["prefixItems"][0] == {
            "maximum": CODES[0] - 1, "minimum": 0, "multipleOf": 1, "type": "number"}


def test_export_checks_the_model_on_the_declared_samples_in_one_line(tmp_path, monkeypatch):
    """A task that declares more codes than its embedding has fails `duet export` in one line (not an
    IndexError from inside the exporter)."""
    monkeypatch.setattr(f"{__name__}.build_task", lambda codes=CODES: _wide(codes))
    x, y, device, order = table(devices=4)
    x[:, 0] = np.minimum(x[:, 0], CODES[0] - 1)
    write_dataset(tmp_path / "data", _wide(CODES), x, y.astype(np.float32), device, order, window_len=3,
                  builder_options={"codes": list(CODES)})
    invoke("train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "base"), "--epochs", "1",
           "--threads", "1", "--no-progress")
    result = runner.invoke(app, ["export", "--run", str(tmp_path / "base"), "--out", str(tmp_path / "bundle")])
    line = one_line(result)
    assert "fails on samples its task declares valid (IndexError" in line and "Column.code" in line
    assert not (tmp_path / "bundle").exists()


def _wide(codes: tuple[int, ...]) -> OwnTask:
    return table_task(tuple(codes), declared=(codes[0] + 6, codes[1]))


def test_undefined_metric_units_are_left_out_of_the_intervals_and_counted():
    """A device whose test period has one class has no AUC: it is left out of every interval (the
    intervals stay numbers) and the report says how many were."""
    from duet.comparison.engine import difference
    from duet.comparison.generic import render

    a = [{"d1": 0.8, "d2": float("nan"), "d3": 0.6}, {"d1": 0.7, "d2": 0.9, "d3": 0.65}]
    b = [{"d1": 0.7, "d2": 0.5, "d3": 0.6}, {"d1": 0.7, "d2": 0.5, "d3": 0.55}]
    d = difference(list(zip(a, b, strict=True)))
    assert d["excluded"] == 1 and d["users"] == 2 and d["mean"] == pytest.approx((0.1 + 0.0 + 0.0 + 0.1) / 4)
    assert np.isfinite([d["lo"], d["hi"], d["seed_level"]["lo"], d["seed_level"]["hi"]]).all()
    assert "excluded" not in difference([(b[0], b[1])])  # nothing undefined: the record is as before
    from types import SimpleNamespace

    from duet.comparison.engine import Outcome, Scores
    from duet.comparison.generic import summarize

    task = SimpleNamespace(name="t", select_metric="auc", unit="device", higher_is_better=True)
    outcomes = [{name: Outcome(Scores({"auc": 0.7}, units)) for name, units in
                 (("base", b[k]), ("duet", a[k]), ("duet-global", b[k]))} for k in range(2)]
    results = summarize(task, "data", outcomes)
    assert [d["excluded"] for d in results["differences"].values()] == [1, 1]
    assert results["methods"]["duet"] == {"mean": 0.7, "std": 0.0, "per_seed": [0.7, 0.7]}
    assert "duet - base: 1 of 3 devices left out of the intervals (auc undefined" in render(results)


@pytest.mark.usefixtures("compared")
def test_runs_score_new_devices_of_another_dataset_of_the_same_task(data, tmp_path):
    """New devices written by the same code (every one unseen, all scored on test) are scored by a
    run trained on the first dataset; a dataset of other facts is refused in one line."""
    x, y, device, order = table(devices=5, seed=9)
    write_dataset(tmp_path / "new", build_task(), x, y.astype(np.float32), device + 50, order, window_len=5,
                  unseen=1.0, unseen_valid=0.0, builder_options={"codes": list(CODES)})
    run = data / "report" / "seed0" / "duet"
    metrics = json.loads(invoke("evaluate", "--run", str(run), "--data", str(tmp_path / "new"), "--json"))
    per_device = json.loads((run / "device_mae_test.json").read_text())
    assert metrics["records"] == 5 * 30 and len(per_device) == 5
    write_dataset(tmp_path / "classes", build_task(), x, (y > 0).astype(np.int64), device, order,
                  builder_options={"codes": list(CODES)})
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--data", str(tmp_path / "classes"), "--json"])
    assert "a dataset of the same task, but its target None is not the run's 'value'" in one_line(result)


def test_a_task_option_of_another_task_is_refused_and_not_recorded(data, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(data / "data"), "--out", str(tmp_path / "r"),
                                 "--sampled-negatives", "3"])
    assert "--sampled-negatives: an option of recommendation datasets" in one_line(result)
    assert not (tmp_path / "r").exists()
    help_text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    panel = help_text.index("Options of recommendation datasets")
    assert "uauc" not in help_text and help_text.index("--sampled-negatives") > panel
