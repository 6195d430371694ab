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
from typer.testing import CliRunner

import duet.tasks.recommendation.task as recommendation
import duet.training.loop as loop
from duet.checkpoint import is_finished_run, load_run, read_run_manifest
from duet.cli import app
from duet.config import GeneratorConfig, ModelConfig, TrainConfig
from duet.errors import ArtifactError
from duet.metrics import compute_metrics
from duet.tasks.recommendation.data.store import PAD, load_dataset
from duet.tasks.recommendation.evaluate import evaluate, predict
from duet.tasks.recommendation.options import TrainOptions
from duet.training.evaluation import evaluate_run
from duet.training.loop import run_config_for, train

SMALL = {"embed_dim": 16, "num_blocks": 1}


def _train(data: Path, out: Path, method: str = "base", backbone: str = "sasrec", epochs: int = 2, **kw) -> dict:
    gen = kw.pop("generator", GeneratorConfig(num_generators=2) if method == "duet" else None)
    # Few-epoch checks of the machinery: fixed negatives only (fresh sampled negatives,
    # the default, slow the first epochs on a 60-user set; checked on their own below).
    options = {"sampled_negatives": kw.pop("sampled_negatives", 0)}  # the recommendation task's own option
    train_cfg = TrainConfig(method=method, epochs=epochs, lr=3e-3, threads=1, **kw)
    config = run_config_for(data, model=ModelConfig(backbone=backbone, **SMALL), train=train_cfg, generator=gen,
                            options=options)
    return train(config, out, progress=False)


@pytest.fixture(scope="module")
def base_run(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "base"
    _train(tiny_dir, out, epochs=4)
    return out


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "din"])
def test_every_backbone_beats_popularity_on_valid(tiny_dir, tmp_path, backbone):
    pop = _train(tiny_dir, tmp_path / "pop", method="pop")
    model = _train(tiny_dir, tmp_path / backbone, backbone=backbone, epochs=6,
                   sampled_negatives=TrainOptions().sampled_negatives)  # the defaults learn
    assert model["valid"]["uauc"] > pop["valid"]["uauc"], (model["valid"], pop["valid"])
    _, trained, _ = load_run(tmp_path / backbone)
    assert torch.count_nonzero(trained.item_embedding.weight[PAD]) == 0  # padding stays zero through training


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
        assert torch.equal(tensor, duet.device_model.state_dict()[name]), name
    history = json.loads((out / "history.json").read_text())
    # residual mode starts at theta_g: one epoch over a frozen static part stays near the global model
    base_valid = json.loads((base_run / "metrics_valid.json").read_text())["uauc"]
    assert len(history) == 1 and abs(history[0]["valid_uauc"] - base_valid) < 0.05


def test_finetuning_never_changes_the_global_model(base_run, tiny_dir):
    from duet.tasks.recommendation.finetune import FinetuneConfig, finetune, finetune_device

    _, model, _ = load_run(base_run)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_split = load_dataset(tiny_dir, splits=("train",))["train"]
    mine = train_split.select(train_split.user == train_split.user[0])
    tuned = finetune_device(model, mine, FinetuneConfig(base_run=str(base_run), data=str(tiny_dir), steps=5, lr=1e-2))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items())
    def tuned_metrics(steps: int) -> dict:
        cfg = FinetuneConfig(base_run=str(base_run), data=str(tiny_dir), steps=steps, lr=1e-2, max_devices=5)
        summary = finetune(cfg, progress=False)
        assert summary["devices"] == 5 and summary["seconds_per_device"]["p50"] > 0
        return summary["metrics"]

    # No step: exactly the global model's metrics on those five devices' test records; two steps: others.
    test = load_dataset(tiny_dir, splits=("test",))["test"]
    five = test.select(np.isin(test.user, np.unique(test.user)[:5]))
    assert tuned_metrics(0) == pytest.approx(compute_metrics(five.label, predict(model, five), five.user), abs=1e-6)
    assert tuned_metrics(2)["logloss"] != tuned_metrics(0)["logloss"]


@pytest.mark.parametrize(("split", "own"), [("test", ("train", "valid")), ("valid", ("train",))])
def test_finetuning_trains_only_on_the_devices_own_earlier_records(base_run, tiny_dir, monkeypatch, split, own):
    """For the test split a device tunes on its train and valid records, for the valid split on its train
    records: all of them, never another device's, never the split it is scored on."""
    import duet.tasks.recommendation.finetune as finetune_module

    seen = {}
    real = finetune_module.finetune_device

    def record(model, records, cfg):
        (user,) = np.unique(records.user)
        seen[int(user)] = np.sort(records.line)
        return real(model, records, cfg)

    monkeypatch.setattr(finetune_module, "finetune_device", record)
    cfg = finetune_module.FinetuneConfig(base_run=str(base_run), data=str(tiny_dir), split=split, steps=1, max_devices=4)
    finetune_module.finetune(cfg, progress=False)
    data = load_dataset(tiny_dir)
    assert list(seen) == np.unique(data[split].user)[:4].tolist()
    for user, lines in seen.items():
        expected = np.concatenate([data[name].line[data[name].user == user] for name in own])
        np.testing.assert_array_equal(lines, np.sort(expected))


def test_head_only_finetuning_changes_only_the_head(base_run, tiny_dir):
    from duet.tasks.recommendation.finetune import FinetuneConfig, finetune_device

    _, model, _ = load_run(base_run)
    split = load_dataset(tiny_dir, splits=("train",))["train"]
    mine = split.select(split.user == split.user[0])
    cfg = FinetuneConfig(base_run=str(base_run), data=str(tiny_dir), steps=3, lr=1e-2, scope="head")
    tuned = finetune_device(model, mine, cfg)
    for name, value in tuned.state_dict().items():
        changed = not torch.equal(value, model.state_dict()[name])
        assert changed == name.startswith("global_params."), name


def test_finetuning_with_sampled_negatives_sees_items_beyond_the_devices_own(base_run, tiny_dir, monkeypatch):
    """sampled_negatives adds fresh uniform negatives at every step, as base training does."""
    import duet.tasks.recommendation.batches as batches_module
    from duet.tasks.recommendation.finetune import FinetuneConfig, finetune_device

    _, model, _ = load_run(base_run)
    split = load_dataset(tiny_dir, splits=("train",))["train"]
    mine = split.select(split.user == split.user[0])
    sizes = []
    real = batches_module.with_sampled_negatives

    def record(batch, per_event, num_items):
        out = real(batch, per_event, num_items)
        sizes.append((len(batch.item), len(out.item), per_event, num_items))
        return out

    monkeypatch.setattr(batches_module, "with_sampled_negatives", record)
    cfg = FinetuneConfig(base_run=str(base_run), data=str(tiny_dir), steps=3, lr=1e-2)
    torch.manual_seed(0)
    plain = finetune_device(model, mine, cfg)
    assert sizes == []
    torch.manual_seed(0)
    sampled = finetune_device(model, mine, cfg.model_copy(update={"sampled_negatives": 4}))
    assert len(sizes) == 3 and all(after > before and k == 4 and n == model.num_items
                                   for before, after, k, n in sizes)
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), sampled.state_dict().values(),
                                                     strict=True))


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
    ddp_run = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "duet", "train", *args,
                              "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=300)
    assert ddp_run.returncode == 0, ddp_run.stderr[-3000:]  # say why, if torchrun ever fails
    subprocess.run([sys.executable, "-m", "duet", "train", *args, "--out", str(tmp_path / "single")],
                   check=True, capture_output=True, env=env, timeout=300)
    ddp = json.loads((tmp_path / "ddp" / "metrics_valid.json").read_text())
    single = json.loads((tmp_path / "single" / "metrics_valid.json").read_text())
    assert abs(ddp["uauc"] - single["uauc"]) < 0.03, (ddp["uauc"], single["uauc"])
    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert all(h["records_per_s"] > 0 for h in history)


def test_training_end_to_end_on_the_reference_text_format(tiny_dir, tmp_path):
    from duet.tasks.recommendation.data.prepare import prepare_dataset
    from duet.tasks.recommendation.data.textformat import export_text

    export_text(tiny_dir, tmp_path / "train.txt", tmp_path / "test.txt")
    imported = tmp_path / "imported"
    prepare_dataset(imported, "duet-text", train=tmp_path / "train.txt", test=tmp_path / "test.txt")
    for backbone in ("sasrec", "din"):
        summary = _train(imported, tmp_path / backbone, backbone=backbone, epochs=2)
        assert 0.5 < summary["valid"]["uauc"] <= 1.0
    assert 0.5 < evaluate_run(tmp_path / "sasrec", "test")["uauc"] <= 1.0
    _train(imported, tmp_path / "duet", method="duet", epochs=1, init_run=str(tmp_path / "sasrec"))
    assert 0.5 < evaluate_run(tmp_path / "duet", "test")["uauc"] <= 1.0


# ---------------------------------------------------------------- what the loop kept, epoch by epoch

class Epochs:
    """Stands in for the loop's per-epoch validation: keeps a copy of the weights it is given (the
    model after each epoch) and, when scripted, reports the next scripted uauc instead of the real one."""

    def __init__(self, uauc: list[float] | None):
        self.states: list[dict[str, torch.Tensor]] = []
        self.uauc = uauc

    def __call__(self, model, split, batch_size):
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        metrics = evaluate(model, split, batch_size)
        if self.uauc is not None:
            metrics["uauc"] = self.uauc[len(self.states) - 1]
        return metrics


@pytest.fixture
def epochs(monkeypatch):
    """epochs(uauc=None) -> the Epochs recorder, installed in the training loop."""

    def install(uauc: list[float] | None = None) -> Epochs:
        recorder = Epochs(uauc)
        monkeypatch.setattr(recommendation, "evaluate", recorder)  # the recommendation task's validation
        return recorder

    return install


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    differ = [name for name in got if not torch.equal(got[name], want[name])]
    assert differ == [], differ


def test_saved_model_is_the_best_valid_epoch_not_the_last(tiny_dir, tmp_path, epochs):
    script = [0.60, 0.80, 0.70, 0.75]  # best at epoch 1; the last is better than its predecessor
    seen = epochs(script)
    run = tmp_path / "run"
    summary = _train(tiny_dir, run, epochs=len(script), patience=len(script))
    history = json.loads((run / "history.json").read_text())
    assert [h["valid_uauc"] for h in history] == script
    best = int(np.argmax(script))
    assert summary["best_epoch"] == read_run_manifest(run)["best_epoch"] == best
    assert json.loads((run / "metrics_valid.json").read_text())["uauc"] == script[best]
    _, model, _ = load_run(run)
    assert_same_tensors(model.state_dict(), seen.states[best])
    assert any(not torch.equal(v, seen.states[-1][k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("patience", "ran", "best"), [(1, 3, 1), (4, 8, 5)])
def test_training_stops_after_patience_epochs_without_a_gain(tiny_dir, tmp_path, epochs, patience, ran, best):
    script = [0.60, 0.70, 0.70, 0.69, 0.65, 0.90, 0.80, 0.85]  # a tie is no gain
    seen = epochs(script)
    summary = _train(tiny_dir, tmp_path / "run", epochs=len(script), patience=patience)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(seen.states) == len(history) == ran
    assert summary["best_epoch"] == best


def _cli_train(data: Path, out: Path, *args: str):
    """`duet train` in process with the SMALL model, one thread, no progress bar."""
    return CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), "--embed-dim",
                                    str(SMALL["embed_dim"]), "--num-blocks", str(SMALL["num_blocks"]), "--threads",
                                    "1", "--no-progress", *args])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_refuses_a_finished_or_foreign_run(base_run, tiny_dir, tmp_path):
    unfinished = tmp_path / "unfinished"  # a run killed after its last epoch, before its manifest
    assert _cli_train(tiny_dir, unfinished, "--epochs", "1").exit_code == 0
    (unfinished / "manifest.json").unlink()
    stray = tmp_path / "stray"  # training state without a config: not a run of duet train
    (stray / "state").mkdir(parents=True)
    cases = [
        (base_run, [], "a finished run is already there"),
        (unfinished, ["--seed", "1"], "different configuration than the saved one"),
        (unfinished, ["--backbone", "gru4rec"], "different configuration than the saved one"),
        (stray, [], "no config.json to resume from"),
    ]
    for out, args, message in cases:
        before = _snapshot(out)
        result = _cli_train(tiny_dir, out, "--resume", "--epochs", "1", *args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], (out, args, result.output)
        assert _snapshot(out) == before  # nothing touched
    # The same configuration is resumed (and finished): the refusals above were about the run, not the flags.
    assert _cli_train(tiny_dir, unfinished, "--resume", "--epochs", "1").exit_code == 0
    assert is_finished_run(unfinished)


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "joint"])
def test_duet_train_trains_the_generator(base_run, tiny_dir, tmp_path, monkeypatch, epochs, freeze):
    """`duet train --method duet`: every generator tensor moves from its initial value, the heads depend
    on the window, and load_run gives back exactly the weights of the selected epoch."""
    from duet.checkpoint import build_model, load_config

    initial = []

    def build(config, task=None):
        model = build_model(config, task)
        initial.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(loop, "build_model", build)
    seen = epochs()
    base = load_config(base_run).model
    out = tmp_path / "duet"
    args = ["--method", "duet", "--init", str(base_run), "--epochs", "2", "--patience", "2", "--lr", "1e-2",
            "--dropout", str(base.dropout), "--num-heads", str(base.num_heads), "--activation", base.activation,
            "--num-generators", "2", *(["--freeze-static"] if freeze else [])]
    result = _cli_train(tiny_dir, out, *args)
    assert result.exit_code == 0, result.output
    _, model, manifest = load_run(out)
    trained = model.state_dict()
    assert_same_tensors(trained, seen.states[manifest["best_epoch"]])
    (start,) = initial
    generator = [name for name in trained if name.startswith("generator.")]
    assert generator and [n for n in generator if torch.equal(trained[n], start[n])] == []
    _, global_model, _ = load_run(base_run)
    static = {f"device_model.{k}": v for k, v in global_model.state_dict().items()}
    assert all(torch.equal(trained[k], v) for k, v in static.items()) == freeze  # joint moves the static part
    assert torch.count_nonzero(model.device_model.item_embedding.weight[PAD]) == 0

    windows = np.unique(load_dataset(tiny_dir, splits=("valid",))["valid"].window, axis=0)
    windows = torch.from_numpy(windows[(windows != PAD).sum(1) >= 2][:6].astype(np.int64))
    assert len(windows) == 6
    with torch.no_grad():
        heads = model.generate(windows)
    for name, value in heads.items():
        flat = value.reshape(len(windows), -1)
        distance = torch.cdist(flat, flat) + torch.eye(len(windows))
        assert bool((distance > 0).all()), f"{name}: two windows got the same head"


def test_sampled_negatives_are_fresh_labelled_zero_and_attached_to_their_event():
    from duet.tasks.recommendation.batches import Batch, with_sampled_negatives

    batch = Batch(history=torch.ones(3, 4, dtype=torch.long), window=torch.ones(3, 2, dtype=torch.long),
                  item=torch.tensor([5, 6, 7, 8]), label=torch.tensor([1.0, 0.0, 1.0, 1.0]),
                  inverse=torch.tensor([0, 0, 1, 2]), records=np.arange(4))
    torch.manual_seed(0)
    first = with_sampled_negatives(batch, 5, num_items=50)
    assert torch.equal(first.item[:4], batch.item) and torch.equal(first.label[:4], batch.label)
    assert first.label[4:].sum() == 0 and len(first.item) == 4 + 3 * 5
    assert torch.equal(first.inverse[4:], torch.tensor([0] * 5 + [1] * 5 + [2] * 5))
    assert ((first.item[4:] >= 1) & (first.item[4:] < 50)).all()  # never the padding item
    second = with_sampled_negatives(batch, 5, num_items=50)
    assert not torch.equal(first.item[4:], second.item[4:])  # new draws every call


def test_sampled_negatives_change_training_and_are_reproducible(tiny_dir, tmp_path):
    a = _train(tiny_dir, tmp_path / "a", epochs=1, sampled_negatives=3)
    b = _train(tiny_dir, tmp_path / "b", epochs=1, sampled_negatives=3)
    c = _train(tiny_dir, tmp_path / "c", epochs=1, sampled_negatives=0)
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert (tmp_path / "a/model.safetensors").read_bytes() != (tmp_path / "c/model.safetensors").read_bytes()
    history = json.loads((tmp_path / "a/history.json").read_text())
    assert a["valid"] == b["valid"] and history[0]["loss"] != json.loads((tmp_path / "c/history.json").read_text())[0]["loss"]
    assert c["valid"] != a["valid"]
