"""A brand-new task defined in this file (nothing of it in src/) goes through every generic part:
prepare (arrays) -> train (base, DUET) -> evaluate -> export -> serve -> device runtime -> simulate.

Its head is not a linear stack: a 1-D convolution, a per-channel scale and a linear layer,
so the generator is built from a ParamSpec of any named tensors. Runs record this module's
builder, which the service (another process) imports: this folder is put on its PYTHONPATH.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from duet.cli import app
from duet.tasks.own import OwnTask, write_dataset

runner = CliRunner()
CHANNELS, LENGTH, CLASSES = 3, 12, 3


class Scale(nn.Module):
    """A per-channel scale: a 1-D tensor the cloud generates."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None]


class Static(nn.Module):
    """Readings (N, 3, 12) -> features (N, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(CHANNELS, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(4),
                                 nn.Flatten(), nn.Linear(16, 16), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def head() -> nn.Module:
    """features (N, 16) -> logits (N, 3) through a convolution, a per-channel scale and a linear layer."""
    return nn.Sequential(nn.Unflatten(1, (4, 4)), nn.Conv1d(4, 4, 3, padding=1), Scale(4), nn.Flatten(),
                         nn.Linear(16, CLASSES))


def accuracy(labels: np.ndarray, outputs: np.ndarray) -> float:
    return float((outputs.argmax(1) == labels).mean())


def build_task() -> OwnTask:
    return OwnTask(name="test-readings", builder=f"{__name__}:build_task", static=Static, head=head,
                   loss_fn=F.cross_entropy, metric=accuracy, metric_name="accuracy", film_layers=FILM_LAYERS)


FILM_LAYERS = ("net.0", "net.4")  # with --film: the convolution's 4 channels and the linear layer's 16


def fleet(devices: int = 12, per_device: int = 40, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Each device adds its own offset to every reading (what its window can reveal)."""
    rng = np.random.default_rng(seed)
    pattern = rng.normal(0, 1, (CLASSES, CHANNELS, LENGTH))
    x, y, device, order = [], [], [], []
    for d in range(devices):
        labels = rng.integers(0, CLASSES, per_device)
        x.append(pattern[labels] + rng.normal(0, 0.5, (per_device, CHANNELS, LENGTH)) + rng.normal(0, 1, (CHANNELS, 1)))
        y.append(labels)
        device.append(np.full(per_device, 100 + d))
        order.append(rng.permutation(per_device))
    return tuple(np.concatenate(a) for a in (x, y, device, order))


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The dataset and base + DUET runs of the new task, trained through `duet train`."""
    tmp = tmp_path_factory.mktemp("own")
    write_dataset(tmp / "data", build_task(), *fleet(), window_len=6)
    common = ["--data", str(tmp / "data"), "--threads", "1", "--no-progress", "--epochs", "3"]
    invoke("train", *common, "--out", str(tmp / "base"))
    invoke("train", *common, "--out", str(tmp / "duet"), "--method", "duet", "--init", str(tmp / "base"),
           "--num-generators", "2")
    return tmp


def test_the_dataset_and_runs_record_the_task_and_its_builder(runs):
    builder = f"{__name__}:build_task"
    manifest = json.loads((runs / "data" / "manifest.json").read_text())
    config = json.loads((runs / "duet" / "config.json").read_text())
    assert (manifest["task"], manifest["builder"]) == ("test-readings", builder)
    assert (config["task"], config["builder"], config["facts"]) == ("test-readings", builder,
                                                                      {"sample_shape": [CHANNELS, LENGTH]})


def test_the_generator_writes_every_tensor_of_the_head(runs):
    from duet.checkpoint import load_run

    _, model, _ = load_run(runs / "duet")
    spec = model.device_model.param_spec
    assert spec.names == ["1.weight", "1.bias", "2.weight", "4.weight", "4.bias"]
    x = torch.zeros(2, 6, CHANNELS, LENGTH)
    x[1] += 3.0  # another device's window
    with torch.no_grad():
        params = model.generate(x)
    for name, shape in spec.entries:
        assert params[name].shape == (2, *shape)
        assert not torch.allclose(params[name][0], params[name][1]), name  # the heads depend on the window


def test_evaluate_reports_the_task_metric_per_device(runs):
    out = json.loads(invoke("evaluate", "--run", str(runs / "duet"), "--split", "test", "--json"))
    per_device = json.loads((runs / "duet" / "device_accuracy_test.json").read_text())
    assert 0.0 <= out["accuracy"] <= 1.0 and len(per_device) == 12
    glob = json.loads(invoke("evaluate", "--run", str(runs / "duet"), "--split", "test", "--head", "global", "--json"))
    assert set(glob) == set(out)


def test_export_serve_device_and_simulate_agree_with_torch(runs, monkeypatch):
    """The exported bundle scores like torch; `duet simulate` replays test devices through a real
    `duet serve` process (which imports this file's builder) and the torch-free runtime."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    invoke("export", "--run", str(runs / "duet"), "--out", str(runs / "bundle"))
    manifest = json.loads((runs / "bundle" / "manifest.json").read_text())
    assert (manifest["task"], manifest["builder"]) == ("test-readings", f"{__name__}:build_task")
    invoke("simulate", "--run", str(runs / "duet"), "--bundle", str(runs / "bundle"), "--devices", "4",
           "--out", str(runs / "simulation.json"))
    results = json.loads((runs / "simulation.json").read_text())
    assert results["task"] == "test-readings" and results["agree"] is True
    assert results["metrics"]["device"]["accuracy"] == pytest.approx(results["metrics"]["offline"]["accuracy"])
    assert results["sources"].get("service", 0) > 0


def test_film_layers_of_the_users_static_module_are_generated_and_reach_the_device(runs, monkeypatch):
    """With --film, the named layers' per-channel scale and shift join the head's tensors: theta_g
    starts as the identity, the generator writes them per window, and the exported device graph
    takes them as inputs (a simulated fleet through `duet serve` agrees with torch)."""
    from duet.checkpoint import load_run

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    common = ["--data", str(runs / "data"), "--threads", "1", "--no-progress", "--epochs", "2", "--film"]
    invoke("train", *common, "--out", str(runs / "film-base"))
    invoke("train", *common, "--out", str(runs / "film-duet"), "--method", "duet", "--init", str(runs / "film-base"))
    _, model, _ = load_run(runs / "film-duet")
    spec = dict(model.device_model.param_spec.entries)
    assert {k: v for k, v in spec.items() if k.startswith("film.")} == {
        "film.net.0.scale": (4,), "film.net.0.shift": (4,), "film.net.4.scale": (16,), "film.net.4.shift": (16,)}
    plain = load_run(runs / "base")[1]  # the same static module without FiLM, for the identity check
    x = torch.randn(5, CHANNELS, LENGTH)
    fresh = build_task().build(load_run(runs / "film-base")[0])
    fresh.backbone.load_state_dict(plain.backbone.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.features(x), plain.features(x))  # theta_g's FiLM is the identity
        window = torch.zeros(2, 6, CHANNELS, LENGTH)
        window[1] += 3.0
        params = model.generate(window)
    assert not torch.allclose(params["film.net.0.scale"][0], params["film.net.0.scale"][1])
    invoke("export", "--run", str(runs / "film-duet"), "--out", str(runs / "film-bundle"))
    import onnxruntime as ort

    session = ort.InferenceSession(str(runs / "film-bundle" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    assert {"film_net_0_scale", "film_net_4_shift"} <= inputs
    invoke("simulate", "--run", str(runs / "film-duet"), "--bundle", str(runs / "film-bundle"), "--devices", "3",
           "--out", str(runs / "film-simulation.json"))
    assert json.loads((runs / "film-simulation.json").read_text())["agree"] is True


def test_a_command_that_does_not_apply_says_so_in_one_line(runs):
    result = runner.invoke(app, ["finetune", "--data", str(runs / "data"), "--base", str(runs / "base")])
    assert result.exit_code == 2 and "does not apply to test-readings" in result.output
    result = runner.invoke(app, ["train", "--data", str(runs / "data"), "--out", str(runs / "pop"), "--method", "pop"])
    assert result.exit_code == 2 and "--method: 'pop' is not a method of the test-readings task" in result.output


def test_a_run_written_before_tasks_were_plug_ins_is_refused_in_one_line(runs, tmp_path):
    import shutil

    from duet.atomic import sha256_file
    from duet.checkpoint import load_run
    from duet.errors import ArtifactError

    old = tmp_path / "old"
    shutil.copytree(runs / "base", old)
    config = json.loads((old / "config.json").read_text())
    for key in ("task", "builder", "facts"):
        config.pop(key)
    (old / "config.json").write_text(json.dumps(config))
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["files"]["config.json"] = sha256_file(old / "config.json")  # as an older duet would have written it
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="records no task builder.*redo it"):
        load_run(old)
