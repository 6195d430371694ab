"""Images as a task for the shared train loop: batches of samples with their device's
window, cross-entropy, accuracy selected on validation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from duet.tasks.images.metrics import classification_metrics
from duet.tasks.images.store import ImageData, ImageSplit
from duet.training.distributed import model_device, rank_share, unwrap


@dataclass
class ImageBatch:
    x: Tensor  # (B, C, H, W)
    y: Tensor  # (B,) long
    window: Tensor  # (B, W, C, H, W)
    mask: Tensor  # (B, W) bool
    rows: np.ndarray  # (B,) sample rows

    def to(self, device: torch.device) -> ImageBatch:
        if device.type == "cpu":
            return self
        return ImageBatch(x=self.x.to(device), y=self.y.to(device), window=self.window.to(device),
                          mask=self.mask.to(device), rows=self.rows)


def make_batch(data: ImageData, rows: np.ndarray, y: np.ndarray, window_len: int) -> ImageBatch:
    index, mask = data.window_rows(rows, window_len)
    return ImageBatch(x=torch.from_numpy(data.x[rows]), y=torch.from_numpy(np.asarray(y, dtype=np.int64)),
                      window=torch.from_numpy(data.x[index]), mask=torch.from_numpy(mask), rows=rows)


class ImageBatcher:
    """Shuffled mini-batches of a split's samples; the order depends on (seed, epoch) only."""

    def __init__(self, split: ImageSplit, batch_size: int, window_len: int):
        self.split, self.batch_size, self.window_len = split, batch_size, window_len

    def num_batches(self) -> int:
        return max(1, -(-len(self.split) // self.batch_size))

    def batches(self, order: np.ndarray | None = None) -> Iterator[ImageBatch]:
        order = np.arange(len(self.split)) if order is None else order
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            yield make_batch(self.split.data, self.split.rows[chunk], self.split.y[chunk], self.window_len)

    def shuffled(self, seed: int, epoch: int, rank: int = 0, world: int = 1) -> Iterator[ImageBatch]:
        order = np.random.default_rng([seed, epoch]).permutation(len(self.split))
        yield from rank_share(self.batches(order), rank, world)


def logits_of(model: nn.Module, batch: ImageBatch) -> Tensor:
    from duet.duet_model import DuetModel

    if isinstance(unwrap(model), DuetModel):
        return model(batch.x, window=batch.window, mask=batch.mask)
    return model(batch.x)


@torch.no_grad()
def predict_images(model: nn.Module, split: ImageSplit, batch_size: int = 1024,
                   window_len: int | None = None) -> np.ndarray:
    """Logits (N, classes) of a split's scored samples; `window_len` overrides the dataset's W."""
    was_training = model.training
    model.eval()

    W = window_len or split.data.window_len
    batcher = ImageBatcher(split, batch_size, W)
    device = model_device(model)
    out = np.concatenate([logits_of(model, batch.to(device)).cpu().numpy() for batch in batcher.batches()])
    model.train(was_training)
    return out


def device_groups(split: ImageSplit) -> dict[str, np.ndarray]:
    """Boolean masks over a split's records: seen / unseen devices and each shift type."""
    devices = split.data.device_info()
    kind = np.array([devices[d]["kind"] for d in split.device])
    shift = np.array([devices[d]["shift"]["type"] for d in split.device])
    groups = {"seen": kind == "seen", "unseen": kind == "unseen"}
    groups.update({t: shift == t for t in sorted(set(shift.tolist()))})
    for i, name in enumerate(split.data.manifest.get("class_names", [])):  # per class, where the fleet names them
        groups[f"unseen_{name}"] = (kind == "unseen") & (split.y == i)
    return groups


def evaluate_images(model: nn.Module, split: ImageSplit, batch_size: int = 1024,
                    window_len: int | None = None) -> dict[str, float]:
    logits = predict_images(model, split, batch_size, window_len)
    return classification_metrics(split.y, logits, device_groups(split))
