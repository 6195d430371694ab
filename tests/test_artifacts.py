"""Safe artifacts: nothing is ever unpickled; datasets and runs verify their hashes."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

import duet

SOURCE = Path(duet.__file__).parent
UNPICKLING = re.compile(r"\btorch\.load\b|\bimport pickle\b|\bfrom pickle\b|\bpickle\.loads?\b|allow_pickle\s*=\s*True|\bjoblib\b|\bdill\b")


# The one reader of a pickle: the sensor data's restricted unpickler, which rebuilds numpy arrays
# only and refuses every other global (tests/test_sensors_data.py feeds it a malicious pickle).
RESTRICTED_UNPICKLER = ("tasks/sensors/hapt.py", "import pickle")


def test_no_unpickling_anywhere_in_the_package():
    offenders = [f"{path.relative_to(SOURCE)}:{n}" for path in SOURCE.rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1) if UNPICKLING.search(line)
                 and (str(path.relative_to(SOURCE)), line.strip()) != RESTRICTED_UNPICKLER]
    assert offenders == []
    text = (SOURCE / RESTRICTED_UNPICKLER[0]).read_text()
    assert "class HaptUnpickler(pickle._Unpickler)" in text and "def find_class" in text


@pytest.fixture
def no_pickle(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    import torch

    monkeypatch.setattr(torch, "load", refuse)


def test_loading_datasets_and_runs_never_unpickles(tiny_dir, tmp_path, no_pickle):
    del no_pickle
    from duet.checkpoint import load_run
    from duet.config import ModelConfig, TrainConfig
    from duet.tasks.recommendation.data.store import load_dataset
    from duet.training.loop import run_config_for, train

    load_dataset(tiny_dir)
    config = run_config_for(tiny_dir, model=ModelConfig(embed_dim=8, num_blocks=1),
                            train=TrainConfig(epochs=1, threads=1))
    train(config, tmp_path / "run", progress=False)
    load_run(tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_dataset_file_is_refused(tiny_dir, tmp_path, damage):
    import shutil

    from duet.errors import ArtifactError
    from duet.tasks.recommendation.data.store import load_dataset

    data = tmp_path / "data"
    shutil.copytree(tiny_dir, data)
    target = data / "train.safetensors"
    raw = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        target.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    else:
        target.unlink()
    with pytest.raises(ArtifactError, match="train.safetensors"):
        load_dataset(data)


def test_a_run_scores_another_recommendation_dataset_only_with_its_item_vocabulary(duet_run, tmp_path):
    """Other events over the same catalogue are scored (an item id means the same item); a dataset whose
    vocabulary maps ids to other items is refused in one line, as is one of other facts."""
    import json

    import numpy as np
    from conftest import NUM_ITEMS, USERS, write_tiny_dataset

    from duet.errors import ArtifactError
    from duet.tasks.recommendation.data.store import load_dataset, write_dataset
    from duet.training.evaluation import evaluate_run

    other = write_tiny_dataset(tmp_path / "other", seed=5)
    assert evaluate_run(duet_run, "test", data=other)["n_records"] > 0
    splits = {name: load_dataset(other)[name] for name in ("train", "valid", "test")}
    (tmp_path / "shuffled").mkdir()
    write_dataset(tmp_path / "shuffled", splits, np.arange(NUM_ITEMS)[::-1] * 10, np.arange(USERS),
                  {"kind": "synthetic-test"}, {})
    with pytest.raises(ArtifactError, match="another item vocabulary than the run's"):
        evaluate_run(duet_run, "test", data=tmp_path / "shuffled")
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "history_len": manifest["history_len"] + 1}))
    with pytest.raises(ArtifactError, match="its history_len"):
        evaluate_run(duet_run, "test", data=other)
