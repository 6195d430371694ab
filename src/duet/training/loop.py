"""`duet train`: the base model (UMN), a task's own baselines (e.g. popularity) and DUET stage 2.

Model selection and early stopping use the task's validation metric only; the test
split is never loaded here. A run can be resumed after a crash: its state is
saved atomically at every epoch end and every epoch's randomness is derived
from (seed, epoch), so a resumed run ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from duet.atomic import sha256_file, write_json
from duet.checkpoint import (
    WEIGHTS,
    build_model,
    load_run,
    load_tensors,
    save_tensors,
    write_manifest,
)
from duet.config import GRADIENT_METHODS, RunConfig, TrainConfig
from duet.errors import ArtifactError, DuetError
from duet.spec import ParamSpec
from duet.task import Task, load_task, task_of_run
from duet.training.distributed import World, close_world, init_world

log = logging.getLogger("duet.train")
STATE_DIR = "state"


def run_config_for(data: str | Path, task: Task | None = None, **sections: object) -> RunConfig:
    """A RunConfig whose dataset facts (task, its facts, W, hash) come from the dataset manifest."""
    from duet.task import builder_of

    manifest = read_dataset_manifest(data)
    builder = builder_of(manifest, Path(data) / "manifest.json")
    options = dict(manifest.get("builder_options") or {})
    task = task or load_task(builder, options)
    return RunConfig(data=str(Path(data).resolve()), data_hash=sha256_file(Path(data) / "manifest.json"),
                     task=task.name, builder=builder, builder_options=options, facts=task.facts(manifest),
                     window_len=manifest["window_len"], **sections)


def read_dataset_manifest(data: str | Path) -> dict:
    """Any task's dataset manifest (every one records its task, builder and window length W)."""
    from duet.manifest import read_any_manifest

    return read_any_manifest(data, "duet dataset (run `duet prepare`)", ("task", "window_len"))


def train(config: RunConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train one run into `out`; return its summary (best epoch and validation metrics)."""
    from duet.accel import resolve_device

    device = resolve_device(config.train.device)  # a missing GPU fails here, before anything is written
    world = init_world(nccl=device.type == "cuda")
    try:
        return _train(config, Path(out), resume, progress, world)
    finally:
        close_world(world)


def _train(config: RunConfig, out: Path, resume: bool, progress: bool, world: World) -> dict:
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    _prepare_out(config, out, resume, world)
    task = task_of_run(config)
    data = task.load(config.data, ("train", "valid"))  # never the test split
    if data.hash != config.data_hash:
        raise ArtifactError(f"{config.data}: dataset changed since this run was configured (manifest hash differs)")
    torch.manual_seed(config.train.seed)
    gradients = trained_by_loop(config, task)
    if not gradients:
        model: nn.Module = task.fit_without_gradients(config, data)
        summary = {"best_epoch": 0, "valid": task.evaluate(model, data["valid"], config)}
        history: list[dict] = []
    else:
        model = build_model(config, task)
        if config.train.method == "duet" and not config.train.from_scratch:
            _init_stage1(model, config, out, resume, progress, world)
        summary, history = fit(model.to(_rank_device(config, world)), data, config, out, resume, progress, world, task)
    if world.is_main:
        if not gradients:
            save_tensors(out / WEIGHTS, model.state_dict())
        write_json(out / "history.json", history)
        write_json(out / "metrics_valid.json", summary["valid"])
        write_manifest(out, {"task": config.task, "builder": config.builder,
                             "method": config.train.method, "backbone": config.model.backbone,
                             "best_epoch": summary["best_epoch"], "data_hash": config.data_hash})
    world.barrier()
    return summary


def _prepare_out(config: RunConfig, out: Path, resume: bool, world: World) -> None:
    config_file = out / "config.json"
    if (out / "manifest.json").exists():
        raise DuetError(f"{out}: a finished run is already there; choose another --out")
    if config_file.exists():
        if not resume:
            raise DuetError(f"{out}: an unfinished run is there; pass --resume to continue it")
        saved = RunConfig.model_validate_json(config_file.read_text())
        if saved != config:
            raise DuetError(f"{config_file}: --resume with a different configuration than the saved one")
    elif resume and (out / STATE_DIR).exists():
        raise DuetError(f"{out}: no config.json to resume from")
    # Every rank has seen the folder as it was before rank 0 writes to it: without
    # this, a slower rank could find rank 0's fresh config.json and refuse to start.
    world.barrier()
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(config_file, json.loads(config.model_dump_json()))
        spec = head_spec(config)
        write_json(out / "param_spec.json", {"hash": spec.hash, "params": spec.to_json()})
    world.barrier()


def trained_by_loop(config: RunConfig, task: Task) -> bool:
    """Whether the run's method is trained here (base, duet, a task's own gradient method)."""
    return config.train.method in (*GRADIENT_METHODS, *task.gradient_methods)


def head_spec(config: RunConfig) -> ParamSpec:
    """The ParamSpec of a run's dynamic head, from its config alone (the task builds the device model)."""
    task = task_of_run(config)
    if not trained_by_loop(config, task):
        return ParamSpec(())
    return task.build(config).param_spec


def _init_stage1(model: nn.Module, config: RunConfig, out: Path, resume: bool, progress: bool, world: World) -> None:
    """DUET stage 1: the global model, from `--init RUN` or trained here into out/stage1."""
    if config.train.init_run is None:
        stage1 = out / "stage1"
        if not (stage1 / "manifest.json").exists():
            # Stage 1 is a base run: the base schedule (lr, epochs, patience), the rest as given.
            carried = config.train.model_dump(exclude={"method", "lr", "epochs", "patience", "freeze_static",
                                                       "init_run", "from_scratch"})
            base = config.model_copy(update={"generator": None, "train": TrainConfig(method="base", **carried)})
            log.info("DUET stage 1: training the global model into %s", stage1)
            _train(base, stage1, resume and (stage1 / "config.json").exists(), progress, world)
        init_run = stage1
    else:
        init_run = Path(config.train.init_run)
    base_config, base_model, _ = load_run(init_run)
    if base_config.train.method != "base" or base_config.model != config.model or base_config.data_hash != config.data_hash:
        raise DuetError(f"{init_run}: --init needs a base run of the same model config on the same dataset")
    model.device_model.load_state_dict(base_model.state_dict())
    if config.train.freeze_static:
        # The shipped static part (and theta_g) stay exactly the global model's.
        model.device_model.requires_grad_(False)


def fit(model: nn.Module, data: Any, config: RunConfig, out: Path, resume: bool, progress: bool,
        world: World, task: Task | None = None) -> tuple[dict, list[dict]]:
    """Mini-batch Adam with gradient clipping; early stopping on the task's validation metric (the
    epoch where it is best: highest, or lowest for a task whose metric is an error)."""
    task = task or task_of_run(config)
    select = task.select_metric
    tc = config.train
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    state = {"epoch": -1, "best": float("-inf"), "best_epoch": -1, "bad_epochs": 0, "lr": tc.lr, "history": []}
    if resume and (out / STATE_DIR / "state.json").exists():
        state = _load_state(out / STATE_DIR, model, optimizer)
        log.info("resuming %s after epoch %d", out, state["epoch"])
    _set_lr(optimizer, state.setdefault("lr", tc.lr))
    device = _rank_device(config, world)
    ids = [device.index] if device.type == "cuda" else None
    trainer = nn.parallel.DistributedDataParallel(model, device_ids=ids) if world.size > 1 else model
    batcher = task.batcher(data, config)
    for epoch in range(state["epoch"] + 1, tc.epochs):
        if state["bad_epochs"] >= tc.patience:
            break
        torch.manual_seed(tc.seed * 1_000_003 + epoch)  # dropout: identical after a restart
        epoch_lr = state["lr"]
        model.train()
        started, seen, total_loss = time.perf_counter(), 0, 0.0
        n_batches = batcher.num_batches() // world.size
        with _progress(progress and world.is_main) as bar:
            bar_task = bar.add_task(f"epoch {epoch}", total=n_batches, loss=float("nan"), speed=0.0)
            for batch in batcher.shuffled(tc.seed, epoch, world.rank, world.size):
                loss, records = task.loss(trainer, batch, data, config, device)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, tc.clip_norm)
                optimizer.step()
                seen += records
                total_loss += loss.item() * records
                bar.update(bar_task, advance=1, loss=total_loss / seen, speed=seen / (time.perf_counter() - started))
        train_seconds = time.perf_counter() - started
        metrics = task.evaluate(model, data["valid"], config) if world.is_main else None
        metrics = world.broadcast(metrics)
        score = metrics[select] if task.higher_is_better else -metrics[select]  # state["best"]: higher is better
        improved = score > state["best"]
        if improved:
            state.update(best=score, best_epoch=epoch, bad_epochs=0)
            if world.is_main:
                save_tensors(out / WEIGHTS, model.state_dict())
        else:
            state["bad_epochs"] += 1
            if tc.lr_schedule == "plateau":
                state["lr"] *= tc.lr_decay
                _set_lr(optimizer, state["lr"])
        state["epoch"] = epoch
        state["history"].append({
            "epoch": epoch, "loss": total_loss / max(seen, 1), "records_per_s": seen * world.size / train_seconds,
            "seconds": train_seconds, "lr": epoch_lr,
            **{f"valid_{k}": v for k, v in metrics.items()},
        })
        log.info("epoch %d  loss %.4f  valid %s %.4f  %s", epoch, total_loss / max(seen, 1),
                 select, metrics[select], "*" if improved else "")
        if world.is_main:
            _save_state(out / STATE_DIR, model, optimizer, state)
        world.barrier()
    if state["best_epoch"] < 0:
        raise DuetError("no epoch was completed; increase --epochs")
    model.load_state_dict(load_tensors(out / WEIGHTS))
    best = state["history"][[h["epoch"] for h in state["history"]].index(state["best_epoch"])]
    valid = {k.removeprefix("valid_"): v for k, v in best.items() if k.startswith("valid_")}
    return {"best_epoch": state["best_epoch"], "valid": valid}, state["history"]


def _rank_device(config: RunConfig, world: World) -> torch.device:
    """This process's device: under torchrun with CUDA, the GPU of its local rank."""
    import os

    from duet.accel import resolve_device

    device = resolve_device(config.train.device)
    if device.type == "cuda" and world.size > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[speed]:,.0f} rec/s"),
        TimeRemainingColumn(), disable=not enabled, transient=True,
    )


def _save_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Weights + optimizer moments as safetensors, counters as JSON (state.json last: it commits)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for index, moments in optimizer.state_dict()["state"].items():
        tensors.update({f"optim.{index}.{k}": torch.as_tensor(v) for k, v in moments.items()})
    save_tensors(folder / "state.safetensors", tensors)
    write_json(folder / "state.json", state)


def _load_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    tensors = load_tensors(folder / "state.safetensors")
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    moments: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": moments, "param_groups": optimizer.state_dict()["param_groups"]})
    return json.loads((folder / "state.json").read_text())
