"""FiLM after named layers of any static module: a per-channel scale and shift applied to a
layer's output, as dynamic parameters the generator writes from the window.

A task whose static part has no `films` argument (a user's own module, a transformer's
blocks) names the layers instead; `LayerFilm` finds their channel counts with one dry run and
applies the parameters of the current call through forward hooks, so the module's own code
is unchanged. The parameters of a call are held per thread, so concurrent requests in a
service each see their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def film_at(h: Tensor, scale: Tensor, shift: Tensor, axis: int) -> Tensor:
    """h * scale + shift along `axis` (1: channels first, -1: channels last), with `(C,)`
    parameters shared by every row or `(N, C)` parameters, row n for h[n]."""
    axis = axis % h.dim()
    shape = [1] * h.dim()
    shape[axis] = h.shape[axis]
    if scale.dim() == 2:
        shape[0] = -1
    return h * scale.reshape(shape) + shift.reshape(shape)


def film_names(layer: str) -> tuple[str, str]:
    """The dynamic parameters' spec names for one layer."""
    return f"film.{layer}.scale", f"film.{layer}.shift"


class LayerFilm:
    """FiLM hooks on `layers` of `module` (channels along `axis` of each layer's output).

    `channels` gives each layer's width, from one dry run (`probe` calls the module on a small
    input, in eval mode, without gradients); `identity()` the parameters that change nothing.
    Inside `applied(params)`, each named layer's output is scaled and shifted by its entries of
    `params` (under `film_names`); outside, layers run as is.
    """

    def __init__(self, module: nn.Module, layers: Sequence[str], probe: Callable[[], object], axis: int = 1):
        missing = [name for name in layers if name not in dict(module.named_modules())]
        if missing:
            raise ValueError(f"FiLM layers {missing} are not submodules of {type(module).__name__} "
                             f"(its named_modules() names them)")
        if len(set(layers)) != len(layers) or not layers:
            raise ValueError("name each FiLM layer once, and at least one")
        self.layers, self.axis = tuple(layers), axis
        self._local = threading.local()
        seen: dict[str, int] = {}
        probes = [module.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, _output(out, name).shape[axis]))
            for name in self.layers]
        try:
            was = module.training
            module.eval()
            with torch.no_grad():
                probe()
            module.train(was)
        finally:
            for probe in probes:
                probe.remove()
        self.channels = {name: int(seen[name]) for name in self.layers}
        for name in self.layers:
            module.get_submodule(name).register_forward_hook(lambda _m, _i, out, name=name: self._apply(name, out))

    def identity(self) -> dict[str, Tensor]:
        """Scale 1 and shift 0 for every layer, under their spec names (theta_g's start)."""
        return {name: init(channels) for layer, channels in self.channels.items()
                for name, init in zip(film_names(layer), (torch.ones, torch.zeros), strict=True)}

    def _apply(self, name: str, out: Tensor) -> Tensor | None:
        params = getattr(self._local, "params", None)
        if params is None:
            return None  # keep the output
        return film_at(_output(out, name), *(params[n] for n in film_names(name)), self.axis)

    @contextmanager
    def applied(self, params: Mapping[str, Tensor]) -> Iterator[None]:
        previous = getattr(self._local, "params", None)
        self._local.params = params
        try:
            yield
        finally:
            self._local.params = previous


def _output(out: object, name: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise ValueError(f"FiLM layer {name!r} returns {type(out).__name__}, not one tensor")
    return out
