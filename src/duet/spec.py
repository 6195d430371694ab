"""ParamSpec: the ordered (name, shape) list that a dynamic head consumes.

Numpy only (no torch): the device runtime imports it to check that the
parameters it receives fit its bundle. Flatten/unflatten order is defined here
and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from math import prod

import numpy as np


@dataclass(frozen=True)
class ParamSpec:
    """Ordered parameter names and shapes, e.g. (("layers.0.weight", (32, 32)), ...)."""

    entries: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, Iterable[int]]]) -> ParamSpec:
        entries = tuple((str(name), tuple(int(d) for d in shape)) for name, shape in pairs)
        names = [name for name, _ in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in {names}")
        return cls(entries)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.entries]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.entries)

    @property
    def sizes(self) -> list[int]:
        return [prod(shape) for _, shape in self.entries]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def to_json(self) -> list[dict]:
        return [{"name": name, "shape": list(shape)} for name, shape in self.entries]

    @classmethod
    def from_json(cls, data: list[dict]) -> ParamSpec:
        return cls.from_pairs((d["name"], d["shape"]) for d in data)

    @cached_property
    def hash(self) -> str:
        """Short content hash: a device refuses parameters made for another head."""
        text = json.dumps(self.to_json(), separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def flatten(self, params: Mapping[str, np.ndarray]) -> np.ndarray:
        """Concatenate parameters (each `(B, *shape)`) into `(B, numel)` in spec order."""
        self.check(params, batched=True)
        batch = next(iter(params.values())).shape[0]
        return np.concatenate([np.asarray(params[n]).reshape(batch, -1) for n in self.names], axis=1)

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Inverse of `flatten`: `(B, numel)` -> {name: (B, *shape)}."""
        flat = np.asarray(flat)
        if flat.ndim != 2 or flat.shape[1] != self.numel:
            raise ValueError(f"expected (B, {self.numel}), got {flat.shape}")
        out, start = {}, 0
        for (name, shape), size in zip(self.entries, self.sizes, strict=True):
            out[name] = flat[:, start : start + size].reshape(flat.shape[0], *shape)
            start += size
        return out

    def check(self, params: Mapping[str, object], batched: bool) -> None:
        """Raise ValueError naming the first parameter whose name or shape does not fit."""
        if set(params) != set(self.names):
            missing = sorted(set(self.names) - set(params))
            extra = sorted(set(params) - set(self.names))
            raise ValueError(f"parameter names do not match the head: missing {missing}, unexpected {extra}")
        for name, shape in self.entries:
            got = tuple(params[name].shape)  # type: ignore[attr-defined]
            want_tail = got[1:] if batched else got
            if want_tail != shape:
                raise ValueError(f"parameter {name!r} has shape {got}, expected {'(B, ' if batched else '('}{', '.join(map(str, shape))})")
