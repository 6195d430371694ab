"""Training, evaluation, checkpoints, fine-tuning and the CLI flags, on a MovieLens subset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from duet.checkpoint import is_finished_run, load_run
from duet.config import GeneratorConfig, ModelConfig, TrainConfig
from duet.data.store import load_dataset
from duet.errors import ArtifactError
from duet.training.evaluate import evaluate_run, predict
from duet.training.loop import run_config_for, train

SMALL = {"embed_dim": 16, "num_blocks": 1}


def _train(data: Path, out: Path, method: str = "base", backbone: str = "sasrec", epochs: int = 2, **kw) -> dict:
    gen = kw.pop("generator", GeneratorConfig(num_generators=2) if method == "duet" else None)
    train_cfg = TrainConfig(method=method, epochs=epochs, lr=3e-3, threads=1, **kw)
    config = run_config_for(data, model=ModelConfig(backbone=backbone, **SMALL), train=train_cfg, generator=gen)
    return train(config, out, progress=False)


@pytest.fixture(scope="module")
def base_run(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "base"
    _train(tiny_dir, out, epochs=4)
    return out


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "din"])
def test_every_backbone_beats_popularity_on_valid(tiny_dir, tmp_path, backbone):
    pop = _train(tiny_dir, tmp_path / "pop", method="pop")
    model = _train(tiny_dir, tmp_path / backbone, backbone=backbone, epochs=6)
    assert model["valid"]["uauc"] > pop["valid"]["uauc"], (model["valid"], pop["valid"])


def test_checkpoint_round_trip_gives_identical_scores(base_run, tiny_dir):
    data = load_dataset(tiny_dir, splits=("valid",))
    _, first, _ = load_run(base_run)
    _, second, _ = load_run(base_run)
    a, b = predict(first, data["valid"]), predict(second, data["valid"])
    assert np.array_equal(a, b)
    saved = json.loads((base_run / "metrics_valid.json").read_text())
    assert evaluate_run(base_run, "valid")["uauc"] == pytest.approx(saved["uauc"], abs=1e-12)


def test_tampered_checkpoint_is_refused(base_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(base_run, copy)
    raw = bytearray((copy / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="sha256"):
        load_run(copy)


def test_training_never_reads_the_test_split(tiny_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dir, data)
    (data / "test.safetensors").write_bytes(b"not a dataset")  # reading it would fail the hash check
    _train(data, tmp_path / "run", epochs=1)
    _train(data, tmp_path / "duet", method="duet", epochs=1, init_run=str(tmp_path / "run"))
    with pytest.raises(ArtifactError, match="test.safetensors"):
        evaluate_run(tmp_path / "run", "test")


def test_same_seed_same_result(tiny_dir, tmp_path):
    a = _train(tiny_dir, tmp_path / "a", epochs=1, seed=3)
    b = _train(tiny_dir, tmp_path / "b", epochs=1, seed=3)
    c = _train(tiny_dir, tmp_path / "c", epochs=1, seed=4)
    assert a["valid"] == b["valid"]
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert a["valid"]["uauc"] != c["valid"]["uauc"]


def test_duet_with_frozen_static_keeps_the_global_model(base_run, tiny_dir, tmp_path):
    out = tmp_path / "duet"
    _train(tiny_dir, out, method="duet", epochs=1, init_run=str(base_run), freeze_static=True)
    _, base, _ = load_run(base_run)
    _, duet, _ = load_run(out)
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, duet.recommender.state_dict()[name]), name
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and 0.5 < history[0]["valid_uauc"] <= 1


def test_finetuning_never_changes_the_global_model(base_run, tiny_dir):
    from duet.training.finetune import FinetuneConfig, finetune, finetune_device

    _, model, _ = load_run(base_run)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_split = load_dataset(tiny_dir, splits=("train",))["train"]
    mine = train_split.select(train_split.user == train_split.user[0])
    tuned = finetune_device(model, mine, FinetuneConfig(base_run=str(base_run), data=str(tiny_dir), steps=5, lr=1e-2))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items())
    summary = finetune(FinetuneConfig(base_run=str(base_run), data=str(tiny_dir), steps=2, max_devices=5), progress=False)
    assert summary["devices"] == 5 and summary["seconds_per_device"]["p50"] > 0
    assert 0 <= summary["metrics"]["uauc"] <= 1


def test_head_only_finetuning_changes_only_the_head(base_run, tiny_dir):
    from duet.training.finetune import FinetuneConfig, finetune_device

    _, model, _ = load_run(base_run)
    split = load_dataset(tiny_dir, splits=("train",))["train"]
    mine = split.select(split.user == split.user[0])
    cfg = FinetuneConfig(base_run=str(base_run), data=str(tiny_dir), steps=3, lr=1e-2, scope="head")
    tuned = finetune_device(model, mine, cfg)
    for name, value in tuned.state_dict().items():
        changed = not torch.equal(value, model.state_dict()[name])
        assert changed == name.startswith("global_params."), name


def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_dir, tmp_path):
    """A real `duet train` subprocess killed mid-epoch, then resumed, ends like an uninterrupted run."""
    args = ["--data", str(tiny_dir), "--epochs", "4", "--embed-dim", "16", "--num-blocks", "1", "--seed", "5",
            "--threads", "1", "--batch-size", "64", "--no-progress"]
    cmd = [sys.executable, "-m", "duet", "train"]
    subprocess.run([*cmd, *args, "--out", str(tmp_path / "full")], check=True, capture_output=True)
    proc = subprocess.Popen([*cmd, *args, "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "state" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not state.exists():
        time.sleep(0.05)
    time.sleep(0.3)  # now inside epoch 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists()
    assert not is_finished_run(tmp_path / "killed") and is_finished_run(tmp_path / "full")
    subprocess.run([*cmd, *args, "--out", str(tmp_path / "killed"), "--resume"], check=True, capture_output=True)
    assert is_finished_run(tmp_path / "killed")
    full = json.loads((tmp_path / "full" / "metrics_valid.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "metrics_valid.json").read_text())
    assert full == resumed
    assert (tmp_path / "full/model.safetensors").read_bytes() == (tmp_path / "killed/model.safetensors").read_bytes()


def test_existing_run_is_not_overwritten(base_run, tiny_dir):
    from duet.errors import DuetError

    with pytest.raises(DuetError, match="already there"):
        _train(tiny_dir, base_run, epochs=1)


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process_quality(tiny_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--data", str(tiny_dir), "--epochs", "3", "--embed-dim", "16", "--num-blocks", "1",
            "--threads", "1", "--no-progress", "--lr", "3e-3"]
    torchrun = Path(sys.executable).parent / "torchrun"
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "duet", "train", *args,
                    "--out", str(tmp_path / "ddp")], check=True, capture_output=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "duet", "train", *args, "--out", str(tmp_path / "single")],
                   check=True, capture_output=True, env=env, timeout=300)
    ddp = json.loads((tmp_path / "ddp" / "metrics_valid.json").read_text())
    single = json.loads((tmp_path / "single" / "metrics_valid.json").read_text())
    assert abs(ddp["uauc"] - single["uauc"]) < 0.03, (ddp["uauc"], single["uauc"])
    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert all(h["records_per_s"] > 0 for h in history)


def test_training_end_to_end_on_the_reference_text_format(tiny_dir, tmp_path):
    from duet.data.prepare import prepare_dataset
    from duet.data.textformat import export_text

    export_text(tiny_dir, tmp_path / "train.txt", tmp_path / "test.txt")
    imported = tmp_path / "imported"
    prepare_dataset(imported, "duet-text", train=tmp_path / "train.txt", test=tmp_path / "test.txt")
    for backbone in ("sasrec", "din"):
        summary = _train(imported, tmp_path / backbone, backbone=backbone, epochs=2)
        assert 0.5 < summary["valid"]["uauc"] <= 1.0
    assert 0.5 < evaluate_run(tmp_path / "sasrec", "test")["uauc"] <= 1.0
    _train(imported, tmp_path / "duet", method="duet", epochs=1, init_run=str(tmp_path / "sasrec"))
    assert 0.5 < evaluate_run(tmp_path / "duet", "test")["uauc"] <= 1.0
