"""Scoring a split with any duet model and computing its metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from duet.metrics import compute_metrics
from duet.tasks.recommendation.batches import Batch, EventBatcher
from duet.tasks.recommendation.data.store import Split
from duet.training.distributed import model_device, unwrap
from duet.training.evaluation import head_suffix

METRIC_KS = (10,)


def score_batch(model: nn.Module, batch: Batch) -> Tensor:
    """Logits (B,) of any duet model: DUET models also take the real-time window."""
    from duet.duet_model import DuetModel

    if isinstance(unwrap(model), DuetModel):
        return model(batch.history, batch.item, batch.inverse, window=batch.window)
    return model(batch.history, batch.item, batch.inverse)


@torch.inference_mode()
def predict(model: nn.Module, split: Split, batch_size: int = 8192) -> np.ndarray:
    """Logits for every record of `split`, in record order (the model's device, numpy on the CPU)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    logits = np.empty(len(split), dtype=np.float32)
    for batch in EventBatcher(split, batch_size).batches():
        logits[batch.records] = score_batch(model, batch.to(device)).cpu().numpy()
    model.train(was_training)
    return logits


def evaluate(model: nn.Module, split: Split, batch_size: int = 8192) -> dict[str, float]:
    """All metrics of a split; ranking metrics are over each user's candidate list."""
    logits = predict(model, split, batch_size)
    return compute_metrics(split.label, logits, split.user, ks=METRIC_KS)


def user_auc_file(run: str | Path, split: str, head: str = "generated") -> Path:
    """Where `evaluate_run` keeps the per-user AUCs behind a run's uauc (for paired intervals)."""
    return Path(run) / f"user_auc_{split}{head_suffix(head)}.json"


def scores_file(run: str | Path, split: str, head: str = "generated") -> Path:
    """Where `evaluate_run` keeps a run's per-record logits (`line`, `logits`): reports that
    slice the records (by how many items a device has seen) score them without the model."""
    return Path(run) / f"scores_{split}{head_suffix(head)}.safetensors"


def write_scores(run: Path, split_name: str, head: str, split: Split, logits: np.ndarray) -> None:
    """The per-user AUCs (for paired intervals) and the per-record logits of a scored split."""
    from safetensors.numpy import save_file

    from duet.atomic import atomic_path, write_json
    from duet.report.stats import per_user_auc

    aucs = per_user_auc(split.label, logits, split.user)
    write_json(user_auc_file(run, split_name, head), {str(u): round(a, 6) for u, a in aucs.items()})
    with atomic_path(scores_file(run, split_name, head)) as tmp:
        save_file({"line": split.line.astype(np.int64), "logits": logits.astype(np.float32)}, str(tmp))
