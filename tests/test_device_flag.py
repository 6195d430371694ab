"""`--device`: cpu is the default and gives the same results; cuda without a GPU is a one-line error
before anything is written. (No GPU here: the CUDA path itself is not exercised by these tests.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import train_tiny_run
from typer.testing import CliRunner

from duet.accel import resolve_device
from duet.cli import app
from duet.errors import DuetError

runner = CliRunner()
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@no_gpu
def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused() -> None:
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DuetError, match=f"--device {name}: no CUDA device is available"):
            resolve_device(name)
    with pytest.raises(DuetError, match="--device must be one of cpu, cuda, auto"):
        resolve_device("gpu")


@no_gpu
@pytest.mark.parametrize("command", ["train", "evaluate", "serve", "generate"])
def test_cuda_without_a_gpu_is_a_one_line_error(command: str, duet_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    argv = {"train": ["--data", str(tiny_data), "--out", str(tmp_path / "run")],
            "evaluate": ["--run", str(duet_run)], "serve": ["--run", str(duet_run), "--port", "0"],
            "generate": ["--run", str(duet_run), "--window", "1,2"]}[command]
    before = sorted(p.name for p in duet_run.iterdir())
    result = runner.invoke(app, [command, *argv, "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "--device cuda: no CUDA device is available" in one_line(result.stderr)
    assert not (tmp_path / "run").exists() and sorted(p.name for p in duet_run.iterdir()) == before


def test_device_cpu_is_the_default(tiny_data: Path, tmp_path: Path) -> None:
    """Training and evaluation on an explicit --device cpu give exactly the default's weights and metrics."""
    from duet.config import ModelConfig, TrainConfig
    from duet.training.loop import run_config_for, train

    default = train_tiny_run(tiny_data, tmp_path / "default", method="base")
    config = run_config_for(tiny_data, model=ModelConfig(backbone="sasrec", embed_dim=8, num_blocks=1, dropout=0.0),
                            generator=None, train=TrainConfig(method="base", epochs=1, batch_size=256, threads=1,
                                                              device="cpu"))
    assert config.train.device == "cpu"
    train(config, tmp_path / "cpu", progress=False)
    assert (default / "model.safetensors").read_bytes() == (tmp_path / "cpu" / "model.safetensors").read_bytes()
    metrics = []
    for argv in ([], ["--device", "cpu"]):
        result = runner.invoke(app, ["evaluate", "--run", str(default), "--split", "valid", "--json", *argv])
        assert result.exit_code == 0, result.output
        metrics.append(json.loads(result.stdout))
    assert metrics[0] == metrics[1]
