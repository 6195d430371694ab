"""The device bundle: layout and hashes, and onnxruntime == torch for any head parameters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import NUM_ITEMS, L
from safetensors.numpy import load_file
from typer.testing import CliRunner

from duet.atomic import sha256_file
from duet.checkpoint import load_run
from duet.config import ModelConfig
from duet.export import EXPORT_ATOL, export_bundle, export_graph, model_version, verify_graph
from duet.tasks.recommendation.models.recommender import Recommender
from duet.tasks.recommendation.task import task as recommendation_task


def test_bundle_layout(bundle_dir: Path, duet_run: Path, tiny_data: Path) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["format"] == "duet-bundle/2"
    assert manifest["model_version"] == model_version(duet_run)
    config, model, _ = load_run(duet_run)
    assert (manifest["task"], manifest["builder"]) == (config.task, config.builder)
    assert set(manifest["files"]) == {"model.onnx", "features.onnx", "theta_g.safetensors", "vocab.safetensors",
                                      "param_spec.json"}
    for name, digest in manifest["files"].items():
        assert sha256_file(bundle_dir / name) == digest
    recommender = model.device_model
    spec = recommender.param_spec
    assert json.loads((bundle_dir / "param_spec.json").read_text()) == {"hash": spec.hash, "params": spec.to_json()}
    assert manifest["spec_hash"] == spec.hash
    assert manifest["graph"]["params"] == {n: n.replace(".", "_") for n in spec.names}
    assert manifest["graph"]["inputs"] == [{"name": "history", "dtype": "int64", "shape": [1, L], "pad": 0},
                                           {"name": "items", "dtype": "int64", "shape": [None], "pad": None}]
    assert manifest["graph"]["outputs"] == ["logits"]
    assert manifest["sample"] == {"dtype": "int64", "shape": [], "low": 1, "high": NUM_ITEMS - 1}
    assert (manifest["facts"]["history_len"], manifest["facts"]["num_items"]) == (L, NUM_ITEMS)
    theta_g = load_file(str(bundle_dir / "theta_g.safetensors"))
    for name, value in recommender.theta_g().items():
        np.testing.assert_array_equal(theta_g[name], value.detach().numpy())
    vocab = load_file(str(bundle_dir / "vocab.safetensors"))
    assert sorted(vocab) == ["item_raw"]  # user ids stay in the cloud
    np.testing.assert_array_equal(vocab["item_raw"], load_file(str(tiny_data / "vocab.safetensors"))["item_raw"])
    assert manifest["verified_max_abs_diff"] <= 1e-5
    # What a device in privacy mode uploads instead of item ids: the generator's own input, the item embeddings.
    table = recommender.item_embedding.weight.detach().numpy()
    session = ort.InferenceSession(str(bundle_dir / "features.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["samples"]] and manifest["feature_dim"] == table.shape[1]
    ids = np.arange(1, NUM_ITEMS)
    np.testing.assert_allclose(session.run(None, {"samples": ids})[0], table[ids], rtol=0, atol=1e-6)


def assert_onnx_equals_torch(recommender: torch.nn.Module, onnx_file: Path) -> None:
    """onnxruntime against the recommender itself (not the exporter's DeviceGraph or self-check), for
    random head parameters, empty to full histories and 1 to 64 candidates."""
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    assert inputs["history"].shape == [1, L] and inputs["items"].shape == ["items"]
    assert set(inputs) == {"history", "items", *(n.replace(".", "_") for n in recommender.param_spec.names)}
    assert [o.name for o in session.get_outputs()] == ["logits"]
    gen = torch.Generator().manual_seed(0)
    for length, candidates in ((0, 1), (3, 5), (L, 64)):
        history = torch.zeros(1, L, dtype=torch.long)
        history[0, :length] = torch.randint(1, NUM_ITEMS, (length,), generator=gen)
        items = torch.randint(1, NUM_ITEMS, (candidates,), generator=gen)
        params = {n: torch.randn(1, *shape, generator=gen) for n, shape in recommender.param_spec.entries}
        with torch.no_grad():  # every candidate belongs to the one event, with the one head
            expected = recommender.eval()(history, items, torch.zeros_like(items), params).numpy()
        (got,) = session.run(None, {"history": history.numpy(), "items": items.numpy(),
                                    **{n.replace(".", "_"): v.numpy() for n, v in params.items()}})
        assert got.shape == (candidates,)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_onnx_equals_torch_for_random_parameters(bundle_dir: Path, duet_run: Path) -> None:
    _, model, _ = load_run(duet_run)
    assert_onnx_equals_torch(model.device_model, bundle_dir / "model.onnx")


@pytest.mark.parametrize("backbone", ["gru4rec", "din"])
def test_other_backbones_export(backbone: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    recommender = Recommender(NUM_ITEMS, L, ModelConfig(backbone=backbone, embed_dim=8, num_blocks=1)).eval()
    graph = recommendation_task().device_graph(recommender)
    export_graph(graph, recommender.param_spec, recommender.theta_g(), tmp_path / "model.onnx")
    assert_onnx_equals_torch(recommender, tmp_path / "model.onnx")
    # the exporter's own check agrees
    assert verify_graph(graph, recommender.param_spec, recommender.theta_g(), tmp_path / "model.onnx") <= EXPORT_ATOL


def test_cli_exports_a_base_run_and_refuses_to_overwrite(duet_run: Path, tmp_path: Path) -> None:
    from duet.cli import app

    base = duet_run / "stage1"  # a DUET run trains its global model as a base run here
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--run", str(base), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["method"] == "base"
    result = runner.invoke(app, ["export", "--run", str(base), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "already exists" in result.output
    with pytest.raises(FileExistsError):
        export_bundle(base, tmp_path / "b")


def test_an_old_format_bundle_is_refused_in_one_line(bundle_dir: Path, tmp_path: Path) -> None:
    """A bundle written before bundles described their task's graph: refused, saying what to do."""
    import shutil

    from duet.device import Bundle
    from duet.errors import ArtifactError

    old = tmp_path / "old"
    shutil.copytree(bundle_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": "duet-bundle/1"}))
    with pytest.raises(ArtifactError, match="re-export with `duet export`") as error:
        Bundle(old)
    assert "duet-bundle/1" in str(error.value) and "\n" not in str(error.value)


def test_a_task_without_a_device_side_is_refused_in_one_line(duet_run: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from duet.cli import app
    from duet.tasks.recommendation.task import RecommendationTask

    def no_device_side(self: object, model: object) -> None:
        raise NotImplementedError

    monkeypatch.setattr(RecommendationTask, "device_graph", no_device_side)
    for command in (["export", "--out", str(tmp_path / "b")], ["simulate"]):
        result = CliRunner().invoke(app, [*command, "--run", str(duet_run)])
        assert result.exit_code == 2 and "has no device side" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()
