"""Popularity baseline: every user gets the items ranked by train popularity."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class Popularity(nn.Module):
    def __init__(self, num_items: int):
        super().__init__()
        self.register_buffer("counts", torch.zeros(num_items))

    @classmethod
    def fit(cls, num_items: int, items: np.ndarray, labels: np.ndarray) -> Popularity:
        model = cls(num_items)
        model.counts.copy_(torch.from_numpy(np.bincount(items[labels > 0], minlength=num_items).astype(np.float32)))
        return model

    def forward(self, history: Tensor, item: Tensor, inverse: Tensor | None = None) -> Tensor:  # noqa: ARG002
        # log1p(count) - log1p(max): a logit that orders by popularity, <= 0.
        return torch.log1p(self.counts[item]) - torch.log1p(self.counts.max())
