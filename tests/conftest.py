"""Shared fixtures. The prepared datasets are built once per test session.

The serving tests (cloud, device, export, simulate, reliability) share a tiny
synthetic dataset, one DUET run trained on it (stage 1 included, one epoch
each) and its device bundle, built on first use; they import the sizes
(`from conftest import NUM_ITEMS, W`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from duet.config import ProtocolConfig

# Small enough for fast training tests: ~60 users of MovieLens, short sequences.
TINY_PROTOCOL = ProtocolConfig(history_len=20, window_len=5)
TINY_USERS = 60


@pytest.fixture(scope="session")
def movielens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """movielens-small prepared with the default protocol (about half a second)."""
    from duet.tasks.recommendation.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "movielens"
    prepare_dataset(out, "movielens-small")
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60 users of movielens-small, L=20, W=5 (default k-core, negatives, split)."""
    from duet.tasks.recommendation.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare_dataset(out, "movielens-small", protocol=TINY_PROTOCOL, max_users=TINY_USERS)
    return out


# ---------------------------------------------------------------- serving: tiny dataset, DUET run, bundle

NUM_ITEMS, USERS, L, W = 60, 12, 8, 4
_BUILT: dict[str, Path] = {}


def write_tiny_dataset(out: Path, seed: int = 0) -> Path:
    """Per-user chronological events; the positive is the item after the history (learnable)."""
    from duet.tasks.recommendation.data.store import Split, tail_window, write_dataset

    rng = np.random.default_rng(seed)

    def split(events: int, first_line: int) -> Split:
        lengths = rng.integers(1, L + 1, events)
        history = rng.integers(1, NUM_ITEMS, (events, L))
        history[np.arange(L)[None, :] >= lengths[:, None]] = 0
        window = tail_window(history, W)
        event = np.repeat(np.arange(events), 3)
        item = rng.integers(1, NUM_ITEMS, events * 3)
        item[::3] = (history[np.arange(events), lengths - 1] % (NUM_ITEMS - 1)) + 1
        label = np.zeros(events * 3, np.float32)
        label[::3] = 1
        return Split(user=(event % USERS).astype(np.int32), item=item, label=label, event=event,
                     line=first_line + np.arange(events * 3), history=history, window=window)

    out.mkdir(parents=True)
    write_dataset(out, {"train": split(240, 0), "valid": split(36, 10_000), "test": split(48, 20_000)},
                  np.arange(NUM_ITEMS) * 10 - 10, np.arange(USERS), {"kind": "synthetic-test"}, {})
    return out


def train_export_and_check_tiny(tmp: Path, options: list[str], lengths: tuple[int, ...]) -> tuple[object, object]:
    """`duet train` (base, then DUET from it) on the tiny dataset with `options`, `duet export`, and
    onnxruntime against torch on histories of `lengths` with generated heads; (model, bundle)."""
    import torch
    from typer.testing import CliRunner

    from duet.checkpoint import load_run
    from duet.cli import app
    from duet.device.bundle import Bundle

    data = write_tiny_dataset(tmp / "data")
    common = ["--data", str(data), *options, "--embed-dim", "8", "--num-blocks", "1", "--dropout", "0",
              "--epochs", "1", "--batch-size", "256", "--threads", "1", "--no-progress"]
    for args in (["--out", str(tmp / "base")],
                 ["--out", str(tmp / "duet"), "--method", "duet", "--init", str(tmp / "base"),
                  "--gen-hidden", "8", "--layer-embed-dim", "4", "--decoder-hidden", "8"],
                 ["--run", str(tmp / "duet"), "--out", str(tmp / "bundle")]):
        result = CliRunner().invoke(app, ["export" if "--run" in args else "train", *(args if "--run" in args
                                                                                       else [*common, *args])])
        assert result.exit_code == 0, result.output
    _, model, _ = load_run(tmp / "duet")
    bundle = Bundle(tmp / "bundle")
    gen = torch.Generator().manual_seed(0)
    for length in lengths:
        history = torch.zeros(1, L, dtype=torch.long)
        history[0, :length] = torch.randint(1, NUM_ITEMS, (length,), generator=gen)
        window = torch.randint(1, NUM_ITEMS, (1, W), generator=gen)
        items = torch.randint(1, NUM_ITEMS, (7,), generator=gen)
        with torch.no_grad():
            params = model.generate(window)
            expected = model.device_model(history, items, torch.zeros_like(items), params).numpy()
        got = bundle.run({"history": history[0].numpy(), "items": items.numpy()},  # the whole history
                         {k: v.numpy() for k, v in params.items()})["logits"]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    return model, bundle


def train_tiny_run(data: Path, out: Path, method: str = "duet", backbone: str = "sasrec", seed: int = 0) -> Path:
    from duet.config import GeneratorConfig, ModelConfig, TrainConfig
    from duet.training.loop import run_config_for, train

    config = run_config_for(
        data,
        model=ModelConfig(backbone=backbone, embed_dim=8, num_blocks=1, dropout=0.0),
        generator=GeneratorConfig(hidden_dim=8, layer_embed_dim=4, decoder_hidden=8) if method == "duet" else None,
        train=TrainConfig(method=method, epochs=1, batch_size=256, threads=1, seed=seed),
    )
    train(config, out, progress=False)
    return out


def built(factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Dataset, DUET run and bundle, made on first use and shared by every module that imports these."""
    if not _BUILT:
        from duet.export import export_bundle

        root = factory.mktemp("serving")
        data = write_tiny_dataset(root / "data")
        run = train_tiny_run(data, root / "duet-run")
        export_bundle(run, root / "bundle")
        _BUILT.update(data=data, run=run, bundle=root / "bundle")
    return _BUILT


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built(tmp_path_factory)["data"]


@pytest.fixture(scope="session")
def duet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built(tmp_path_factory)["run"]


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built(tmp_path_factory)["bundle"]


# ---------------------------------------------------------------- serving images: tiny fleet, DUET run, bundle

IMAGE_W = 4
_BUILT_IMAGES: dict[str, Path] = {}


def built_images(factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small digits fleet (W = 4), an image DUET run trained one epoch on it and its bundle, made once."""
    if not _BUILT_IMAGES:
        from duet.config import GeneratorConfig, ModelConfig, TrainConfig
        from duet.export import export_bundle
        from duet.tasks.images.fleet import FleetConfig, prepare_fleet
        from duet.training.loop import run_config_for, train

        root = factory.mktemp("serving-images")
        fleet = FleetConfig(seen_devices=6, unseen_valid_devices=2, unseen_test_devices=2, train_per_device=12,
                            valid_per_device=8, test_per_device=8, unseen_per_device=8, adapt=3, window_len=IMAGE_W)
        prepare_fleet(root / "data", "digits-fleet", fleet)
        config = run_config_for(
            root / "data", model=ModelConfig(backbone="cnn", embed_dim=8, dropout=0.0),
            generator=GeneratorConfig(encoder="mean", hidden_dim=8, layer_embed_dim=4, decoder_hidden=8),
            train=TrainConfig(method="duet", epochs=1, batch_size=32, threads=1),
        )
        train(config, root / "duet-run", progress=False)
        export_bundle(root / "duet-run", root / "bundle")
        _BUILT_IMAGES.update(data=root / "data", run=root / "duet-run", bundle=root / "bundle")
    return _BUILT_IMAGES


@pytest.fixture(scope="session")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_images(tmp_path_factory)["run"]


@pytest.fixture(scope="session")
def image_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_images(tmp_path_factory)["bundle"]


# ---------------------------------------------------------------- a real redis-server (shared rate limits)

@pytest.fixture
def redis_server():
    """A throwaway redis-server on a free loopback port, killed at the end.

    Without redis-server the test is skipped with the reason in the summary
    (pytest -ra); under CI (CI=true), where .ci/run installs it, it fails instead.
    """
    import os

    from duet.redis_process import INSTALL_HINT, RedisProcess, redis_server_path

    if redis_server_path() is None:
        message = f"redis-server not installed: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with RedisProcess() as server:
        yield server
