"""ARM-BN (Zhang et al., "Adaptive Risk Minimization", NeurIPS 2021): a model trained for the
context normalisation it gets at test time.

Training: each batch is G groups of W samples of one training device (fewer where a device
has fewer), and every batch norm normalises each group with that group's own statistics, as
a device will. Test: a device's unlabelled window supplies the statistics, with the batch-norm
statistics baseline's code (`bnstats_images`): no label and no gradient on the device.

`duet train --method armbn` trains one on an image or sensor fleet (validation scores each
device with its own window's statistics); `duet compare` scores it beside the others. Its
runs are not exported: a device graph normalises with fixed statistics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from duet.tasks.fleet.store import FleetSplit
from duet.tasks.images.baselines import batch_norms, bnstats_images
from duet.tasks.images.metrics import classification_metrics, device_groups
from duet.training.distributed import rank_share

METHOD = "armbn"


@contextmanager
def per_group_norm(model: nn.Module, sizes: Sequence[int]) -> Iterator[None]:
    """Inside, every batch norm of `model` in training mode normalises each consecutive group of
    `sizes` rows of its input with the group's own statistics (one device's samples per group)."""
    norms = batch_norms(model)
    for norm in norms:
        norm.forward = partial(group_norm, norm, tuple(sizes))  # shadows the class's forward
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


def group_norm(norm: nn.modules.batchnorm._BatchNorm, sizes: tuple[int, ...], x: Tensor) -> Tensor:
    """`norm` on x (N, C, ...) with the batch statistics of each group of rows; the running
    statistics (unused at test time with prior 0) follow the groups' statistics."""
    if not norm.training:
        return type(norm).forward(norm, x)
    momentum = 0.1 if norm.momentum is None else norm.momentum
    return torch.cat([F.batch_norm(part, norm.running_mean, norm.running_var, norm.weight, norm.bias, True,
                                   momentum, norm.eps) for part in x.split(list(sizes))])


@dataclass
class GroupBatch:
    x: Tensor  # (N, C, H, W): the groups' samples, group after group
    y: Tensor  # (N,) long
    sizes: tuple[int, ...]  # samples per group, summing to N
    rows: np.ndarray  # (N,) sample rows

    def to(self, device: torch.device) -> GroupBatch:
        if device.type == "cpu":
            return self
        return GroupBatch(x=self.x.to(device), y=self.y.to(device), sizes=self.sizes, rows=self.rows)


class GroupBatcher:
    """Batches of about `batch_size` samples in groups of `size` samples of one device, drawn
    afresh from (seed, epoch); a device's samples left over once its groups are full wait for
    another epoch's draw (every group has the size a window has at test time)."""

    def __init__(self, split: FleetSplit, batch_size: int, size: int):
        self.split, self.size = split, size
        self.groups_per_batch = max(1, batch_size // size)
        device = split.device
        self.by_device = [np.flatnonzero(device == d) for d in np.unique(device)]  # indices into the split

    def group_size(self, samples: int) -> int:
        return min(self.size, samples)

    def num_groups(self) -> int:
        return sum(len(idx) // self.group_size(len(idx)) for idx in self.by_device if len(idx) >= 2)

    def num_batches(self) -> int:
        return max(1, -(-self.num_groups() // self.groups_per_batch))

    def groups(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Every device's shuffled samples cut into groups, the groups in random order."""
        groups = []
        for idx in self.by_device:
            if len(idx) < 2:  # one sample has no spread to normalise with
                continue
            idx, size = rng.permutation(idx), self.group_size(len(idx))
            groups += [idx[start : start + size] for start in range(0, len(idx) - size + 1, size)]
        return [groups[i] for i in rng.permutation(len(groups))]

    def batch(self, groups: list[np.ndarray]) -> GroupBatch:
        index = np.concatenate(groups)
        rows = self.split.rows[index]
        return GroupBatch(x=torch.from_numpy(self.split.data.x[rows]), y=torch.from_numpy(self.split.y[index]),
                          sizes=tuple(len(g) for g in groups), rows=rows)

    def shuffled(self, seed: int, epoch: int, rank: int = 0, world: int = 1) -> Iterator[GroupBatch]:
        groups = self.groups(np.random.default_rng([seed, epoch]))
        step = self.groups_per_batch
        batches = (self.batch(groups[i : i + step]) for i in range(0, len(groups), step))
        yield from rank_share(batches, rank, world)


def armbn_loss(model: nn.Module, batch: GroupBatch, device: torch.device) -> tuple[Tensor, int]:
    """Cross-entropy with every group normalised by its own statistics."""
    batch = batch.to(device)
    with per_group_norm(model, batch.sizes):
        logits = model(batch.x)
    return F.cross_entropy(logits, batch.y), len(batch.y)


def context_logits(model: nn.Module, split: FleetSplit, window_len: int, prior: int = 0) -> np.ndarray:
    """Logits of a split's scored samples, each device normalised with its window's statistics
    (the W most recent samples of its adaptation prefix; prior 0: those alone, as trained)."""
    return bnstats_images(model, split, prior, context=window_len, threads=torch.get_num_threads()).logits


def evaluate_armbn(model: nn.Module, split: FleetSplit, window_len: int) -> dict[str, float]:
    return classification_metrics(split.y, context_logits(model, split, window_len), device_groups(split))
