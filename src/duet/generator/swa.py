"""SWA: N_p decoders per dynamic layer, mixed by their self-similarity.

The first-layer weights of the N_p decoders are flattened into W (N_p, d);
S = W W^T is row-summed, divided by a temperature and soft-maxed over the
generators. The decoder actually used is the alpha-weighted sum of the N_p
decoders' parameters, so inference costs one decoder whatever N_p is.
A decoder close to the consensus gets more weight, which damps the
oscillation of a single hypernetwork. With N_p = 1, alpha = 1: SWA is the identity.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def swa_weights(first_layer: Tensor, temperature: float) -> Tensor:
    """first_layer (N_p, ...) -> alpha (N_p,), summing to 1, equivariant to generator order."""
    flat = first_layer.reshape(first_layer.shape[0], -1)  # (N_p, d)
    similarity = flat @ flat.T  # (N_p, N_p)
    return torch.softmax(similarity.sum(1) / temperature, dim=0)


class SWADecoder(nn.Module):
    """N_p two-layer decoders e -> theta = (W1 e + B1) W2 + B2, mixed by SWA.

    `out_std` (out_dim,) is the intended std of the input-dependent part of each
    output coordinate at initialisation and `bias_std` (out_dim,) that of its
    constant part B2 (a hyperfan-style init: generated weights start at a
    Xavier-like scale, whatever N_p is).
    """

    def __init__(self, in_dim: int, hidden: int, out_std: Tensor, bias_std: Tensor,
                 num_generators: int, temperature: float, input_var: float):
        super().__init__()
        out_dim = out_std.shape[0]
        self.temperature = temperature
        bound1 = 1.0 / math.sqrt(in_dim)
        self.w1 = nn.Parameter((torch.rand(num_generators, hidden, in_dim) * 2 - 1) * bound1)
        self.b1 = nn.Parameter((torch.rand(num_generators, hidden) * 2 - 1) * bound1)
        # Mixing N_p independent decoders with weights alpha shrinks every
        # parameter's variance by sum(alpha^2); compensate so the mixed decoder
        # has the intended scale. Var(h) = in_dim Var(w1) input_var + Var(b1),
        # with Var(U(-a, a)) = a^2 / 3.
        shrink = float((swa_weights(self.w1.detach(), temperature) ** 2).sum())
        hidden_var = shrink * (in_dim * bound1**2 / 3 * input_var + bound1**2 / 3)
        w2_std = out_std / math.sqrt(hidden * hidden_var * shrink)  # (out_dim,)
        self.w2 = nn.Parameter(torch.randn(num_generators, out_dim, hidden) * w2_std[None, :, None])
        self.b2 = nn.Parameter(torch.randn(num_generators, out_dim) * (bias_std / math.sqrt(shrink)))

    def weights(self) -> Tensor:
        return swa_weights(self.w1, self.temperature)

    def mixed(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The decoder actually used: (W1, B1, W2, B2), the alpha-weighted sums.

        Input-independent, so a server can compute it once after loading."""
        alpha = self.weights()  # (N_p,)
        return (torch.einsum("p,pij->ij", alpha, self.w1), alpha @ self.b1,
                torch.einsum("p,pij->ij", alpha, self.w2), alpha @ self.b2)

    def forward(self, e: Tensor) -> Tensor:
        """e (E, in_dim) -> (E, out_dim)."""
        w1, b1, w2, b2 = self.mixed()
        return torch.nn.functional.linear(torch.nn.functional.linear(e, w1, b1), w2, b2)
