"""Static parts of the device model: SASRec, GRU4Rec and DIN.

Conventions (written once): item 0 is padding (`PAD`), histories are oldest
first and left-aligned, so `mask = history != PAD` is a prefix of each row and
the user's latest state sits at index `length - 1`.

SASRec and GRU4Rec summarise a history into a user state `u` (E, D) that the
head transforms and dots with the target embedding (`head_on = "event"`: the
head runs once per history, shared by its candidates). DIN attends over the
history with the target, so its head input is per record (`head_on = "record"`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from duet.config import ModelConfig
from duet.models.layers import FastDropout, SelfAttentionBlock, last_valid
from duet.tasks.recommendation.data.store import PAD


class ItemEmbedding(nn.Module):
    """Item embeddings with row 0 (padding) kept at zero."""

    def __init__(self, num_items: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_items, dim, padding_idx=PAD)
        nn.init.normal_(self.embedding.weight, std=dim**-0.5)
        with torch.no_grad():
            self.embedding.weight[PAD].zero_()

    def forward(self, items: Tensor) -> Tensor:
        return self.embedding(items)


class SASRec(nn.Module):
    head_on = "event"

    @staticmethod
    def film_layers(cfg: ModelConfig) -> tuple[str, ...]:
        """What --film scales and shifts (per dimension): each block's output."""
        return tuple(f"blocks.{i}" for i in range(cfg.num_blocks))

    def __init__(self, num_items: int, history_len: int, cfg: ModelConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.items = ItemEmbedding(num_items, dim)
        self.positions = nn.Embedding(history_len, dim)
        self.drop = FastDropout(cfg.dropout)
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_blocks))
        self.norm = nn.LayerNorm(dim)
        self.state_dim = dim

    def encode(self, history: Tensor) -> Tensor:
        """history (E, L) -> per-position states (E, L, D); padded positions are zero."""
        E, L = history.shape
        mask = history != PAD  # (E, L)
        positions = torch.arange(L, device=history.device)
        x = self.items(history) * self.state_dim**0.5 + self.positions(positions)  # (E, L, D)
        x = self.drop(x) * mask.unsqueeze(-1)
        # Query i may attend key j <= i that is not padding; the diagonal is always
        # allowed so a padded query row never has an empty (NaN) softmax.
        causal = torch.ones(L, L, dtype=torch.bool, device=history.device).tril()
        allowed = (causal & mask.unsqueeze(1)) | torch.eye(L, dtype=torch.bool, device=history.device)
        # Additive form, made once: sdpa would turn a boolean mask into this in every block.
        attn_mask = torch.zeros(E, 1, L, L, dtype=x.dtype, device=x.device).masked_fill_(
            ~allowed.unsqueeze(1), float("-inf"))  # (E, 1, L, L)
        for block in self.blocks:
            x = block(x, attn_mask) * mask.unsqueeze(-1)  # re-apply the padding mask after each block
        return self.norm(x) * mask.unsqueeze(-1)

    def forward(self, history: Tensor) -> Tensor:
        return last_valid(self.encode(history), history != PAD)  # (E, D)


class GRU4Rec(nn.Module):
    head_on = "event"

    @staticmethod
    def film_layers(cfg: ModelConfig) -> tuple[str, ...]:  # noqa: ARG004 - uniform signature
        """What --film scales and shifts: the history's item embeddings, the GRU's input."""
        return ("items",)

    def __init__(self, num_items: int, history_len: int, cfg: ModelConfig):  # noqa: ARG002 - uniform signature
        super().__init__()
        dim = cfg.embed_dim
        self.items = ItemEmbedding(num_items, dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(dim, dim, num_layers=cfg.num_blocks, batch_first=True,
                          dropout=cfg.dropout if cfg.num_blocks > 1 else 0.0)
        self.state_dim = dim

    def forward(self, history: Tensor) -> Tensor:
        # Left-aligned: the state at index length-1 has only seen valid items.
        states, _ = self.gru(self.drop(self.items(history)))  # (E, L, D)
        return last_valid(states, history != PAD)  # (E, D)


class DIN(nn.Module):
    head_on = "record"

    @staticmethod
    def film_layers(cfg: ModelConfig) -> tuple[str, ...]:  # noqa: ARG004 - uniform signature
        """What --film scales and shifts: the history's item embeddings, the attention's keys."""
        return ("items",)

    def __init__(self, num_items: int, history_len: int, cfg: ModelConfig):  # noqa: ARG002 - uniform signature
        super().__init__()
        dim = cfg.embed_dim
        self.items = ItemEmbedding(num_items, dim)
        self.attention = nn.Sequential(nn.Linear(4 * dim, 36), nn.Sigmoid(), nn.Linear(36, 1))
        self.state_dim = 3 * dim

    def forward(self, history: Tensor, target: Tensor) -> Tensor:
        """history (B, L), target (B, D) -> [target, pooled history, target * pooled] (B, 3D)."""
        keys = self.items(history)  # (B, L, D)
        # The attention MLP's first layer on [k, q, k - q, k * q], split by blocks of its
        # weight: k (Wk + Wd) + q (Wq - Wd) + (k * q) Wp + b. The q term is one row per
        # record instead of one per history position, and no (B, L, 4D) input is built:
        # the same function (equal up to float rounding) at about half the cost.
        first, second = self.attention[0], self.attention[2]
        wk, wq, wd, wp = first.weight.chunk(4, dim=1)  # (36, D) each
        per_record = F.linear(target, wq - wd, first.bias).unsqueeze(1)  # (B, 1, 36)
        hidden = F.linear(keys, wk + wd) + F.linear(keys * target.unsqueeze(1), wp) + per_record  # (B, L, 36)
        logits = second(torch.sigmoid(hidden)).squeeze(-1)  # (B, L)
        mask = history != PAD
        weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)
        weights = torch.nan_to_num(weights) * mask  # an empty history pools to zero
        pooled = torch.einsum("bl,bld->bd", weights, keys)
        return torch.cat([target, pooled, target * pooled], dim=-1)


BACKBONES: dict[str, type[nn.Module]] = {"sasrec": SASRec, "gru4rec": GRU4Rec, "din": DIN}
