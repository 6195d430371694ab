"""The generator as it was before it took any ParamSpec (main at 520b0e4), kept to prove equivalence.

`tests/test_generator_any_spec.py` builds this and today's `ParamGenerator` from the
same seed on `layers.N.weight/bias` heads and requires bitwise-equal modules, state
dicts, outputs, gradients and folded maps. Not used by the package.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from duet.config import GeneratorConfig
from duet.generator.ppg import WindowEncoder
from duet.generator.swa import SWADecoder
from duet.spec import ParamSpec

_EMBED_VAR = 1.0 / 3.0
_RESIDUAL_SCALE = 0.1


def head_layers(spec: ParamSpec) -> list[tuple[int, int]]:
    """(out, in) of each layer of a head spec, checking the expected naming."""
    shapes = spec.shapes
    layers, i = [], 0
    while f"layers.{i}.weight" in shapes:
        out_dim, in_dim = shapes[f"layers.{i}.weight"]
        if shapes.get(f"layers.{i}.bias") != (out_dim,):
            raise ValueError(f"head spec lacks a bias of shape ({out_dim},) for layer {i}")
        layers.append((out_dim, in_dim))
        i += 1
    if 2 * len(layers) != len(spec.entries):
        raise ValueError(f"head spec {spec.names} is not a stack of layers.N.weight/bias")
    return layers


class LegacyParamGenerator(nn.Module):
    """PPG + SWA. `forward(window_emb, mask)` -> {name: (E, *shape)} (raw, before residual)."""

    def __init__(self, spec: ParamSpec, embed_dim: int, window_len: int, cfg: GeneratorConfig):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.layers = head_layers(spec)
        self.encoder = WindowEncoder(embed_dim, cfg, window_len)
        self.layer_embeddings = nn.ModuleList(nn.Linear(cfg.hidden_dim, cfg.layer_embed_dim) for _ in self.layers)
        self.decoders = nn.ModuleList(
            SWADecoder(
                cfg.layer_embed_dim, cfg.decoder_hidden, self._output_std(out_dim, in_dim),
                # Paper mode: the constant part B2 starts as a random Xavier-like head;
                # residual mode: the delta starts input-dependent and small (theta_d ~ theta_g).
                self._output_std(out_dim, in_dim) * (cfg.mode == "paper"),
                cfg.num_generators, cfg.temperature, _EMBED_VAR,
            )
            for out_dim, in_dim in self.layers
        )

    def _chunks(self, out_dim: int, in_dim: int) -> list[tuple[str, int, float]]:
        """(kind, size, target std) of a layer's flat output."""
        weight_std = 1.0 / math.sqrt(in_dim)
        scale = _RESIDUAL_SCALE if self.cfg.mode == "residual" else math.sqrt(0.5)
        rank = self.cfg.rank
        if rank is None or rank >= min(out_dim, in_dim):
            weight = [("weight", out_dim * in_dim, weight_std * scale)]
        else:  # weight = U V^T: Var = rank * Var(U) * Var(V)
            factor_std = (weight_std * scale) ** 0.5 / rank**0.25
            weight = [("u", out_dim * rank, factor_std), ("v", in_dim * rank, factor_std)]
        return [*weight, ("bias", out_dim, weight_std * scale)]

    def _output_std(self, out_dim: int, in_dim: int) -> Tensor:
        return torch.cat([torch.full((size,), std) for _, size, std in self._chunks(out_dim, in_dim)])

    def folded(self, constant: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
        """Everything after the encoder as one linear map c (E, H) -> (E, numel) in spec order:
        (weight (numel, H), bias (numel,)), plus `constant` (numel,) (theta_g in residual mode).

        Per layer, layer embedding -> mixed SWA decoder is a chain of three linear maps with
        nothing between them, so their product gives the same output up to float rounding,
        with no per-layer split, reshape or concatenation (one matmul where serving did a dozen
        small ops). Products in float64, so the folded map is no less exact than the chain.
        None for low-rank weights: U V^T is not linear in c.
        """
        if any(self._chunks(o, i)[0][0] != "weight" for o, i in self.layers):
            return None
        weights, biases = [], []
        with torch.no_grad():
            for embed, decoder in zip(self.layer_embeddings, self.decoders, strict=True):
                w1, b1, w2, b2 = (t.double() for t in decoder.mixed())
                weights.append(w2 @ w1 @ embed.weight.double())  # (size, H)
                biases.append(w2 @ (w1 @ embed.bias.double() + b1) + b2)  # (size,)
            bias = torch.cat(biases)
            if constant is not None:
                bias = bias + constant.double()
            return torch.cat(weights).float(), bias.float()

    def forward(self, window_emb: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """window_emb (E, W, D), mask (E, W) -> {name: (E, *shape)}."""
        c = self.encoder(window_emb, mask)  # (E, H)
        E = c.shape[0]
        params = {}
        for i, ((out_dim, in_dim), embed, decoder) in enumerate(
            zip(self.layers, self.layer_embeddings, self.decoders, strict=True)
        ):
            flat = decoder(embed(c))  # (E, size)
            parts = dict(zip([k for k, _, _ in self._chunks(out_dim, in_dim)],
                             flat.split([s for _, s, _ in self._chunks(out_dim, in_dim)], dim=1), strict=True))
            if "weight" in parts:
                weight = parts["weight"].view(E, out_dim, in_dim)
            else:
                rank = self.cfg.rank
                weight = parts["u"].view(E, out_dim, rank) @ parts["v"].view(E, in_dim, rank).transpose(1, 2)
            params[f"layers.{i}.weight"] = weight
            params[f"layers.{i}.bias"] = parts["bias"]
        return params
