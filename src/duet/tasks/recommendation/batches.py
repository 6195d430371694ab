"""Mini-batches grouped by event: a positive and its negatives share one history,
so the encoder runs once per event and the head's output is gathered per record.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from duet.tasks.recommendation.data.store import Split
from duet.training.distributed import rank_share


@dataclass
class Batch:
    history: Tensor  # (E, L) long
    window: Tensor  # (E, W) long
    item: Tensor  # (B,) long
    label: Tensor  # (B,) float
    inverse: Tensor  # (B,) long: event row of each record
    records: np.ndarray  # (B,) indices of these records in the split

    def __len__(self) -> int:
        return len(self.records)

    def to(self, device: torch.device) -> Batch:
        """The tensors on `device` (built on the CPU: the random streams stay the CPU's)."""
        if device.type == "cpu":
            return self
        return Batch(history=self.history.to(device), window=self.window.to(device), item=self.item.to(device),
                     label=self.label.to(device), inverse=self.inverse.to(device), records=self.records)


class EventBatcher:
    """Yields batches of about `batch_size` records, never splitting an event."""

    def __init__(self, split: Split, batch_size: int):
        self.split, self.batch_size = split, batch_size
        self.order = np.argsort(split.event, kind="stable")  # records grouped by event
        self.counts = np.bincount(split.event, minlength=split.num_events)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])

    def num_batches(self, events: np.ndarray | None = None) -> int:
        counts = self.counts if events is None else self.counts[events]
        return max(1, int(np.ceil(counts.sum() / self.batch_size)))

    def batches(self, events: np.ndarray | None = None) -> Iterator[Batch]:
        """Batches over `events` in the given order (default: all events in order)."""
        events = np.arange(self.split.num_events) if events is None else events
        events = events[self.counts[events] > 0]
        counts = self.counts[events]
        ends = np.cumsum(counts)
        # Cut after the event in which each multiple of batch_size falls.
        cuts = np.unique(np.searchsorted(ends, np.arange(self.batch_size, ends[-1], self.batch_size), side="left") + 1) if len(ends) else []
        for chunk in np.split(np.arange(len(events)), cuts):
            if len(chunk):
                yield self._make(events[chunk], counts[chunk])

    def _make(self, events: np.ndarray, counts: np.ndarray) -> Batch:
        split = self.split
        first = np.repeat(self.starts[events] - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        records = self.order[first + np.arange(counts.sum())]
        return Batch(
            history=torch.from_numpy(split.history[events].astype(np.int64)),
            window=torch.from_numpy(split.window[events].astype(np.int64)),
            item=torch.from_numpy(split.item[records].astype(np.int64)),
            label=torch.from_numpy(split.label[records].astype(np.float32)),
            inverse=torch.from_numpy(np.repeat(np.arange(len(events)), counts)),
            records=records,
        )

    def shuffled(self, seed: int, epoch: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """A fresh event order per (seed, epoch): identical after a restart. With
        `world` > 1 each rank takes every world-th batch of the same order, and all
        ranks get the same number of batches (DDP needs equal step counts)."""
        rng = np.random.default_rng([seed, epoch])
        yield from rank_share(self.batches(rng.permutation(self.split.num_events)), rank, world)


def with_sampled_negatives(batch: Batch, per_event: int, num_items: int) -> Batch:
    """The batch plus `per_event` extra negatives per event, drawn uniformly from the
    catalogue (1..num_items-1) with torch's global generator (seeded per epoch by the
    train loop, so a resumed run draws the same). Files with one fixed negative per
    positive (the reference protocol) let a model memorise which item was the
    negative; fresh ones every epoch keep the task honest. Training only: `records`
    still names the batch's stored records, which come first."""
    events = batch.history.shape[0]
    item = torch.randint(1, num_items, (events * per_event,))
    inverse = torch.arange(events).repeat_interleave(per_event)
    return Batch(
        history=batch.history, window=batch.window,
        item=torch.cat([batch.item, item]), label=torch.cat([batch.label, torch.zeros(len(item))]),
        inverse=torch.cat([batch.inverse, inverse]), records=batch.records,
    )
