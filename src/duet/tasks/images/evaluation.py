"""`duet evaluate` for image runs: metrics overall, per device kind and shift type,
and per-device accuracies (the unit of the paired intervals in `duet compare`)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from duet.atomic import write_json
from duet.config import RunConfig
from duet.tasks.fleet.batches import predict_samples
from duet.tasks.fleet.store import FleetSplit
from duet.tasks.fleet.task import fleet_dataset
from duet.tasks.images.armbn import METHOD as ARMBN
from duet.tasks.images.armbn import context_logits
from duet.tasks.images.metrics import classification_metrics, device_groups, per_group_accuracy


def device_accuracy_file(run: str | Path, split: str, suffix: str = "") -> Path:
    return Path(run) / f"device_accuracy_{split}{suffix}.json"


def evaluate_image_run(run: str | Path, config: RunConfig, model: nn.Module, split: str,
                       data: str | Path | None = None, suffix: str = "",
                       window_len: int | None = None) -> dict[str, float]:
    """Score `split` with a loaded image model; write metrics_<split>.json and per-device accuracies."""
    records = fleet_dataset(config, data, (split,))[split]
    if config.train.method == ARMBN:  # each device normalised with its window's statistics, as trained
        logits = context_logits(model, records, window_len or config.window_len)
    else:
        logits = predict_samples(model, records, config.train.eval_batch_size, window_len or config.window_len)
    metrics = classification_metrics(records.y, logits, device_groups(records))
    if window_len is None:
        write_json(Path(run) / f"metrics_{split}{suffix}.json", metrics)
        accuracy = per_group_accuracy(records.y, logits.argmax(1), records.device)
        write_json(device_accuracy_file(run, split, suffix), {str(d): round(a, 6) for d, a in accuracy.items()})
    return metrics


def evaluate_images(model: nn.Module, split: FleetSplit, batch_size: int = 1024,
                    window_len: int | None = None) -> dict[str, float]:
    logits = predict_samples(model, split, batch_size, window_len)
    return classification_metrics(split.y, logits, device_groups(split))
