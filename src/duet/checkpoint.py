"""Run directories: safetensors weights + JSON config/manifest, verified on load.

A run folder describes itself:

    config.json        RunConfig (rebuilds the modules)
    param_spec.json    the dynamic head's ParamSpec (+ its hash)
    model.safetensors  the selected (best-on-validation) weights
    history.json       per-epoch loss and validation metrics
    manifest.json      kind, method, best epoch, sha256 of every file above

Nothing is ever unpickled: weights are safetensors, everything else JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from duet.atomic import atomic_path, sha256_file, write_json
from duet.config import RunConfig
from duet.duet_model import DuetModel
from duet.errors import ArtifactError
from duet.manifest import read_manifest, verify_all
from duet.task import Task, builder_of, task_of_run, task_options

RUN_FORMAT = "duet-run/1"
WEIGHTS = "model.safetensors"


def build_model(config: RunConfig, task: Task | None = None) -> nn.Module:
    """The task's device model for base runs, a DuetModel around it for DUET runs, and what the
    task fits without gradients for its own methods (e.g. popularity)."""
    task = task or task_of_run(config)
    task_options(task, config)  # options the task does not take are refused before anything is built
    device_model = task.build(config)  # for a task's own method (not base or duet), that method's model
    if config.train.method != "duet":
        return device_model
    if config.generator is None:
        raise ArtifactError("a DUET run config needs a `generator` section")
    return DuetModel(device_model, config.window_len, config.generator)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from None


def write_manifest(run: Path, extra: dict) -> dict:
    files = sorted(p.name for p in run.iterdir() if p.is_file() and p.name != "manifest.json" and not p.name.startswith("."))
    manifest = {"format": RUN_FORMAT, **extra, "files": {name: sha256_file(run / name) for name in files}}
    write_json(run / "manifest.json", manifest)
    return manifest


def read_run_manifest(run: str | Path) -> dict:
    return read_manifest(run, RUN_FORMAT, "finished duet run")


def is_finished_run(run: str | Path) -> bool:
    """A finished run has a valid manifest (written last, so an interrupted run has none)."""
    try:
        read_run_manifest(run)
        return True
    except ArtifactError:
        return False


def verify_run(run: str | Path) -> dict:
    """Check every file listed in the manifest against its sha256; return the manifest."""
    manifest = read_run_manifest(run)
    verify_all(run, manifest)
    return manifest


def load_config(run: str | Path) -> RunConfig:
    file = Path(run) / "config.json"
    try:
        raw = json.loads(file.read_text())
        if isinstance(raw, dict):
            builder_of(raw, file)  # a run from before tasks were plug-ins: say what to redo
        return RunConfig.model_validate(raw)
    except FileNotFoundError:
        raise ArtifactError(f"{file}: missing") from None
    except ValueError as exc:
        first = str(exc).splitlines()
        raise ArtifactError(f"{file}: invalid run config ({'; '.join(first[:3])})") from None


def load_run(run: str | Path, task: Task | None = None) -> tuple[RunConfig, nn.Module, dict]:
    """Verify, rebuild and load a run's selected model (eval mode); the task is the run's recorded one."""
    run = Path(run)
    manifest = verify_run(run)
    unlisted = [name for name in ("config.json", WEIGHTS) if name not in manifest.get("files", {})]
    if unlisted:  # an unlisted file would be loaded unverified
        raise ArtifactError(f"{run / 'manifest.json'}: does not list the sha256 of {', '.join(unlisted)}")
    config = load_config(run)
    model = build_model(config, task)
    state = load_tensors(run / WEIGHTS)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{run / WEIGHTS}: weights do not fit config.json ({str(exc).splitlines()[0]})") from None
    model.eval()
    return config, model, manifest


def model_version(run: str | Path) -> str:
    """Short id of a finished run: `<run dir name>-<12 hex of sha256(manifest.json)>`.

    The manifest lists the sha256 of the weights and config, so a retrained or
    modified run gets a new version; the cloud and the bundle derive it alike.
    """
    run = Path(run).resolve()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run.name).strip("-.")[:40] or "run"
    return f"{name}-{sha256_file(run / 'manifest.json')[:12]}"
