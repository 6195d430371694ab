"""Recommendation as a task: records grouped by event, binary cross-entropy, uauc.

The parts themselves live in duet.data (format, protocols), duet.models (backbones,
Recommender) and duet.training (batches, evaluation, fine-tuning, full ranking)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from duet.data.store import Dataset, Split, load_dataset
from duet.training.batches import Batch, EventBatcher, with_sampled_negatives
from duet.training.evaluate import evaluate, score_batch


class RecommendationTask:
    name = "recommendation"
    select_metric = "uauc"

    def load(self, path: str | Path, splits: tuple[str, ...]) -> Dataset:
        return load_dataset(path, splits=splits)

    def batcher(self, data: Dataset, config) -> EventBatcher:
        return EventBatcher(data["train"], config.train.batch_size)

    def loss(self, model: nn.Module, batch: Batch, data: Dataset, config, device: torch.device) -> tuple[Tensor, int]:
        if config.train.sampled_negatives:  # drawn on the CPU: the random stream does not depend on the device
            batch = with_sampled_negatives(batch, config.train.sampled_negatives, data.num_items)
        batch = batch.to(device)
        return F.binary_cross_entropy_with_logits(score_batch(model, batch), batch.label), len(batch.item)

    def evaluate(self, model: nn.Module, split: Split, config) -> dict[str, float]:
        return evaluate(model, split, config.train.eval_batch_size)
