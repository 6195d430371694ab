"""A sample fleet for the shared train loop: batches of samples with their device's window
(its W most recent samples, unlabelled), and the model's outputs on a split."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from duet.tasks.fleet.store import FleetData, FleetSplit
from duet.training.distributed import model_device, rank_share, unwrap


@dataclass
class SampleBatch:
    x: Tensor  # (B, *sample shape)
    y: Tensor  # (B,) long classes or float targets
    window: Tensor  # (B, W, *sample shape)
    mask: Tensor  # (B, W) bool
    rows: np.ndarray  # (B,) sample rows

    def to(self, device: torch.device) -> SampleBatch:
        if device.type == "cpu":
            return self
        return SampleBatch(x=self.x.to(device), y=self.y.to(device), window=self.window.to(device),
                          mask=self.mask.to(device), rows=self.rows)


def make_batch(data: FleetData, rows: np.ndarray, y: np.ndarray, window_len: int) -> SampleBatch:
    index, mask = data.window_rows(rows, window_len)
    return SampleBatch(x=torch.from_numpy(data.x[rows]), y=torch.from_numpy(np.asarray(y)),
                      window=torch.from_numpy(data.x[index]), mask=torch.from_numpy(mask), rows=rows)


class SampleBatcher:
    """Shuffled mini-batches of a split's samples; the order depends on (seed, epoch) only."""

    def __init__(self, split: FleetSplit, batch_size: int, window_len: int):
        self.split, self.batch_size, self.window_len = split, batch_size, window_len

    def num_batches(self) -> int:
        return max(1, -(-len(self.split) // self.batch_size))

    def batches(self, order: np.ndarray | None = None) -> Iterator[SampleBatch]:
        order = np.arange(len(self.split)) if order is None else order
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            yield make_batch(self.split.data, self.split.rows[chunk], self.split.y[chunk], self.window_len)

    def shuffled(self, seed: int, epoch: int, rank: int = 0, world: int = 1) -> Iterator[SampleBatch]:
        order = np.random.default_rng([seed, epoch]).permutation(len(self.split))
        yield from rank_share(self.batches(order), rank, world)


def logits_of(model: nn.Module, batch: SampleBatch) -> Tensor:
    from duet.duet_model import DuetModel

    if isinstance(unwrap(model), DuetModel):
        return model(batch.x, window=batch.window, mask=batch.mask)
    return model(batch.x)


@torch.no_grad()
def predict_samples(model: nn.Module, split: FleetSplit, batch_size: int = 1024,
                    window_len: int | None = None) -> np.ndarray:
    """Outputs (N, ...) of a split's scored samples (logits of a classifier); `window_len` overrides
    the dataset's W."""
    was_training = model.training
    model.eval()

    W = window_len or split.data.window_len
    batcher = SampleBatcher(split, batch_size, W)
    device = model_device(model)
    out = np.concatenate([logits_of(model, batch.to(device)).cpu().numpy() for batch in batcher.batches()])
    model.train(was_training)
    return out


def sample_window_features(features: Callable[[Tensor], Tensor], dim: int, window: Tensor,
                           mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Window samples (E, W, *shape) -> their static features (E, W, D) and mask (E, W).

    Padded positions are not run through the network (they are masked anyway); with no mask
    every position is a sample (no boolean indexing: the device's features graph exports)."""
    E, W = window.shape[:2]
    if mask is None:
        return features(window.flatten(0, 1)).reshape(E, W, dim), torch.ones(E, W, dtype=torch.bool,
                                                                               device=window.device)
    out = torch.zeros(E, W, dim, device=window.device)
    out[mask] = features(window[mask])
    return out, mask
