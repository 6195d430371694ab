"""torchrun support: one process per rank, gloo on CPU, NCCL where there are GPUs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: object) -> object:
        """Rank 0's `obj` on every rank (the identity in a single process)."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def init_world(nccl: bool = False) -> World:
    """Join the process group if launched by torchrun (WORLD_SIZE > 1): NCCL for CUDA training, else gloo."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if nccl and torch.cuda.is_available() else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size())


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


T = TypeVar("T")


def rank_share(batches: Iterator[T], rank: int, world: int) -> Iterator[T]:
    """This rank's batches of one shared order: every world-th, all ranks the same count
    (DDP needs equal step counts). With one process, all of them, lazily."""
    if world == 1:
        yield from batches
        return
    listed = list(batches)
    usable = len(listed) - len(listed) % world
    yield from listed[rank:usable:world]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device
