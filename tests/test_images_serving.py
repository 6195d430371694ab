"""An image DUET run through the service, the device bundle and the torch-free image runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import IMAGE_W
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import load_file
from test_cloud import get, post
from test_device import FakeService, run_on_a_device

from duet.atomic import sha256_file
from duet.checkpoint import load_run
from duet.device import GLOBAL, SERVICE, Bundle, DeviceRuntime, load_bundle
from duet.export import model_version
from duet.simulate import ServiceProcess, free_port, simulate
from duet.tasks.fleet.store import load_fleet

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def loaded(image_run: Path):
    config, model, _ = load_run(image_run)
    return config, model.eval()


@pytest.fixture(scope="module")
def windows(loaded) -> list[np.ndarray]:
    """Real test windows of the fleet: one full (W images), one of a device's first sample (1 image)."""
    config, _ = loaded
    data = load_fleet(config.data, ("test",))
    starts = np.flatnonzero(data.first_row == np.arange(len(data.first_row)))
    rows = np.array([data["test"].rows[-1], starts[-1]])
    index, mask = data.window_rows(rows, IMAGE_W)
    return [data.x[index[i][mask[i]]] for i in range(len(rows))]


@pytest.fixture(scope="module")
def service(image_run: Path):
    with ServiceProcess(image_run, max_wait_ms=5) as running:
        yield running


def offline_params(model: torch.nn.Module, window: np.ndarray) -> dict[str, np.ndarray]:
    """The head the DUET model generates for one window of images (torch, as `duet evaluate` does)."""
    x = torch.zeros(1, IMAGE_W, *SHAPE)
    x[0, : len(window)] = torch.from_numpy(window)
    mask = torch.arange(IMAGE_W)[None] < len(window)
    with torch.inference_mode():
        return {k: v[0].numpy() for k, v in model.generate(x, mask).items()}


def features(model: torch.nn.Module, window: np.ndarray) -> list[list[float]]:
    with torch.inference_mode():
        return model.device_model.features(torch.from_numpy(window)).tolist()


# ---------------------------------------------------------------- the service

def test_models_reports_the_image_task(service: ServiceProcess, image_run: Path, loaded) -> None:
    config, _ = loaded
    status, body = get(service.url + "/v1/models")
    assert status == 200
    (info,) = json.loads(body)["models"]
    assert info["version"] == model_version(image_run)
    assert (info["task"], info["feature_dim"], info["window_len"]) == ("images", 8, IMAGE_W)
    assert info["sample"] == {"dtype": "float32", "shape": list(SHAPE), "low": None, "high": None}
    assert info["facts"] == config.facts and info["facts"]["image_shape"] == list(SHAPE)
    assert not {"num_items", "history_len", "image_shape", "num_classes"} & set(info)
    status, body = get(service.url + "/openapi.json")
    request = json.loads(body)["paths"]["/v1/parameters"]["post"]["requestBody"]["content"]["application/json"]
    properties = request["schema"]["properties"]
    assert "window" not in properties
    samples, embedding = properties["samples"], properties["embedding"]
    assert samples["items"]["minItems"] == samples["items"]["maxItems"] == int(np.prod(SHAPE))  # the sample's width
    assert embedding["items"]["minItems"] == embedding["items"]["maxItems"] == 8
    assert samples["maxItems"] == embedding["maxItems"] == 10 * IMAGE_W
    assert request["schema"]["oneOf"] == [{"required": ["samples"]}, {"required": ["embedding"]}]


@pytest.mark.parametrize("which", [0, 1])
def test_samples_and_privacy_mode_answer_the_offline_head(service: ServiceProcess, loaded, windows, which: int) -> None:
    _, model = loaded
    window = windows[which]
    status, _, raw = post(service.url, {"device_id": "i", "samples": window.reshape(len(window), -1).tolist()})
    assert status == 200, raw
    status, _, private = post(service.url, {"device_id": "i", "embedding": features(model, window)})
    assert status == 200, private
    raw, private, expected = load_safetensors(raw), load_safetensors(private), offline_params(model, window)
    assert set(raw) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(raw[name], value, rtol=0, atol=1e-5)
        np.testing.assert_allclose(private[name], value, rtol=0, atol=1e-5)


def test_other_windows_get_other_heads(service: ServiceProcess, windows) -> None:
    answers = [post(service.url, {"device_id": "i", "samples": w.reshape(len(w), -1).tolist()})[2] for w in windows]
    assert answers[0] != answers[1]


def test_a_longer_window_is_cut_to_the_last_w(service: ServiceProcess, windows) -> None:
    window = windows[0].reshape(IMAGE_W, -1)
    longer = np.concatenate([windows[1].reshape(1, -1), window])
    assert post(service.url, {"device_id": "i", "samples": longer.tolist()})[2] == post(
        service.url, {"device_id": "i", "samples": window.tolist()})[2]


@pytest.mark.parametrize(("body", "field"), [
    ({"samples": [[0.5] * 64, [0.5] * 63]}, "samples[1]"),  # not a 1x8x8 image
    ({"samples": [[0.5] * 64, [0.5] * 10 + [float("nan")] + [0.5] * 53]}, "samples[1][10]"),
    ({"samples": []}, "samples"),
    ({"samples": [[0.5] * 64] * (10 * IMAGE_W + 1)}, "samples"),  # over max_window
    ({"samples": [[0.5] * 64], "embedding": [[0.5] * 8]}, "samples"),  # two inputs: named by the raw one
    ({}, "samples"),  # none
    ({"window": [1, 2]}, "window"),  # item ids, to an image model
    ({"embedding": [[0.5] * 64]}, "embedding[0]"),  # images where features belong
    ({"embedding": [[0.5] * 8, [float("-inf")] * 8]}, "embedding[1][0]"),
    ({"embedding": []}, "embedding"),
])
def test_bad_image_requests_name_the_field(service: ServiceProcess, body: dict, field: str) -> None:
    status, _, text = post(service.url, {"device_id": "i", **body})
    assert status == 422, text
    error = json.loads(text)["error"]
    assert error["field"] == field and error["message"], error
    if "window" in body:
        assert error["message"].startswith("this service's model takes `samples` (rows of 64 floats"), error


# ---------------------------------------------------------------- the bundle

def test_image_bundle_layout(image_bundle_dir: Path, image_run: Path, loaded) -> None:
    config, model = loaded
    manifest = json.loads((image_bundle_dir / "manifest.json").read_text())
    assert manifest["format"] == "duet-bundle/2" and manifest["task"] == "images"
    assert manifest["builder"] == config.builder and manifest["model_version"] == model_version(image_run)
    assert (manifest["facts"]["image_shape"], manifest["facts"]["num_classes"], manifest["feature_dim"],
            manifest["window_len"]) == (list(SHAPE), config.facts["num_classes"], 8, IMAGE_W)
    assert manifest["sample"] == {"dtype": "float32", "shape": list(SHAPE), "low": None, "high": None}
    assert manifest["graph"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, *SHAPE], "pad": None}]
    assert set(manifest["files"]) == {"model.onnx", "features.onnx", "theta_g.safetensors", "param_spec.json"}
    for name, digest in manifest["files"].items():
        assert sha256_file(image_bundle_dir / name) == digest
    theta_g = load_file(str(image_bundle_dir / "theta_g.safetensors"))
    for name, value in model.device_model.theta_g().items():
        np.testing.assert_array_equal(theta_g[name], value.detach().numpy())
    assert manifest["verified_max_abs_diff"] <= 1e-5


def test_image_onnx_equals_torch_for_random_parameters(image_bundle_dir: Path, loaded) -> None:
    """onnxruntime against the classifier itself, 1 to 50 images, random heads: logits (model.onnx) and
    features (features.onnx)."""
    _, model = loaded
    classifier = model.device_model
    session = ort.InferenceSession(str(image_bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    features_session = ort.InferenceSession(str(image_bundle_dir / "features.onnx"),
                                            providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert inputs["x"] == ["x", *SHAPE]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert [i.shape for i in features_session.get_inputs()] == [["samples", *SHAPE]]
    gen = torch.Generator().manual_seed(1)
    for n in (1, 3, 50):
        x = torch.rand(n, *SHAPE, generator=gen)
        params = {name: torch.randn(1, *shape, generator=gen) for name, shape in classifier.param_spec.entries}
        with torch.no_grad():  # every image with the one head, batched per image as in the DUET model
            expected = classifier(x, {k: v.expand(n, *v.shape[1:]) for k, v in params.items()}).numpy()
            expected_features = classifier.features(x).numpy()
        (logits,) = session.run(None, {"x": x.numpy(), **{k.replace(".", "_"): v.numpy() for k, v in params.items()}})
        (got_features,) = features_session.run(None, {"samples": x.numpy()})
        assert logits.shape == (n, classifier.num_classes)
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got_features, expected_features, rtol=0, atol=1e-5)


def test_one_bundle_class_reads_either_task_from_its_manifest(image_bundle_dir: Path, bundle_dir: Path) -> None:
    images, items = load_bundle(image_bundle_dir), load_bundle(bundle_dir)
    assert type(images) is Bundle and type(items) is Bundle
    assert (images.task, images.sample.field, images.sample.shape) == ("images", "samples", SHAPE)
    assert (items.sample.field, [i.name for i in images.inputs]) == ("window", ["x"])
    with pytest.raises(ValueError, match="no id vocabulary"):
        images.internal_ids([1])
    with pytest.raises(ValueError, match="not whole samples"):
        DeviceRuntime(images, "http://127.0.0.1:9", "d").observe(np.zeros(10, np.float32))


# ---------------------------------------------------------------- the device runtime

def test_image_runtime_imports_and_classifies_without_torch(image_bundle_dir: Path) -> None:
    """No torch (so no gradient) on an image device: bundle, runtime, privacy features, classification."""
    run_on_a_device(f"""
        import numpy as np
        from duet.device import DeviceRuntime
        runtime = DeviceRuntime({str(image_bundle_dir)!r}, "http://127.0.0.1:9", "d", retries=0, privacy=True)
        images = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
        for image in images:
            runtime.observe(image)
        assert runtime.refresh() == "global"  # nothing listens on port 9
        logits = runtime.score(images)
        assert logits.shape == (3, runtime.bundle.facts["num_classes"]), logits.shape
        assert runtime.window.shape == (3, 1, 8, 8)
        assert runtime.bundle.features(runtime.window).shape == (3, runtime.bundle.feature_dim)
    """)


@pytest.mark.parametrize("privacy", [False, True])
def test_image_runtime_uploads_its_window(image_bundle_dir: Path, loaded, windows, privacy: bool) -> None:
    """Raw: the last W images, flattened; privacy: their features (as torch computes them), never the images."""
    _, model = loaded
    bundle = Bundle(image_bundle_dir)
    fake = FakeService(bundle, ["ok"])
    stream = np.concatenate([windows[1], windows[0]])  # W + 1 images: the first falls out of the window
    with fake.running() as url:
        runtime = DeviceRuntime(bundle, url, "d", retries=0, privacy=privacy)
        for image in stream:
            runtime.observe(image.reshape(-1))  # any layout of the right size
        assert runtime.refresh() == SERVICE
    (request,) = fake.requests
    assert "window" not in request and request["device_id"] == "d"
    if privacy:
        assert "samples" not in request
        np.testing.assert_allclose(request["embedding"], features(model, windows[0]), rtol=0, atol=1e-5)
    else:
        assert "embedding" not in request
        np.testing.assert_array_equal(np.array(request["samples"], dtype=np.float32), windows[0].reshape(IMAGE_W, -1))
    head = {name: value[None] for name, value in fake.params.items()}
    np.testing.assert_array_equal(runtime.score(windows[0]), bundle.run({"x": windows[0]}, head)["logits"])


def test_image_runtime_falls_back_to_the_global_head(image_bundle_dir: Path, windows) -> None:
    bundle = Bundle(image_bundle_dir)
    runtime = DeviceRuntime(bundle, f"http://127.0.0.1:{free_port()}", "d", retries=0, timeout=1)
    assert runtime.refresh() == GLOBAL and runtime.last_error is None  # nothing observed: nothing asked
    runtime.observe(windows[0][0])
    assert runtime.refresh() == GLOBAL and "1 attempts" in runtime.last_error
    np.testing.assert_array_equal(runtime.score(x=windows[0]), bundle.run({"x": windows[0]}, bundle.theta_g)["logits"])
    with pytest.raises(ValueError, match="observe takes one sample"):
        runtime.observe(windows[0][:2])


# ---------------------------------------------------------------- the fleet

@pytest.mark.parametrize("privacy", [False, True])
def test_simulate_an_image_fleet_matches_offline(image_run: Path, image_bundle_dir: Path, privacy: bool) -> None:
    results = simulate(image_run, devices=3, bundle=image_bundle_dir, concurrency=3, privacy=privacy)
    assert results["task"] == "images" and results["privacy"] is privacy and results["devices"] == 3
    assert results["sources"] == {"service": results["records"]}  # one refresh per scored sample
    assert results["agree"] is True and results["max_abs_logit_diff"] <= 1e-4
    assert results["metrics"]["device"]["records"] == results["records"] > 0
    diff = results["metrics"]["diff"]
    # Counted metrics agree exactly; logloss within float32 rounding of logits that differ by ~1e-6.
    assert all(abs(d) <= 1e-9 for k, d in diff.items() if "logloss" not in k), diff
    assert all(abs(d) <= 1e-5 for k, d in diff.items() if "logloss" in k), diff


def test_simulate_an_image_fleet_with_a_request_policy(image_run: Path, image_bundle_dir: Path) -> None:
    """every-2 on image streams: a device asks at its first scored sample, then once 2 new images arrived."""
    from duet.device.policy import RequestPolicy

    results = simulate(image_run, devices=2, bundle=image_bundle_dir, concurrency=2, policy=RequestPolicy("every", k=2))
    assert results["policy"] == "every-2" and results["agree"] is None
    assert results["sources"]["service"] == results["requests"] and results["sources"]["kept"] > 0
    assert results["devices"] <= results["requests"] < results["records"]


def test_image_service_conforms_to_its_schema(service: ServiceProcess) -> None:
    """Schemathesis against an image run's service: its schema (samples and embedding rows of the run's
    widths, float32 values, no `window`) is what it accepts and refuses, and it never answers 5xx."""
    from test_cloud import run_schemathesis

    failures, statuses = run_schemathesis(service.url, examples=30)
    assert failures == []
    assert statuses[("POST /v1/parameters", 200)] > 5 and statuses[("POST /v1/parameters", 422)] > 5, statuses


def test_a_film_run_with_a_set_encoder_exports_and_the_device_graph_takes_its_block_parameters(
        image_run: Path, tmp_path: Path) -> None:
    """Generation inside the static part reaches the device: FiLM's per-block scale and shift are
    inputs of the exported graph beside the head's, and a simulated fleet (service, signed bundle,
    onnxruntime) scores what the torch model scores, here with the set encoder."""
    from duet.config import GeneratorConfig, ModelConfig, TrainConfig
    from duet.export import export_bundle
    from duet.training.loop import run_config_for, train

    data = load_run(image_run)[0].data
    config = run_config_for(
        data, model=ModelConfig(backbone="cnn", embed_dim=8, dropout=0.0, film=True),
        generator=GeneratorConfig(encoder="set", hidden_dim=8, layer_embed_dim=4, decoder_hidden=8),
        train=TrainConfig(method="duet", epochs=1, batch_size=32, threads=1))
    train(config, tmp_path / "run", progress=False)
    export_bundle(tmp_path / "run", tmp_path / "bundle")
    session = ort.InferenceSession(str(tmp_path / "bundle" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    spec = load_run(tmp_path / "run")[1].device_model.param_spec
    assert {f"film_{b}_{k}" for b in range(3) for k in ("scale", "shift")} <= inputs
    assert inputs == {"x", *(name.replace(".", "_") for name in spec.names)}
    results = simulate(tmp_path / "run", devices=3, bundle=tmp_path / "bundle", concurrency=3)
    assert results["agree"] is True and results["max_abs_logit_diff"] <= 1e-4
