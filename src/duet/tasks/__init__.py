"""The task seam: what is specific to a task (what a record is, how a dataset is
loaded and batched, the loss, the metrics) behind one small interface, so the
generator, head, train loop, checkpoints, service, export and device runtime are shared.

    tasks/recommendation.py   click-through records grouped by event (duet.data, duet.models)
    tasks/images/             an image fleet: per-device shift, CNN static part

`task_for(name)` is a plain function, not a registry: adding a task is one branch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn


class Task(Protocol):
    """What the shared train loop needs from a task."""

    name: str
    select_metric: str  # validation metric that selects the epoch (higher is better)

    def load(self, path: str | Path, splits: tuple[str, ...]) -> Any: ...

    def batcher(self, data: Any, config: Any) -> Any:
        """An object with `num_batches()` and `shuffled(seed, epoch, rank, world)` over train batches."""

    def loss(self, model: nn.Module, batch: Any, data: Any, config: Any, device: Any) -> tuple[Tensor, int]:
        """(mean loss of the batch on `device`, number of records in it)."""

    def evaluate(self, model: nn.Module, split: Any, config: Any) -> dict[str, float]: ...


def task_for(name: str) -> Task:
    if name == "recommendation":
        from duet.tasks.recommendation import RecommendationTask

        return RecommendationTask()
    if name == "images":
        from duet.tasks.images.training import ImageTask

        return ImageTask()
    raise ValueError(f"unknown task {name!r}; expected recommendation or images")


def dataset_task(path: str | Path) -> str:
    """The task a prepared dataset is for (its manifest's format says)."""
    from duet.tasks.images.store import is_image_dataset

    return "images" if is_image_dataset(path) else "recommendation"
