"""The dynamic head: a module whose weights are an input, not module attributes.

The same forward runs with the global parameters theta_g (each tensor of shape
`shape`) or with a batch of per-device parameters (each of shape `(B, *shape)`,
row b of the input uses row b of the parameters). `DynamicHead` is the MLP the
tasks use (weights in `nn.Linear`'s `[out, in]` layout, so a static `nn.Linear`
stack and this head agree); `ModuleHead` makes any `nn.Module` such a head.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from duet.models.film import LayerFilm
from duet.spec import ParamSpec

Params = dict[str, Tensor]
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class DynamicHead(nn.Module):
    """MLP `widths[0] -> ... -> widths[-1]` with an activation between layers (none after the last)."""

    def __init__(self, widths: tuple[int, ...], activation: str = "tanh"):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"a head needs at least an input and an output width, got {widths}")
        self.widths = tuple(int(w) for w in widths)
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation]
        self.param_spec = ParamSpec.from_pairs(
            pair
            for i, (fan_in, fan_out) in enumerate(zip(self.widths[:-1], self.widths[1:], strict=True))
            for pair in ((f"layers.{i}.weight", (fan_out, fan_in)), (f"layers.{i}.bias", (fan_out,)))
        )

    @property
    def num_layers(self) -> int:
        return len(self.widths) - 1

    def forward(self, x: Tensor, params: Params) -> Tensor:
        """x: (B, in), or (B, C, in) for C rows that share row b's head. params[name]: `shape`
        (shared) or `(B, *shape)` (one head per row, or per group of C rows)."""
        grouped = x.dim() == 3
        for i in range(self.num_layers):
            weight, bias = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            if weight.dim() == 2:
                x = F.linear(x, weight, bias)
            else:  # (B, out, in): row b (or group b) of x through its own layer
                rows = x if grouped else x.unsqueeze(1)  # (B, C, in)
                # W x rather than x W^T: the weight's gradient is then a contiguous (B, out, in), and
                # its sum over B (theta_g's gradient in residual mode) runs several times faster
                x = torch.baddbmm(bias.unsqueeze(-1), weight, rows.transpose(1, 2)).transpose(1, 2)  # (B, C, out)
                x = x if grouped else x.squeeze(1)
            if i < self.num_layers - 1:
                x = self.activation(x)
        return x  # (B, out) or (B, C, out)

    def init_params(self, generator: torch.Generator | None = None) -> Params:
        """Global parameters with nn.Linear's default scale (uniform +-1/sqrt(fan_in))."""
        params = {}
        for name, shape in self.param_spec.entries:
            fan_in = self.widths[int(name.split(".")[1])]
            bound = 1.0 / math.sqrt(fan_in)
            params[name] = (torch.rand(shape, generator=generator) * 2 - 1) * bound
        return params


class ModuleHead(nn.Module):
    """Any head module (convolutions, per-channel scales, ...) made functional like `DynamicHead`.

    `param_spec` lists the module's parameters as `named_parameters()` names them
    (`0.weight`, ...), in that order. A copy of the module is kept with its
    parameters turned into non-persistent buffers (their initial values, for
    `init_params`), so a model holding this head neither trains nor saves them:
    what runs is always the `params` passed to `forward`. The module's own buffers
    stay as they are, shared by every row (a BatchNorm that updates its running
    stats in train mode cannot run batched).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        module = copy.deepcopy(module)
        named = list(module.named_parameters())
        if not named:
            raise ValueError(f"{type(module).__name__} has no parameters to generate")
        self.param_spec = ParamSpec.from_pairs((name, tuple(p.shape)) for name, p in named)
        for name, p in named:
            owner, _, attr = name.rpartition(".")
            sub = module.get_submodule(owner)
            delattr(sub, attr)
            sub.register_buffer(attr, p.detach().clone(), persistent=False)
        if next(module.parameters(), None) is not None:  # a tied alias named_parameters() left out
            raise ValueError(f"{type(module).__name__} shares parameters between submodules; give each its own")
        self.module = module

    def forward(self, x: Tensor, params: Params) -> Tensor:
        """x (B, ...). params[name]: `shape` (shared by every row) or `(B, *shape)` (row b uses row b)."""
        name, shape = self.param_spec.entries[0]
        batched = params[name].dim() == len(shape) + 1
        self.param_spec.check(params, batched)
        if not batched:
            return functional_call(self.module, dict(params), (x,))

        def one_row(row_params: Params, row: Tensor) -> Tensor:
            return functional_call(self.module, row_params, (row.unsqueeze(0),)).squeeze(0)

        # randomness="different": dropout in the head draws per row, as in a plain batch.
        return vmap(one_row, randomness="different")(dict(params), x)

    def init_params(self) -> Params:
        """A copy of the wrapped module's initial parameters (whatever init it chose)."""
        return {name: self.module.get_buffer(name).detach().clone() for name in self.param_spec.names}


class WithGlobalHead(nn.Module):
    """A device model's dynamic parameters and their global values theta_g, stored as module
    parameters (`global_params`, dots in names replaced) and read back under spec names.

    The dynamic parameters are the head's and, optionally, tensors inside the static part
    (`_add_dynamic`, e.g. FiLM scales and shifts): the generator writes all of them."""

    def _init_head(self, widths: tuple[int, ...], activation: str) -> None:
        self._set_head(DynamicHead(widths, activation))

    def _set_head(self, head: DynamicHead | ModuleHead) -> None:
        """Use any functional head (`param_spec`, `forward(x, params)`, `init_params()`);
        theta_g starts at its `init_params()`."""
        self.head = head
        self.global_params = nn.ParameterDict(
            {name.replace(".", "_"): nn.Parameter(t) for name, t in self.head.init_params().items()}
        )
        self._spec = head.param_spec

    def _add_films(self, films: LayerFilm) -> None:
        """Every FiLM layer's scale and shift dynamic too, starting as the identity."""
        for name, init in films.identity().items():
            self._add_dynamic(name, init)

    def _add_dynamic(self, name: str, init: Tensor) -> None:
        """A tensor inside the static part that is dynamic too (after the head's in spec order)."""
        self.global_params[name.replace(".", "_")] = nn.Parameter(init)
        self._spec = ParamSpec.from_pairs([*self._spec.entries, (name, tuple(init.shape))])

    @property
    def param_spec(self) -> ParamSpec:
        return self._spec

    def theta_g(self) -> Params:
        """The global dynamic parameters under their spec names."""
        return {name: self.global_params[name.replace(".", "_")] for name in self.param_spec.names}
