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


DTYPES = ("int64", "float32")


@dataclass(frozen=True)
class Column:
    """One value of a float sample: its valid range (inclusive; None: unbounded) and whether it holds
    whole numbers only (a categorical code, e.g. the row of an embedding table)."""

    low: float | None = None
    high: float | None = None
    integer: bool = False

    def to_json(self) -> dict:
        return {"low": self.low, "high": self.high, "integer": self.integer}

    @classmethod
    def from_json(cls, data: dict) -> Column:
        return cls(data.get("low"), data.get("high"), bool(data.get("integer", False)))

    @classmethod
    def code(cls, count: int) -> Column:
        """A categorical column of `count` codes 0..count-1."""
        return cls(0, count - 1, True)


@dataclass(frozen=True)
class SampleSpec:
    """One raw sample of a device's window, as the service and the device see it.

    An integer sample of shape () is a token (an item id) and comes as `window`; any
    other sample comes as `samples`, one flattened row of floats each. `low`/`high`
    bound integer values (inclusive). A float sample may describe each of its flattened
    values (`columns`: range, whole numbers), e.g. a table row of numeric features and
    categorical codes. The request schema, the OpenAPI document, the device's checks
    and export's example inputs are built from this description.
    """

    dtype: str
    shape: tuple[int, ...] = ()
    low: int | None = None
    high: int | None = None
    columns: tuple[Column, ...] = ()

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"sample dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.columns and (self.dtype != "float32" or len(self.columns) != self.width):
            raise ValueError(f"columns describe the {self.width} values of a float32 sample of shape {self.shape}, "
                             f"got {len(self.columns)} for a {self.dtype} sample")
        for i, c in enumerate(self.columns):
            if c.low is not None and c.high is not None and c.low > c.high:
                raise ValueError(f"column {i}: low {c.low} is above high {c.high}")

    @property
    def is_token(self) -> bool:
        return self.dtype == "int64" and self.shape == ()

    @property
    def field(self) -> str:
        """The request field of a raw window of such samples."""
        return "window" if self.is_token else "samples"

    @property
    def width(self) -> int:
        """Values in one flattened sample."""
        return prod(self.shape)

    def to_json(self) -> dict:
        out = {"dtype": self.dtype, "shape": list(self.shape), "low": self.low, "high": self.high}
        if self.columns:  # absent for samples that describe no columns: their manifests are unchanged
            out["columns"] = [c.to_json() for c in self.columns]
        return out

    @classmethod
    def from_json(cls, data: dict) -> SampleSpec:
        return cls(str(data["dtype"]), tuple(int(d) for d in data["shape"]), data.get("low"), data.get("high"),
                   tuple(Column.from_json(c) for c in data.get("columns") or ()))

    def rows(self, values: object) -> np.ndarray:
        """Samples (n, *shape) in this dtype from any layout of whole samples; ValueError naming the bad one."""
        x = np.asarray(values, dtype=self.dtype)
        if x.size == 0 or x.size % self.width:
            raise ValueError(f"values of shape {x.shape} are not whole samples of shape {self.shape}")
        x = x.reshape(-1, *self.shape)
        if self.dtype == "int64":
            flat = x.reshape(len(x), -1)
            bad = ((flat < self.low) if self.low is not None else np.zeros_like(flat, bool)) | (
                (flat > self.high) if self.high is not None else np.zeros_like(flat, bool))
            if bad.any():
                row = int(np.nonzero(bad.any(1))[0][0])
                raise ValueError(f"sample {row} has a value outside {self.low}..{self.high}")
        elif not np.isfinite(x).all():
            row = int(np.nonzero(~np.isfinite(x.reshape(len(x), -1)).all(1))[0][0])
            raise ValueError(f"sample {row} is not finite")
        elif self.columns:
            self.check_columns(x.reshape(len(x), -1))
        return x

    def check_columns(self, flat: np.ndarray) -> None:
        """ValueError naming the first sample and column of `flat` (n, width) outside its column's range
        or not a whole number where the column holds codes."""
        low, high, integer = self._bounds()
        bad = (flat < low) | (flat > high) | (integer & (flat != np.round(flat)))
        if bad.any():
            row, col = (int(i[0]) for i in np.nonzero(bad))
            c = self.columns[col]
            what = "a whole number " if c.integer else ""
            raise ValueError(f"sample {row}, column {col}: {flat[row, col]:g} is not {what}in "
                             f"{_bound(c.low, '-inf')}..{_bound(c.high, 'inf')}")

    def _bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        low = np.array([-np.inf if c.low is None else c.low for c in self.columns])
        high = np.array([np.inf if c.high is None else c.high for c in self.columns])
        return low, high, np.array([c.integer for c in self.columns])

    def examples(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` valid random samples (count, *shape) of this spec: token ids in their range, codes
        of every categorical column, uniform floats in [0, 1) clipped into each column's range."""
        if self.dtype == "int64":
            low = 0 if self.low is None else self.low
            high = low + 1000 if self.high is None else self.high
            return rng.integers(low, high + 1, (count, *self.shape), dtype=np.int64)
        x = rng.random((count, self.width))
        if self.columns:
            low, high, integer = self._bounds()
            finite = np.isfinite(low) & np.isfinite(high)
            span = np.where(finite, high - low, 1.0)
            x = np.where(finite, low + x * span, np.clip(x, low, high))
            codes = rng.integers(np.where(finite, low, 0).astype(np.int64),
                                 np.where(finite, high, 0).astype(np.int64) + 1, (count, self.width))
            x = np.where(integer, np.where(finite, codes, np.clip(np.round(x), low, high)), x)
        return x.reshape(count, *self.shape).astype(np.float32)


def _bound(value: float | None, infinite: str) -> str:
    return infinite if value is None else f"{value:g}"


@dataclass(frozen=True)
class GraphInput:
    """One input of a device graph: dtype and shape (None for a dynamic dimension).

    `pad` makes it a sequence (the last dimension): values oldest first, the last ones
    kept, left-aligned, padded with `pad` (which is also dropped from the values given).
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    pad: int | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "pad": self.pad}

    @classmethod
    def from_json(cls, data: dict) -> GraphInput:
        shape = tuple(None if d is None else int(d) for d in data["shape"])
        return cls(str(data["name"]), str(data["dtype"]), shape, data.get("pad"))

    def encode(self, value: object) -> np.ndarray:
        """A value in any layout -> this input's dtype and shape (numpy only: the device's encoding)."""
        if self.pad is not None:
            length = int(self.shape[-1])  # type: ignore[arg-type]
            ids = np.asarray(value, dtype=self.dtype).reshape(-1)
            ids = ids[ids != self.pad][-length:] if length else ids[:0]
            out = np.full(length, self.pad, dtype=self.dtype)
            out[: len(ids)] = ids
            return out.reshape([1 if d is None else d for d in self.shape])
        x = np.ascontiguousarray(value, dtype=self.dtype)
        fixed = [d for d in self.shape if d is not None]
        if None not in self.shape:
            return x.reshape(self.shape)
        size = prod(fixed)
        if x.size == 0 or x.size % max(size, 1):
            raise ValueError(f"input {self.name!r}: {x.shape} does not fit {list(self.shape)}")
        return x.reshape([-1 if d is None else d for d in self.shape])
