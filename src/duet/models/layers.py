"""Sequence building blocks shared by static parts and the generator's window encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fast_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout with its mask from `torch.rand_like(x) >= p`: the distribution of
    `F.dropout`, at about half its CPU cost (`bernoulli_` draws one Mersenne-Twister number per
    element and was a third of a SASRec training step, docs/performance.md). Its random stream
    differs from `F.dropout`'s, so runs differ from those made before it, within noise."""
    if not training or p == 0.0:
        return x
    return x * (torch.rand_like(x) >= p) * (1.0 / (1.0 - p))


class FastDropout(nn.Module):
    """`nn.Dropout` with `fast_dropout`'s mask (no parameters: checkpoints are unchanged)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return fast_dropout(x, self.p, self.training)


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
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), FastDropout(dropout), nn.Linear(dim, dim))
        self.drop = FastDropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        E, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(E, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if self.training and self.dropout > 0:
            # sdpa with dropout takes its math path on CPU anyway, with bernoulli_ masks: the same
            # math here, with fast_dropout on the attention probabilities
            scores = q @ k.transpose(-2, -1) * (D // self.heads) ** -0.5 + attn_mask  # (E, H, L, L)
            y = fast_dropout(torch.softmax(scores, dim=-1), self.dropout, True) @ v  # (E, H, L, D/H)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (E, H, L, D/H)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(E, L, D)))
        return x + self.drop(self.ffn(self.norm2(x)))
