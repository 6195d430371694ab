"""Per-device fine-tuning baseline: the cost DUET removes.

For each device (user): copy the global model, train `steps` Adam steps on the
device's own labeled records from before the evaluated period, score its
candidates, discard the copy. Wall time and peak memory are recorded per device.

`split="valid"` fine-tunes on train records and scores valid candidates (for
choosing steps/lr/scope); `split="test"` fine-tunes on train+valid and scores test.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from rich.progress import track

from duet.atomic import write_json
from duet.checkpoint import load_run, write_manifest
from duet.config import Strict
from duet.errors import DuetError
from duet.memory import reset_peak_rss, rss_bytes
from duet.metrics import compute_metrics
from duet.tasks.recommendation.batches import EventBatcher
from duet.tasks.recommendation.data.store import Split, load_dataset
from duet.tasks.recommendation.evaluate import METRIC_KS, predict, write_scores
from duet.tasks.recommendation.models.recommender import Recommender


class FinetuneConfig(Strict):
    base_run: str
    data: str
    split: str = Field("test", pattern="^(valid|test)$")
    steps: int = Field(10, ge=0, description="Adam steps per device")
    lr: float = Field(1e-3, gt=0)
    scope: str = Field("all", pattern="^(all|head)$", description="train the whole model or the head only")
    batch_size: int = Field(256, ge=1, description="records per step (cycled over the device's records)")
    # As base training does: extra uniform negatives per event, drawn afresh at every step (0: the
    # dataset's own negatives only, as before this option).
    sampled_negatives: int = Field(0, ge=0, description="extra uniform negatives per event, new every step")
    max_devices: int | None = Field(None, ge=1, description="only the first N devices (for timing)")
    seed: int = 0
    # One thread: a phone fine-tunes on one core, and DUET's generation is timed on one too.
    threads: int = Field(1, ge=1)


@dataclass
class DeviceCost:
    seconds: float
    peak_bytes: int


def finetune_device(model: Recommender, records: Split, cfg: FinetuneConfig) -> Recommender:
    """A fine-tuned copy of `model` on one device's records; `model` itself is never changed.
    With `sampled_negatives`, each step adds fresh uniform negatives (torch's seeded generator)."""
    from duet.tasks.recommendation.batches import with_sampled_negatives

    local = copy.deepcopy(model)
    local.train()
    params = list(local.global_params.values()) if cfg.scope == "head" else list(local.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    batches = list(EventBatcher(records, cfg.batch_size).batches())
    for step in range(cfg.steps):
        batch = batches[step % len(batches)]
        if cfg.sampled_negatives:
            batch = with_sampled_negatives(batch, cfg.sampled_negatives, model.num_items)
        loss = F.binary_cross_entropy_with_logits(local(batch.history, batch.item, batch.inverse), batch.label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    local.eval()
    return local


def finetune(cfg: FinetuneConfig, out: str | Path | None = None, progress: bool = True) -> dict:
    """Fine-tune every device of the evaluated split; return metrics and per-device costs."""
    config, model, _ = load_run(cfg.base_run)
    if not isinstance(model, Recommender):
        raise DuetError(f"{cfg.base_run}: fine-tuning starts from a base run, not a {config.train.method} run")
    own = ("train",) if cfg.split == "valid" else ("train", "valid")
    data = load_dataset(cfg.data, splits=(*own, cfg.split))
    if data.hash != config.data_hash:
        raise DuetError(f"{cfg.data}: not the dataset the base run was trained on")
    torch.manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _finetune_all(cfg, config, model, data, own, out, progress)
    finally:
        torch.set_num_threads(threads)


def _finetune_all(cfg: FinetuneConfig, config, model: Recommender, data, own: tuple[str, ...],
                  out: str | Path | None, progress: bool) -> dict:
    evaluated = data[cfg.split]
    users = np.unique(evaluated.user)[: cfg.max_devices]
    owned = {name: data[name] for name in own}
    logits = np.full(len(evaluated), np.nan, dtype=np.float32)
    costs: list[DeviceCost] = []
    can_measure = reset_peak_rss()
    for user in track(users, description="fine-tuning devices", disable=not progress):
        parts = [s.select(s.user == user) for s in owned.values()]
        parts = [p for p in parts if len(p)]
        mine = evaluated.user == user
        if not parts:  # no labeled data on the device: it keeps the global model
            logits[mine] = predict(model, evaluated.select(mine))
            continue
        device_data = parts[0] if len(parts) == 1 else _concat(parts)
        reset_peak_rss()
        before = rss_bytes("VmRSS")
        started = time.perf_counter()
        local = finetune_device(model, device_data, cfg)
        seconds = time.perf_counter() - started
        peak = rss_bytes("VmHWM") - before if can_measure else 0
        costs.append(DeviceCost(seconds, max(peak, 0)))
        logits[mine] = predict(local, evaluated.select(mine))
        del local
    done = ~np.isnan(logits)
    metrics = compute_metrics(evaluated.label[done], logits[done], evaluated.user[done], ks=METRIC_KS)
    seconds = np.array([c.seconds for c in costs])
    peaks = np.array([c.peak_bytes for c in costs])
    summary = {
        "config": cfg.model_dump(mode="json"),
        "split": cfg.split,
        "metrics": metrics,
        "devices": len(costs),
        "seconds_per_device": {"mean": float(seconds.mean()), "p50": float(np.median(seconds)),
                               "p99": float(np.quantile(seconds, 0.99))} if len(costs) else {},
        "peak_bytes_per_device": {"mean": float(peaks.mean()), "max": int(peaks.max())} if len(costs) else {},
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.model_dump(mode="json"))
        write_json(out / f"metrics_{cfg.split}.json", metrics)
        write_json(out / "finetune.json", summary)
        write_scores(out, cfg.split, "generated", evaluated.select(done), logits[done])
        write_manifest(out, {"method": "finetune", "backbone": config.model.backbone, "base_run": cfg.base_run})
    return summary


def _concat(parts: list[Split]) -> Split:
    offsets = np.cumsum([0] + [p.num_events for p in parts[:-1]])
    return Split(
        user=np.concatenate([p.user for p in parts]), item=np.concatenate([p.item for p in parts]),
        label=np.concatenate([p.label for p in parts]),
        event=np.concatenate([p.event + o for p, o in zip(parts, offsets, strict=True)]),
        line=np.concatenate([p.line for p in parts]),
        history=np.concatenate([p.history for p in parts]), window=np.concatenate([p.window for p in parts]),
    )
