"""The parameter service: the real server over HTTP, plus in-process units (codec, batcher, settings)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import NUM_ITEMS, L, W
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from duet.device.client import safetensors_metadata
from duet.simulate import ServiceProcess


@pytest.fixture(scope="module")
def service(duet_run: Path):
    # A generous wait so that concurrent requests surely share forwards.
    with ServiceProcess(duet_run, max_wait_ms=20) as running:
        yield running


def post(url: str, body: object, accept: str | None = None, raw: bytes | None = None) -> tuple[int, dict, bytes]:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Accept": accept} if accept else {})}
    request = urllib.request.Request(url + "/v1/parameters", data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def offline_params(run: Path, window: list[int]) -> dict[str, np.ndarray]:
    from duet.checkpoint import load_run

    config, model, _ = load_run(run)
    row = torch.zeros(1, config.window_len, dtype=torch.long)
    last = window[-config.window_len :]
    row[0, : len(last)] = torch.tensor(last)
    with torch.inference_mode():
        return {k: v[0].numpy() for k, v in model.generate(row).items()}


# ---------------------------------------------------------------- the real service over HTTP

def test_parameters_as_safetensors(service: ServiceProcess, duet_run: Path) -> None:
    status, headers, body = post(service.url, {"device_id": "d1", "window": [3, 1, 4]})
    assert status == 200
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-duet-content-sha256"] == hashlib.sha256(body).hexdigest()
    assert "x-duet-signature" not in headers  # signing is opt-in (duet serve --sign)
    spec = json.loads((duet_run / "param_spec.json").read_text())
    assert headers["x-duet-spec-hash"] == spec["hash"]
    metadata = safetensors_metadata(body)
    assert metadata == {"spec_hash": spec["hash"], "model_version": headers["x-duet-model-version"]}
    params = load_safetensors(body)
    assert {n: list(a.shape) for n, a in params.items()} == {p["name"]: p["shape"] for p in spec["params"]}
    assert all(a.dtype == np.float32 for a in params.values())
    expected = offline_params(duet_run, [3, 1, 4])
    for name, value in params.items():
        np.testing.assert_allclose(value, expected[name], rtol=0, atol=1e-6)


def test_json_form_and_fp16(service: ServiceProcess) -> None:
    body = {"device_id": "d2", "window": [5, 9, 2, 6, 5]}
    _, _, fp32 = post(service.url, body)
    status, headers, text = post(service.url, body, accept="application/json")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["x-duet-content-sha256"] == hashlib.sha256(text).hexdigest()
    answer = json.loads(text)
    assert answer["dtype"] == "fp32" and answer["model_version"] == headers["x-duet-model-version"]
    binary = load_safetensors(fp32)
    assert answer["params_sha256"] == hashlib.sha256(fp32[8 + int.from_bytes(fp32[:8], "little") :]).hexdigest()
    for name, value in answer["params"].items():
        np.testing.assert_array_equal(np.array(value, dtype=np.float32), binary[name])

    _, _, fp16 = post(service.url, {**body, "dtype": "fp16"})
    _, _, fp16_text = post(service.url, {**body, "dtype": "fp16"}, accept="application/json")
    assert len(fp16) < len(fp32)
    half = load_safetensors(fp16)
    for name, value in binary.items():
        assert half[name].dtype == np.float16
        np.testing.assert_array_equal(half[name], value.astype(np.float16))
        np.testing.assert_array_equal(np.array(json.loads(fp16_text)["params"][name], dtype=np.float16), half[name])


def test_window_is_cut_to_the_last_w_items(service: ServiceProcess) -> None:
    long = [7, 8, 9, 10, 11, 12, 13]
    _, _, cut = post(service.url, {"device_id": "d3", "window": long})
    _, _, last = post(service.url, {"device_id": "d3", "window": long[-W:]})
    assert cut == last
    _, _, other = post(service.url, {"device_id": "d3", "window": long[-W - 1 : -1]})
    assert other != last


def item_embeddings(run: Path, items: list[int]) -> list[list[float]]:
    """What a device in privacy mode uploads for these items: their rows of the run's item embedding table."""
    from duet.checkpoint import load_run

    _, model, _ = load_run(run)
    return model.device_model.item_embedding.weight.detach()[items].tolist()


@pytest.mark.parametrize("window", [[3, 1, 4], [7, 8, 9, 10, 11, 12, 13]])  # shorter and longer than W
def test_privacy_mode_answers_what_the_window_gets(service: ServiceProcess, duet_run: Path, window: list[int]) -> None:
    """The window's item embeddings instead of its ids: the same parameters (the generator's input is the same)."""
    _, _, by_ids = post(service.url, {"device_id": "p", "window": window})
    status, headers, by_embedding = post(service.url, {"device_id": "p", "embedding": item_embeddings(duet_run, window)})
    assert status == 200, by_embedding
    assert headers["x-duet-spec-hash"] == json.loads((duet_run / "param_spec.json").read_text())["hash"]
    raw, private = load_safetensors(by_ids), load_safetensors(by_embedding)
    expected = offline_params(duet_run, window)
    for name, value in private.items():
        np.testing.assert_allclose(value, raw[name], rtol=0, atol=1e-5)
        np.testing.assert_allclose(value, expected[name], rtol=0, atol=1e-5)
    # ... and another window's embeddings get other parameters.
    _, _, other = post(service.url, {"device_id": "p", "embedding": item_embeddings(duet_run, [5, 6])})
    assert other != by_embedding


def test_probes_models_metrics(service: ServiceProcess, duet_run: Path) -> None:
    from duet.export import model_version

    assert get(service.url + "/healthz") == (200, b'{"status":"ok"}')
    assert get(service.url + "/readyz") == (200, b'{"status":"ok"}')
    status, body = get(service.url + "/v1/models")
    assert status == 200
    (model,) = json.loads(body)["models"]
    spec = json.loads((duet_run / "param_spec.json").read_text())
    assert model["version"] == model_version(duet_run)
    assert model["spec_hash"] == spec["hash"] and model["params"] == spec["params"]
    assert model["window_len"] == W and model["max_window"] == 10 * W
    assert model["task"] == "recommendation" and model["feature_dim"] == 8
    # What a window holds and the task's facts, from the run: no task-specific top-level fields.
    assert model["sample"] == {"dtype": "int64", "shape": [], "low": 1, "high": NUM_ITEMS - 1}
    assert model["facts"] == {"num_items": NUM_ITEMS, "history_len": L}
    assert not {"num_items", "history_len", "image_shape", "num_classes", "builder"} & set(model)
    assert model["dtypes"] == ["fp32", "fp16"] and model["answer_bytes"]["fp16"] < model["answer_bytes"]["fp32"]
    assert model["signing_key"] is None  # answers are signed only with `duet serve --sign`

    post(service.url, {"device_id": "m", "window": [1]})
    post(service.url, {"device_id": "m"})
    status, body = get(service.url + "/metrics")
    text = body.decode()
    assert status == 200
    assert 'duet_http_requests_total{method="POST",route="/v1/parameters",status="200"}' in text
    assert 'duet_http_requests_total{method="POST",route="/v1/parameters",status="422"}' in text
    assert 'duet_http_request_seconds_bucket{le="0.005",route="/v1/parameters"}' in text
    assert "duet_generation_batch_size_count" in text


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"window": [1]}, 422, "device_id"),  # no device_id
    ({"device_id": "x", "window": [0, 1]}, 422, "window[0]"),  # 0 is padding, not an item
    ({"device_id": "x", "window": [1, 2, 3, NUM_ITEMS]}, 422, "window[3]"),  # beyond the vocabulary
    ({"device_id": "x", "window": [1, 2**70]}, 422, "window[1]"),  # far beyond any integer type
    ({"device_id": "x", "window": []}, 422, "window"),  # empty: no information to generate from
    ({"device_id": "x", "window": [1] * (10 * W + 1)}, 422, "window"),  # over max_window (10 x W)
    ({"device_id": "x", "window": [1], "colour": "red"}, 422, "colour"),  # unknown field
    ({"device_id": "x"}, 422, "window"),  # neither window nor embedding
    ({"device_id": "x", "window": [1], "samples": [[0.5]]}, 422, "window"),  # two inputs
    ({"device_id": "x", "window": None}, 422, "window"),  # not nullable
    ({"device_id": "x", "window": [1], "dtype": "bf16"}, 422, "dtype"),
    ({"device_id": "x", "window": [1, "a"]}, 422, "window[1]"),
    ({"device_id": "x", "window": [1, 2.5]}, 422, "window[1]"),
    # strict integers: none of these is item 1
    ({"device_id": "x", "window": [2, True]}, 422, "window[1]"),
    ({"device_id": "x", "window": [2, "1"]}, 422, "window[1]"),
    ({"device_id": "x", "window": [2, 1.0]}, 422, "window[1]"),
    ({"device_id": "x", "window": "1,2,3"}, 422, "window"),
    ({"device_id": 7, "window": [1]}, 422, "device_id"),
    ({"device_id": "", "window": [1]}, 422, "device_id"),
    ([1, 2, 3], 422, "body"),  # JSON, but not an object
    # privacy mode: rows of the run's feature width D (8 here), finite, 1 .. max_window of them
    ({"device_id": "x", "embedding": [[0.1] * 8, [0.2] * 7]}, 422, "embedding[1]"),  # wrong width
    ({"device_id": "x", "embedding": [[0.1] * 8, [0.2] * 8, [0.5] * 2 + [float("nan")] + [0.5] * 5]}, 422,
     "embedding[2][2]"),
    ({"device_id": "x", "embedding": [[float("inf")] * 8]}, 422, "embedding[0][0]"),
    ({"device_id": "x", "embedding": [[1e39] * 8]}, 422, "embedding[0][0]"),  # beyond float32
    ({"device_id": "x", "embedding": []}, 422, "embedding"),
    ({"device_id": "x", "embedding": [[]]}, 422, "embedding[0]"),
    ({"device_id": "x", "embedding": [0.1] * 8}, 422, "embedding[0]"),  # flat: rows are lists
    ({"device_id": "x", "embedding": [[0.1] * 8] * (10 * W + 1)}, 422, "embedding"),  # over max_window
    ({"device_id": "x", "embedding": [[0.1] * 8], "window": [1]}, 422, "window"),  # two inputs
    ({"device_id": "x", "samples": [[0.1] * 8]}, 422, "samples"),  # images, to a recommendation model
    ({"device_id": "x", "window": [1], "version": "some-other-model"}, 409, "version"),
])
def test_bad_requests(service: ServiceProcess, body: object, status: int, field: str) -> None:
    got, headers, text = post(service.url, body)
    assert got == status, text
    assert headers["content-type"] == "application/json"
    error = json.loads(text)["error"]
    assert error["field"] == field, error
    assert error["message"] and error["code"]
    if status == 422:
        assert error["errors"][0] == {"field": field, "message": error["message"]}


def test_the_raw_field_of_another_kind_of_run_is_refused_in_one_line(service: ServiceProcess) -> None:
    status, _, text = post(service.url, {"device_id": "x", "samples": [[0.5] * 8]})
    assert status == 422
    error = json.loads(text)["error"]
    assert error["field"] == "samples"
    assert error["message"] == (f"this service's model takes `window` (integers 1..{NUM_ITEMS - 1}) or `embedding`, "
                                "not `samples`")


def test_request_schema_is_built_from_the_sample_spec() -> None:
    """Any SampleSpec, not only the built-in tasks': the raw field, its bounds or row width, the
    embedding width and max_window all come from the spec and the run, and validation follows the schema."""
    from pydantic import ValidationError

    from duet.cloud.schemas import request_model
    from duet.spec import SampleSpec

    tokens = request_model(SampleSpec("int64", (), low=3, high=9), feature_dim=5, window_len=2, max_window=7)
    schema = tokens.model_json_schema()
    assert set(schema["properties"]) == {"device_id", "window", "embedding", "dtype", "version"}
    window = schema["properties"]["window"]
    assert (window["items"]["minimum"], window["items"]["maximum"], window["minItems"], window["maxItems"]) == (3, 9, 1, 7)
    assert schema["properties"]["embedding"]["items"]["minItems"] == schema["properties"]["embedding"]["items"]["maxItems"] == 5
    assert schema["oneOf"] == [{"required": ["window"]}, {"required": ["embedding"]}]
    assert all(3 <= v <= 9 for v in schema["examples"][0]["window"])
    assert tokens.model_validate_json('{"device_id": "d", "window": [3, 9]}').input_field == "window"
    for bad, field in (([2], ("window", 0)), ([3, 10], ("window", 1)), ([3] * 8, ("window",)),
                       ([3, True], ("window", 1)), ([3, "4"], ("window", 1)), ([3, 4.0], ("window", 1))):
        with pytest.raises(ValidationError) as caught:
            tokens.model_validate_json(json.dumps({"device_id": "d", "window": bad}))
        assert caught.value.errors()[0]["loc"] == field
    unbounded = request_model(SampleSpec("int64"), feature_dim=5, window_len=2, max_window=7)
    assert unbounded.model_json_schema()["properties"]["window"]["items"]["maximum"] == 2**63 - 1  # int64

    floats = request_model(SampleSpec("float32", (2, 3)), feature_dim=5, window_len=2, max_window=7)
    schema = floats.model_json_schema()
    assert set(schema["properties"]) == {"device_id", "samples", "embedding", "dtype", "version"}
    samples = schema["properties"]["samples"]
    assert (samples["items"]["minItems"], samples["items"]["maxItems"], samples["maxItems"]) == (6, 6, 7)
    assert schema["oneOf"] == [{"required": ["samples"]}, {"required": ["embedding"]}]
    assert floats.model_validate_json(json.dumps({"device_id": "d", "samples": [[0.5] * 6]})).input_field == "samples"
    with pytest.raises(ValidationError) as caught:
        floats.model_validate_json(json.dumps({"device_id": "d", "samples": [[0.5] * 6, [0.5] * 5]}))
    assert caught.value.errors()[0]["loc"] == ("samples", 1)
    # The other kind's raw field parses (so the route can name it in one line) but is not in the schema.
    assert floats.model_validate_json('{"device_id": "d", "window": [1]}').input_field == "window"


def test_longest_accepted_window_is_cut_to_the_last_w(service: ServiceProcess) -> None:
    longest = list(range(1, 10 * W + 1))
    status, _, cut = post(service.url, {"device_id": "x", "window": longest})
    assert status == 200
    assert cut == post(service.url, {"device_id": "x", "window": longest[-W:]})[2]


@pytest.mark.parametrize(("raw", "code"), [
    (b"window=1,2,3", "invalid_json"),
    (b'{"device_id": "x", "window": [1, 2', "invalid_json"),  # truncated
    (b"\xff\xfe{}", "invalid_json"),  # not UTF-8
    (b"", "invalid_json"),
])
def test_malformed_json_is_422_naming_the_body(service: ServiceProcess, raw: bytes, code: str) -> None:
    status, _, text = post(service.url, None, raw=raw)
    assert status == 422, text
    error = json.loads(text)["error"]
    assert error["code"] == code and error["field"] == "body"


def test_unknown_paths_and_methods_use_the_error_shape(service: ServiceProcess) -> None:
    status, body = get(service.url + "/v1/nothing-here")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    status, body = get(service.url + "/v1/parameters")
    assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"


def _batch_counter(url: str) -> tuple[float, float]:
    text = get(url + "/metrics")[1].decode()
    values = dict(line.split() for line in text.splitlines() if line.startswith("duet_generation_batch_size_"))
    return values["duet_generation_batch_size_sum"], values["duet_generation_batch_size_count"]


def test_micro_batched_answers_equal_one_at_a_time(service: ServiceProcess) -> None:
    rng = np.random.default_rng(0)
    bodies = [{"device_id": f"b{i}", "window": rng.integers(1, NUM_ITEMS, rng.integers(1, W + 1)).tolist(),
               "dtype": "fp32"} for i in range(48)]
    before = _batch_counter(service.url)
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: post(service.url, b)[2], bodies))
    after = _batch_counter(service.url)
    sizes, batches = float(after[0]) - float(before[0]), float(after[1]) - float(before[1])
    assert sizes == len(bodies) and batches < len(bodies), "the concurrent requests never shared a forward"
    alone = [post(service.url, b)[2] for b in bodies]
    assert together == alone  # bitwise


def test_openapi_is_complete(service: ServiceProcess) -> None:
    status, body = get(service.url + "/openapi.json")
    assert status == 200
    schema = json.loads(body)
    operation = schema["paths"]["/v1/parameters"]["post"]
    ok = operation["responses"]["200"]
    assert set(ok["content"]) == {"application/octet-stream", "application/json"}
    assert ok["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    assert {"X-Duet-Model-Version", "X-Duet-Content-SHA256", "X-Duet-Spec-Hash"} <= set(ok["headers"])
    assert {"200", "408", "409", "413", "422", "503", "504"} <= set(operation["responses"])
    assert "501" not in operation["responses"]  # privacy mode is implemented
    assert "401" not in operation["responses"] and "429" not in operation["responses"]  # auth and rate limit off
    for code in ("409", "413", "422", "503"):
        assert operation["responses"][code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}
    assert set(schema["components"]["schemas"]["ErrorResponse"]["properties"]) == {"error"}
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"device_id", "window", "embedding", "dtype", "version"} <= set(request["properties"])
    assert "samples" not in request["properties"]  # images: refused by a recommendation service
    window = request["properties"]["window"]
    assert window["items"] == {**window["items"], "minimum": 1, "maximum": NUM_ITEMS - 1}
    assert window["minItems"] == 1 and window["maxItems"] == 10 * W
    assert request["oneOf"] == [{"required": ["window"]}, {"required": ["embedding"]}]
    embedding = request["properties"]["embedding"]
    assert embedding["maxItems"] == 10 * W and embedding["items"]["minItems"] == embedding["items"]["maxItems"] == 8
    for path in ("/healthz", "/readyz", "/v1/models", "/metrics"):
        assert "200" in schema["paths"][path]["get"]["responses"]


# ---------------------------------------------------------------- in process

@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_app_in_process_and_readiness(duet_run: Path) -> None:
    from fastapi.testclient import TestClient

    from duet.cloud import Settings, create_app

    app = create_app(Settings(run=duet_run))
    idle = TestClient(app)  # no lifespan: the model is not loaded
    assert idle.get("/healthz").status_code == 200
    assert idle.get("/readyz").json() == {"status": "loading"}
    assert idle.post("/v1/parameters", json={"device_id": "a", "window": [1]}).status_code == 503
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        answer = client.post("/v1/parameters", json={"device_id": "a", "window": [1, 2]})
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/octet-stream"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, duet_run: Path, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from duet.cloud import Settings

    monkeypatch.setenv("DUET_RUN", str(duet_run))
    monkeypatch.setenv("DUET_MAX_BATCH", "7")
    monkeypatch.setenv("DUET_TOKENS", "env-token-0123456789, env-token-abcdefghij")
    settings = Settings()
    assert settings.run == duet_run and settings.max_batch == 7
    assert settings.auth_tokens() == ["env-token-0123456789", "env-token-abcdefghij"]
    assert "env-token" not in repr(settings) and "env-token" not in str(settings)
    monkeypatch.delenv("DUET_TOKENS")
    tokens = tmp_path / "tokens"
    tokens.write_text("file-token-0123456789\n")
    worker = Settings(run=duet_run, max_batch=3, max_wait_ms=1.5, executor="thread", workers=2,
                      tokens=["init-token-0123456789"], tokens_file=tokens, rate_limit=5, max_window=12)
    for key, value in worker.to_env().items():  # what a uvicorn worker process rebuilds its settings from
        monkeypatch.setenv(key, value)
    assert Settings() == worker
    assert Settings().auth_tokens() == ["init-token-0123456789", "file-token-0123456789"]
    monkeypatch.setenv("DUET_MAX_BATCH", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_serving_needs_a_duet_run(duet_run: Path) -> None:
    from duet.cloud.generation import GeneratorService
    from duet.errors import ArtifactError

    with pytest.raises(ArtifactError, match="needs a DUET run"):
        GeneratorService(duet_run / "stage1")  # the base run trained as stage 1


def test_codec_writes_what_safetensors_reads() -> None:
    from safetensors import deserialize

    from duet.cloud.generation import AnswerCodec
    from duet.spec import ParamSpec

    spec = ParamSpec.from_pairs([("layers.0.weight", (3, 2)), ("layers.0.bias", (3,)), ("layers.1.weight", (1, 3)),
                                 ("layers.1.bias", (1,))])
    flat = np.random.default_rng(0).normal(size=spec.numel).astype(np.float32)
    metadata = {"spec_hash": spec.hash, "model_version": "v"}
    for dtype, np_dtype in (("fp32", np.float32), ("fp16", np.float16)):
        codec = AnswerCodec(spec, dtype, metadata)
        blob = codec.encode(flat)
        assert len(blob) == codec.size and len(codec.prefix) % 8 == 0
        assert safetensors_metadata(blob) == metadata
        params = load_safetensors(blob)
        assert set(params) == set(spec.names)
        for name, value in spec.unflatten(flat[None]).items():
            np.testing.assert_array_equal(params[name], value[0].astype(np_dtype))
        # The same bytes as the library writes, up to the order of the header's keys.
        reference = save_safetensors({k: v[0].astype(np_dtype) for k, v in spec.unflatten(flat[None]).items()},
                                     metadata=metadata)
        assert [(n, t["shape"], bytes(t["data"])) for n, t in sorted(deserialize(blob))] == \
               [(n, t["shape"], bytes(t["data"])) for n, t in sorted(deserialize(reference))]


def test_served_generator_is_the_model(duet_run: Path) -> None:
    """The service's folded decoders (one matrix instead of three linears per layer, products in
    float64) give the model's parameters up to float32 rounding."""
    from duet.checkpoint import load_run
    from duet.cloud.generation import GeneratorService

    _, model, _ = load_run(duet_run)
    service = GeneratorService(duet_run)
    windows = np.random.default_rng(1).integers(0, NUM_ITEMS, (16, W))
    windows[:, 0] = np.maximum(windows[:, 0], 1)
    windows[::2, 2:] = 0
    with torch.inference_mode():
        params = model.generate(torch.from_numpy(windows))
    expected = torch.cat([params[n].reshape(16, -1) for n in service.spec.names], 1).numpy()
    assert service.model.folded  # a full-rank run: the folded path is what is tested here
    np.testing.assert_allclose(service.generate(windows), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(service.generate(windows, dtype="fp16"), service.generate(windows).astype(np.float16))
    # The service's raw path (any task): values -> the last W samples and their mask, as the batcher stacks them.
    lengths = np.arange(16) % W + 1
    windows = np.where(np.arange(W)[None] < lengths[:, None], windows % (NUM_ITEMS - 1) + 1, 0)
    rows, mask = zip(*(service.raw_rows(row[:n].tolist()) for row, n in zip(windows, lengths, strict=True)),
                     strict=True)
    np.testing.assert_array_equal(np.stack(rows), windows)
    np.testing.assert_array_equal(np.stack(mask), windows != 0)
    np.testing.assert_array_equal(service.generate(np.stack(rows), np.stack(mask)), service.generate(windows))
    with pytest.raises(ValueError, match=f"outside 1..{NUM_ITEMS - 1}"):
        service.raw_rows([3, NUM_ITEMS])


def test_frozen_decoders_are_bitwise_the_model(duet_run: Path) -> None:
    """The path low-rank runs are served by (and the benchmark's before): the mixed decoders, frozen."""
    from duet.checkpoint import load_run
    from duet.cloud.generation import FlatGenerator

    _, model, _ = load_run(duet_run)
    windows = torch.from_numpy(np.random.default_rng(2).integers(1, NUM_ITEMS, (16, W)))
    with torch.inference_mode():
        params = model.generate(windows)
        expected = torch.cat([params[n].reshape(16, -1) for n in model.device_model.param_spec.names], 1)
        frozen = FlatGenerator(load_run(duet_run)[1], fold=False)
        assert not frozen.folded
        assert torch.equal(frozen(windows), expected)


def test_batcher_groups_and_propagates_errors() -> None:
    from duet.cloud.batcher import MicroBatcher

    sizes: list[int] = []

    def forward(rows: np.ndarray) -> np.ndarray:
        if (rows == -1).any():
            raise RuntimeError("bad row")
        return rows * 2

    async def main() -> tuple[list, BaseException]:
        batcher = MicroBatcher(forward, max_batch=4, max_wait=0.01, min_rows=3,
                               on_batch=lambda size, _: sizes.append(size))
        rows = [np.array([i, i + 1]) for i in range(10)]
        outs = await asyncio.gather(*(batcher.submit(r) for r in rows))
        failed = await asyncio.gather(batcher.submit(np.array([-1, -1])), return_exceptions=True)
        await batcher.close()
        return [o.tolist() for o in outs], failed[0]

    outs, error = asyncio.run(main())
    assert outs == [[2 * i, 2 * i + 2] for i in range(10)]
    assert sizes[:3] == [4, 4, 2] and isinstance(error, RuntimeError)


def test_every_serve_flag_reaches_the_settings(monkeypatch: pytest.MonkeyPatch, duet_run: Path,
                                                tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import duet.cloud.server
    from duet.cli import app
    from duet.signing import write_key_pair

    captured = []
    monkeypatch.setattr(duet.cloud.server, "serve", captured.append)
    tokens = tmp_path / "tokens"
    tokens.write_text("# service tokens\nA1b2C3d4E5f6G7h8I9j0\n\n")
    key, _, signer = write_key_pair(tmp_path / "cloud")
    flags = {"--sign": str(key), "--host": "0.0.0.0", "--port": "1234", "--workers": "2", "--max-batch": "7", "--max-wait-ms": "3.5",
             "--threads": "2", "--device": "auto", "--executor": "thread", "--log-level": "info", "--tokens-file": str(tokens),
             "--max-body-bytes": "4096", "--max-window": "33", "--request-timeout": "2.5", "--max-queue": "99",
             "--header-timeout": "1.5", "--max-connections": "300", "--rate-limit": "12.5", "--rate-burst": "7", "--watch-interval": "0.5", "--graceful-timeout": "3",
             "--limits-store": "redis://10.0.0.5:6380/2", "--limits-fail": "closed"}
    result = CliRunner().invoke(app, ["serve", "--run", str(duet_run), *[x for kv in flags.items() for x in kv]])
    assert result.exit_code == 0, result.output
    assert "auth on (1 tokens)" in result.output and "A1b2C3d4E5f6G7h8I9j0" not in result.output
    assert f"answers signed by key {signer.public_key.id}" in result.output
    (settings,) = captured
    assert settings.model_dump(exclude={"tokens"}) == {
        "run": duet_run, "host": "0.0.0.0", "port": 1234, "workers": 2, "max_batch": 7, "max_wait_ms": 3.5,
        "min_rows": 8, "threads": 2, "device": "auto", "executor": "thread", "log_level": "info", "tokens_file": tokens,
        "max_body_bytes": 4096, "max_window": 33, "request_timeout_s": 2.5, "max_queue": 99,
        "header_timeout_s": 1.5, "max_connections": 300, "rate_limit": 12.5,
        "rate_burst": 7.0, "limits_store": "redis://10.0.0.5:6380/2", "limits_fail": "closed", "watch_interval_s": 0.5, "graceful_timeout_s": 3.0, "debug_delay_ms": 0.0,
        "sign_key": key}
    assert settings.auth_tokens() == ["A1b2C3d4E5f6G7h8I9j0"]
    result = CliRunner().invoke(app, ["serve", "--run", str(duet_run / "stage1")])
    assert result.exit_code == 2 and "needs a DUET run" in result.output


def test_batcher_bounds_its_queue_and_forgets_cancelled_requests() -> None:
    from duet.cloud.batcher import MicroBatcher, QueueFull

    async def main() -> None:
        batcher = MicroBatcher(lambda rows: rows * 2, max_batch=2, max_wait=0.0, max_queue=3, delay=0.2)
        first = asyncio.ensure_future(batcher.submit(np.array([1])))
        await asyncio.sleep(0.01)  # the first forward is running (held for 0.2 s)
        waiting = [asyncio.ensure_future(batcher.submit(np.array([i]))) for i in (2, 3, 4)]
        await asyncio.sleep(0)
        assert batcher.pending == 3
        with pytest.raises(QueueFull):
            await batcher.submit(np.array([5]))
        waiting[0].cancel()  # a request that gave up leaves its place
        await asyncio.sleep(0)
        sixth = asyncio.ensure_future(batcher.submit(np.array([6])))
        assert (await first).tolist() == [2]
        assert [(await w).tolist() for w in waiting[1:]] + [(await sixth).tolist()] == [[6], [8], [12]]
        assert batcher.pending == 0
        await batcher.close()

    asyncio.run(main())


# ---------------------------------------------------------------- fuzzing: schemathesis and hypothesis

# Item ids are strict JSON integers (issue 31: 1.0 is not item 1), although JSON Schema 2020-12 counts
# 2.0 as an integer; schemathesis spells integers as whole floats in JSON bodies to catch a reader that
# refuses them, so that spelling is turned off (test_bad_requests pins the refusal; the schema says it).
@mock.patch("schemathesis.specs.openapi._hypothesis._carries_json", new=lambda _media_type: False)
def run_schemathesis(url: str, examples: int, headers: dict[str, str] | None = None,
                     max_body_bytes: int | None = None) -> tuple[list, Counter]:
    """Schemathesis' whole engine (examples, coverage, fuzzing and stateful phases, valid and invalid
    data, every built-in check) against a live service; returns (failures, statuses by operation), a
    failure as (operation, check, title, status, body).

    `max_body_bytes`: the service's body limit. A schema cannot bound a body's bytes, so a schema-valid
    window of long floats (`-1.2345678901234567e+38`) can be over the limit; its 413 is then an answer
    the service documents, not a rejected valid request."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.config import SchemathesisConfig
    from schemathesis.engine import from_schema

    # A fixed seed: the same requests on every machine (a fresh clone has no example database), so the
    # counts asserted below cannot change from run to run.
    # A schema-violating body over --max-body-bytes is refused with 413 before it is read: a rejection too.
    accepted = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis' default
    config = SchemathesisConfig.from_dict({"seed": 20261121, "checks": {
        "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx"]},
        "positive_data_acceptance": {"expected-statuses": accepted + ["413"] * (max_body_bytes is not None)},
        # schemathesis' own list of rejections, plus 413
        "negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413", "415",
                                                          "422", "428", "429", "5xx"]}}})
    schema = schemathesis.openapi.from_url(url + "/openapi.json", config=config)
    schema.config.update(base_url=url, headers=headers)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=examples, database="none")
    failures, statuses = [], Counter()
    for event in from_schema(schema).execute():
        kind = type(event).__name__
        assert kind not in ("FatalError", "NonFatalError"), event
        recorder = getattr(event, "recorder", None)
        if kind != "ScenarioFinished" or recorder is None:
            continue
        for interaction in recorder.interactions.values():
            if interaction.response is None:
                continue
            status = interaction.response.status_code
            statuses[(recorder.label, status)] += 1
        for case_id, checks in recorder.checks.items():
            for check in checks:
                if check.status.name == "FAILURE":
                    title = check.failure_info.failure.title if check.failure_info else ""
                    interaction = recorder.interactions.get(case_id)
                    status = interaction.response.status_code if interaction and interaction.response else None
                    failures.append((recorder.label, check.name, title, status,
                                     str(recorder.cases[case_id].value.body)[:200]))
    return failures, statuses


def test_service_conforms_to_its_schema(service: ServiceProcess) -> None:
    """Generated requests for every operation, valid and invalid: no 5xx,
    every answer conforms to the schema (status documented, body, headers, content type), invalid
    requests are refused and valid ones accepted."""
    failures, statuses = run_schemathesis(service.url, examples=60)
    assert failures == []
    operations = {label for label, _ in statuses}
    assert operations == {"POST /v1/parameters", "GET /v1/models", "GET /healthz", "GET /readyz", "GET /metrics"}
    assert statuses[("POST /v1/parameters", 200)] > 10 and statuses[("POST /v1/parameters", 422)] > 10, statuses


def _json_values() -> object:
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10),
                                                                                              inner, max_size=6),
                        max_leaves=30)


def test_random_json_bodies_get_a_named_4xx_never_a_5xx(service: ServiceProcess) -> None:
    """Arbitrary JSON, and valid bodies with one field replaced by arbitrary JSON: a 200 or a 4xx of the
    one error shape that names a field; never a 5xx."""
    import http.client
    from urllib.parse import urlparse

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = _json_values()
    valid = {"device_id": "fuzz", "window": [1, 2, 3], "dtype": "fp16"}
    bodies = st.one_of(
        values,
        st.builds(lambda key, value: {**valid, key: value},
                  st.sampled_from(["device_id", "window", "dtype", "version", "embedding", "samples", "extra"]),
                  values),
        st.builds(lambda items: {**valid, "window": items}, st.lists(values | st.integers(-5, NUM_ITEMS + 5),
                                                                     max_size=12)),
        # Privacy mode: rows of about the run's feature width (8), now and then not finite.
        st.builds(lambda rows: {"device_id": "fuzz", "embedding": rows},
                  st.lists(st.lists(st.floats(-1e3, 1e3) | st.floats(), min_size=7, max_size=9), max_size=12)),
        # Mostly valid windows (every id in range, now and then one out): the success path, fuzzed.
        st.builds(lambda items, dtype: {**valid, "window": items, "dtype": dtype},
                  st.lists(st.integers(0, NUM_ITEMS), max_size=12), st.sampled_from(["fp32", "fp16"])),
    )
    address = urlparse(service.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    statuses: set[int] = set()

    @given(body=bodies)
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def answers(body: object) -> None:
        connection.request("POST", "/v1/parameters", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        statuses.add(response.status)
        assert response.status in (200, 409, 422), (response.status, payload[:300])
        if response.status != 200:
            error = json.loads(payload)["error"]
            assert set(error) == {"code", "message", "field", "errors"} and error["message"]
            assert error["field"], error  # every refusal of a body names the field at fault
            assert error["errors"][0]["field"] == error["field"]

    try:
        answers()
    finally:
        connection.close()
    assert {200, 422} <= statuses
