"""PPG: window -> shared encoder -> per-unit embedding -> SWA decoder -> head params.

Built from the head's ParamSpec, whatever the head: the spec's tensors are grouped
into generation units (`spec_units`: a weight with the bias that follows it, or one
tensor on its own), each with its own embedding of the window and, by default, its
own decoder. With `GeneratorConfig.chunk_size`, units larger than a chunk are made
chunk by chunk by one shared decoder (hypnettorch's chunked hypernetwork).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import prod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from duet.config import GeneratorConfig
from duet.generator.swa import SWADecoder
from duet.spec import ParamSpec

# Var of a LayerNorm-ed encoder output through a default nn.Linear: fan_in * (1/fan_in)/3.
_EMBED_VAR = 1.0 / 3.0
# Residual mode starts near theta_g: the generated delta is this fraction of a Xavier-like scale.
_RESIDUAL_SCALE = 0.1

Entry = tuple[str, tuple[int, ...]]


@dataclass(frozen=True)
class Unit:
    """Spec entries generated together from one unit embedding: `(weight, bias)` or `(tensor,)`.

    The first entry's dim 0 is its output dim and the product of the others its fan_in
    (1 for a 0-D or 1-D tensor). Target init std of every output, before the mode's
    scale (0.1 in residual mode; sqrt(1/2) in paper mode, where the constant B2 and the
    window-dependent part each carry half the variance): 1/sqrt(fan_in) for a weight of
    any rank and for its bias (nn.Linear's and nn.Conv2d's init scale, up to a constant).
    A standalone 1-D or 0-D tensor (a per-channel scale or shift) has fan_in 1, so std 1:
    a scale starts at 1 in theta_g and residual mode moves it by about 10%; a shift has
    no fan_in to scale it by and gets the same.
    """

    entries: tuple[Entry, ...]
    rank: int | None = None  # the first entry is U V^T with U (out, rank), V (fan_in, rank)
    chunks: int = 0  # 0: a decoder of its own; else made in this many chunks by the shared decoder

    @property
    def fan_in(self) -> int:
        return prod(self.entries[0][1][1:])

    def parts(self, scale: float) -> list[tuple[str, int, float]]:
        """(kind, size, target std) of the unit's flat output, in spec order."""
        shape = self.entries[0][1]
        std = 1.0 / math.sqrt(self.fan_in)
        if self.rank is None:
            parts = [("full", prod(shape), std * scale)]
        else:  # weight = U V^T: Var = rank * Var(U) * Var(V)
            factor_std = (std * scale) ** 0.5 / self.rank**0.25
            parts = [("u", shape[0] * self.rank, factor_std), ("v", self.fan_in * self.rank, factor_std)]
        if len(self.entries) == 2:
            parts.append(("bias", shape[0], std * scale))
        return parts

    @property
    def size(self) -> int:
        return sum(size for _, size, _ in self.parts(1.0))

    def output_std(self, scale: float) -> Tensor:
        return torch.cat([torch.full((size,), std) for _, size, std in self.parts(scale)])

    def assemble(self, flat: Tensor) -> dict[str, Tensor]:
        """flat (E, size) -> {name: (E, *shape)}."""
        E = flat.shape[0]
        pieces = flat.split([size for _, size, _ in self.parts(1.0)], dim=1)
        (name, shape), rest = self.entries[0], self.entries[1:]
        if self.rank is None:
            first = pieces[0].view(E, *shape)
        else:
            u, v = pieces[0].view(E, shape[0], self.rank), pieces[1].view(E, self.fan_in, self.rank)
            first = (u @ v.transpose(1, 2)).view(E, *shape)
        biases = zip(rest, pieces[len(pieces) - len(rest) :], strict=True)  # () or ((bias, piece),)
        return {name: first, **{bias: piece for (bias, _), piece in biases}}


def _bias_of(name: str) -> str | None:
    """`X.weight` -> `X.bias` (and `weight` -> `bias`); None for any other name."""
    if name == "weight" or name.endswith(".weight"):
        return name[: -len("weight")] + "bias"
    return None


def spec_units(spec: ParamSpec, rank: int | None = None, chunk_size: int | None = None) -> list[Unit]:
    """Group a spec into generation units, in spec order.

    `X.weight` directly followed by `X.bias` of shape (weight.shape[0],) is one unit (the
    bias comes from the same decoder as its weight); every other entry is a unit alone.
    A tensor of rank >= 2 is low-rank (reshaped to (out, fan_in)) when rank < min(out, fan_in).
    A unit larger than chunk_size is made in ceil(size / chunk_size) chunks.
    """
    entries, units, i = spec.entries, [], 0
    while i < len(entries):
        name, shape = entries[i]
        paired = (i + 1 < len(entries) and len(shape) >= 1
                  and entries[i + 1] == (_bias_of(name), (shape[0],)))
        group = entries[i : i + 1 + paired]
        i += len(group)
        fan_in = prod(shape[1:])
        low = rank if len(shape) >= 2 and rank is not None and rank < min(shape[0], fan_in) else None
        unit = Unit(group, low)
        if chunk_size is not None and unit.size > chunk_size:
            unit = Unit(group, low, -(-unit.size // chunk_size))
        units.append(unit)
    return units


class WindowEncoder(nn.Module):
    """Window embeddings (E, W, D) with a prefix mask -> c (E, H). Padding never changes c.

    `gru` and `attention` read the window in order; `mean` and `attnpool` map every
    element through a small MLP and pool (masked mean, or softmax attention with a
    learned query), so c does not depend on the window's order (a set of samples);
    `set` lets every sample attend to the others first (a set-transformer block, no
    positions: ICRM's reading of the context, where samples interact), then pools by attention."""

    def __init__(self, embed_dim: int, cfg: GeneratorConfig, window_len: int):
        super().__init__()
        self.kind = cfg.encoder
        if cfg.encoder in ("mean", "attnpool"):
            self.phi = nn.Sequential(nn.Linear(embed_dim, cfg.hidden_dim), nn.ReLU(),
                                     nn.Linear(cfg.hidden_dim, cfg.hidden_dim))
            if cfg.encoder == "attnpool":
                self.score = nn.Linear(cfg.hidden_dim, 1)
        elif cfg.encoder == "set":
            from duet.models.layers import SelfAttentionBlock

            self.proj = nn.Linear(embed_dim, cfg.hidden_dim)
            self.block = SelfAttentionBlock(cfg.hidden_dim, 1, 0.0)
            self.score = nn.Linear(cfg.hidden_dim, 1)
        elif cfg.encoder == "gru":
            self.gru = nn.GRU(embed_dim, cfg.hidden_dim, batch_first=True)
        else:
            from duet.models.layers import SelfAttentionBlock

            self.proj = nn.Linear(embed_dim, cfg.hidden_dim)
            self.positions = nn.Embedding(window_len, cfg.hidden_dim)
            self.block = SelfAttentionBlock(cfg.hidden_dim, 1, 0.0)
        self.norm = nn.LayerNorm(cfg.hidden_dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, emb: Tensor, mask: Tensor) -> Tensor:
        from duet.models.layers import last_valid

        emb = self.drop(emb)
        if self.kind in ("mean", "attnpool"):
            h = self.phi(emb)  # (E, W, H)
            if self.kind == "mean":
                weights = mask.float() / mask.sum(1, keepdim=True).clamp(min=1)
            else:
                scores = self.score(h).squeeze(-1).masked_fill(~mask, float("-inf"))
                weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # an empty window pools to 0
            return self.drop(self.norm((weights.unsqueeze(-1) * h).sum(1)))
        if self.kind == "set":
            W = emb.shape[1]
            # every sample attends to the window's samples (padding never is a key; a padded row
            # attends to itself only, and is not pooled)
            attn = (mask.unsqueeze(1) | torch.eye(W, dtype=torch.bool, device=emb.device)).unsqueeze(1)
            h = self.block(self.proj(emb), attn)
            scores = self.score(h).squeeze(-1).masked_fill(~mask, float("-inf"))
            weights = torch.softmax(scores, dim=1).nan_to_num(0.0)
            return self.drop(self.norm((weights.unsqueeze(-1) * h).sum(1)))
        if self.kind == "gru":
            states, _ = self.gru(emb)  # (E, W, H); left-aligned, so index len-1 saw only valid items
        else:
            W = emb.shape[1]
            x = self.proj(emb) + self.positions(torch.arange(W, device=emb.device))
            causal = torch.ones(W, W, dtype=torch.bool, device=emb.device).tril()
            attn = ((causal & mask.unsqueeze(1)) | torch.eye(W, dtype=torch.bool, device=emb.device)).unsqueeze(1)
            states = self.block(x, attn)
        return self.drop(self.norm(last_valid(states, mask)))  # (E, H)


class ParamGenerator(nn.Module):
    """PPG + SWA. `forward(window_emb, mask)` -> {name: (E, *shape)}, spec order, raw (before residual).

    Submodules: `encoder`; `layer_embeddings[u]` for every unit u; `decoders`, one SWA
    decoder per unit made whole (every unit without chunk_size). Chunked units share
    `chunk_decoder`, which maps (unit embedding e, chunk embedding k) to chunk_size
    outputs; `chunk_embeddings` (chunks, layer_embed_dim) holds every chunked unit's
    chunk embeddings, unit after unit.

    The shared decoder reads [e * k, k], not hypnettorch's [e, k]: its MLP is nonlinear,
    but an SWA decoder is two linear maps, and on [e, k] every chunk of a unit would get
    the same window-dependent part, k adding only a constant. The product gives each
    chunk its own linear read of the window (still linear in c, so it folds), k alone its
    own constant. The shared decoder is initialised for std 1 and its chunks multiplied
    by their targets' stds (a fixed buffer): a unit starts at the same scale, chunked or not.
    """

    def __init__(self, spec: ParamSpec, embed_dim: int, window_len: int, cfg: GeneratorConfig):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.units = spec_units(spec, cfg.rank, cfg.chunk_size)
        scale = _RESIDUAL_SCALE if cfg.mode == "residual" else math.sqrt(0.5)
        paper = cfg.mode == "paper"
        self.encoder = WindowEncoder(embed_dim, cfg, window_len)
        self.layer_embeddings = nn.ModuleList(nn.Linear(cfg.hidden_dim, cfg.layer_embed_dim) for _ in self.units)
        self.decoders = nn.ModuleList(
            SWADecoder(
                cfg.layer_embed_dim, cfg.decoder_hidden, unit.output_std(scale),
                # Paper mode: the constant part B2 starts as a random Xavier-like head;
                # residual mode: the delta starts input-dependent and small (theta_d ~ theta_g).
                unit.output_std(scale) * paper,
                cfg.num_generators, cfg.temperature, _EMBED_VAR,
            )
            for unit in self.units if not unit.chunks
        )
        # Per unit: its index in `decoders`, or None for a chunked unit.
        own = iter(range(len(self.decoders)))
        self._decoder_of = [None if unit.chunks else next(own) for unit in self.units]
        self.chunk_decoder: nn.Module | None = None  # serving may swap in a frozen copy
        chunked = [unit for unit in self.units if unit.chunks]
        if chunked:
            size = cfg.chunk_size
            assert size is not None
            rows = sum(unit.chunks for unit in chunked)
            self.chunk_embeddings = nn.Parameter(torch.randn(rows, cfg.layer_embed_dim))  # as hypnettorch: N(0, 1)
            # Input [e * k, k]: variance _EMBED_VAR * 1 on one half, 1 on the other.
            self.chunk_decoder = SWADecoder(2 * cfg.layer_embed_dim, cfg.decoder_hidden, torch.ones(size),
                                            torch.ones(size) * paper, cfg.num_generators, cfg.temperature,
                                            (_EMBED_VAR + 1.0) / 2)
            std = [F.pad(unit.output_std(scale), (0, unit.chunks * size - unit.size)) for unit in chunked]
            self.register_buffer("chunk_std", torch.cat(std).view(rows, size), persistent=False)

    def _chunked(self, c: Tensor) -> dict[int, Tensor]:
        """Every chunked unit's flat output {unit: (E, size)}, from one pass of the shared decoder."""
        if self.chunk_decoder is None:
            return {}
        E = c.shape[0]
        chunked = [(u, unit) for u, unit in enumerate(self.units) if unit.chunks]
        e = torch.cat([self.layer_embeddings[u](c).unsqueeze(1).expand(E, unit.chunks, -1)
                       for u, unit in chunked], dim=1)  # (E, rows, layer_embed_dim)
        k = self.chunk_embeddings.expand(E, -1, -1)
        x = torch.cat([e * k, k], dim=2)  # (E, rows, 2 * layer_embed_dim)
        out = self.chunk_decoder(x) * self.chunk_std  # (E, rows, chunk_size)
        rows = out.split([unit.chunks for _, unit in chunked], dim=1)
        return {u: r.reshape(E, -1)[:, : unit.size] for (u, unit), r in zip(chunked, rows, strict=True)}

    def folded(self, constant: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
        """Everything after the encoder as one linear map c (E, H) -> (E, numel) in spec order:
        (weight (numel, H), bias (numel,)), plus `constant` (numel,) (theta_g in residual mode).

        Per unit, unit embedding -> mixed SWA decoder is a chain of three linear maps with
        nothing between them, so their product gives the same output up to float rounding,
        with no per-unit split, reshape or concatenation (one matmul where serving did a dozen
        small ops). A chunk is the same chain, its embedding k folded into the first layer
        (diag(k) on the e * k half, the k half into the bias), times its fixed stds. Products
        in float64, so the folded map is no less exact than the chain. None for low-rank
        weights: U V^T is not linear in c.
        """
        if any(unit.rank is not None for unit in self.units):
            return None
        weights, biases = [], []
        row = 0
        with torch.no_grad():
            for unit, embed, i in zip(self.units, self.layer_embeddings, self._decoder_of, strict=True):
                if i is not None:
                    w1, b1, w2, b2 = (t.double() for t in self.decoders[i].mixed())
                    weights.append(w2 @ w1 @ embed.weight.double())  # (size, H)
                    biases.append(w2 @ (w1 @ embed.bias.double() + b1) + b2)  # (size,)
                    continue
                assert self.chunk_decoder is not None
                w1, b1, w2, b2 = (t.double() for t in self.chunk_decoder.mixed())
                w1e, w1k = w1.split(self.cfg.layer_embed_dim, dim=1)  # (hidden, L) each
                k = self.chunk_embeddings[row : row + unit.chunks].double()  # (chunks, L)
                std = self.chunk_std[row : row + unit.chunks].double()  # (chunks, chunk_size)
                row += unit.chunks
                chain = w2 @ (w1e * k[:, None, :]) @ embed.weight.double()  # (chunks, chunk_size, H)
                weight = std[:, :, None] * chain
                hidden = (k * embed.bias.double()) @ w1e.T + k @ w1k.T + b1  # (chunks, hidden)
                bias = std * (hidden @ w2.T + b2)  # (chunks, chunk_size)
                weights.append(weight.flatten(0, 1)[: unit.size])
                biases.append(bias.flatten()[: unit.size])
            bias = torch.cat(biases)
            if constant is not None:
                bias = bias + constant.double()
            return torch.cat(weights).float(), bias.float()

    def forward(self, window_emb: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """window_emb (E, W, D), mask (E, W) -> {name: (E, *shape)}."""
        c = self.encoder(window_emb, mask)  # (E, H)
        chunked = self._chunked(c)
        params = {}
        for u, (unit, embed, i) in enumerate(zip(self.units, self.layer_embeddings, self._decoder_of, strict=True)):
            flat = chunked[u] if i is None else self.decoders[i](embed(c))  # (E, size)
            params.update(unit.assemble(flat))
        return params
