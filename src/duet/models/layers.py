"""Sequence building blocks shared by static parts and the generator's window encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def last_valid(states: Tensor, mask: Tensor) -> Tensor:
    """states (E, L, D), mask (E, L) prefix mask -> state at the last valid index (zeros if none)."""
    length = mask.sum(1)  # (E,)
    index = (length - 1).clamp(min=0)
    out = states[torch.arange(states.shape[0], device=states.device), index]  # (E, D)
    return out * (length > 0).unsqueeze(1).to(out.dtype)


class SelfAttentionBlock(nn.Module):
    """Pre-LayerNorm causal self-attention + point-wise feed-forward (as in SASRec)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        E, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(E, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(  # (E, H, L, D/H)
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(E, L, D)))
        return x + self.drop(self.ffn(self.norm2(x)))
