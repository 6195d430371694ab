"""The comparison engine every task's `duet compare` runs: methods, each under the settings it is
tried with (chosen on validation), for every seed; per-unit test scores; mean and std over seeds;
and each difference with two intervals.

A task's comparison is a list of `Method`s: how to get a method's test outcome under a setting
(train a run or reuse a finished one, adapt a model per device, ...) and, where it has settings to
choose between, how to score one on validation. `run_seed` runs them in order for one seed (a
method may read the outcomes of those before it: DUET's static part with the global head reads
DUET's chosen run). What the task keeps of each outcome, and how its report looks, stay the
task's; the statistics are the engine's (`mean_std`, `difference`).

A unit (a device, a user) whose metric is undefined in a seed (NaN: one class in its test period
makes its AUC undefined) is left out of that difference's intervals, and the difference says how
many were (`excluded`), so a report can show it instead of an interval that is NaN.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from duet.report.stats import paired_bootstrap, seed_interval

log = logging.getLogger("duet.compare")


@dataclass
class Scores:
    """A method's scores on one split: its metrics and the task's metric per unit (NaN: undefined
    for that unit); `keep` holds anything else the task records beside them."""

    metrics: dict[str, float]
    units: dict[Any, float] = field(default_factory=dict)
    keep: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """One method in one seed: its test scores, its validation scores at the chosen setting (where it
    was validated), the chosen setting and every setting's validation scores, by label."""

    test: Scores
    valid: Scores | None = None
    setting: Any = None
    tried: dict[str, Scores] = field(default_factory=dict)


@dataclass
class Seed:
    """What a method sees: the seed, the outcomes of the methods run before it in this seed, and
    (when it is tested) its own settings' validation scores, by label."""

    seed: int
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    tried: dict[str, Scores] = field(default_factory=dict)


@dataclass
class Method:
    """A method of a comparison. `test(seed, setting)` gives its outcome on test; with `validate`,
    every setting is scored on validation first and the best on `select` is the one tested."""

    name: str
    test: Callable[[Seed, Any], Outcome]
    settings: Sequence[Any] = (None,)
    validate: Callable[[Seed, Any], Scores] | None = None
    select: str | None = None  # the validation metric that chooses (None: the comparison's)
    label: Callable[[Any], str] = str  # a setting's name in the report
    reuse: Callable[[Seed], Outcome | None] | None = None  # a finished outcome from an earlier start, if any


def choose(scores: Mapping[str, float], higher_is_better: bool = True) -> str:
    """The key with the best score; ties go to the first listed."""
    if not scores:
        raise ValueError("nothing to choose from")
    sign = 1.0 if higher_is_better else -1.0
    return max(scores, key=lambda key: (sign * scores[key], -list(scores).index(key)))


def run_seed(methods: Sequence[Method], seed: int, select: str, higher_is_better: bool = True) -> dict[str, Outcome]:
    """Every method for one seed, in order: reused where it finished before; else its settings scored
    on validation where it has a `validate`, and the best (on `select`, or the method's own) tested."""
    context = Seed(seed)
    for method in methods:
        reused = method.reuse(context) if method.reuse is not None else None
        if reused is not None:
            context.outcomes[method.name] = reused
            continue
        tried: dict[str, Scores] = {}
        settings = {method.label(s): s for s in method.settings}
        if method.validate is not None:
            for name, setting in settings.items():
                tried[name] = method.validate(context, setting)
        key = method.select or select
        chosen = choose({n: tried[n].metrics[key] for n in tried}, higher_is_better) if len(tried) > 1 else None
        if chosen is not None:
            log.info("seed %d: %s %s chosen on validation (%s)", seed, method.name, chosen,
                     ", ".join(f"{n} {s.metrics[key]:.4f}" for n, s in tried.items()))
        name = chosen or next(iter(settings))
        context.tried = tried
        outcome = method.test(context, settings[name])
        outcome.setting = settings[name]
        outcome.valid = outcome.valid or tried.get(name)
        outcome.tried = tried
        context.outcomes[method.name] = outcome
    return context.outcomes


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample std (ddof 1; 0 for one value) over seeds, NaNs left out (NaN if all are)."""
    arr = np.asarray(values, dtype=float)
    finite = arr[~np.isnan(arr)]
    return {"mean": float(np.nanmean(arr)) if len(finite) else float("nan"),
            "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0}


def defined_units(pairs: Sequence[tuple[Mapping, Mapping]]) -> tuple[list, int]:
    """The units every (A, B) pair scores with a defined (finite) value on both sides, in sorted order,
    and how many of the units they all score were left out for an undefined value."""
    common = sorted(set.intersection(*(set(a) & set(b) for a, b in pairs)))
    defined = [u for u in common if all(math.isfinite(a[u]) and math.isfinite(b[u]) for a, b in pairs)]
    return defined, len(common) - len(defined)


def difference(pairs: Sequence[tuple[Mapping, Mapping]]) -> dict:
    """A − B over units and seeds, from one (A's, B's) per-unit scores pair per seed: the paired
    bootstrap (units and seeds resampled) with a t-interval over seed means as `seed_level`;
    `excluded` counts units left out for an undefined metric (absent when none were)."""
    units, excluded = defined_units(pairs)
    if not units:
        raise ValueError(f"no unit has a defined score on both sides ({excluded} left out)")
    diff = np.array([[a[u] - b[u] for u in units] for a, b in pairs], dtype=float)
    out = {**paired_bootstrap(diff), "seed_level": seed_interval(diff)}
    if excluded:
        out["excluded"] = excluded
    return out


def run_or_reuse(config: Any, out: Path, progress: bool = True) -> Path:
    """Train `config` into `out`, resuming an interrupted run there; a finished run is reused as it is."""
    from duet.checkpoint import is_finished_run
    from duet.training.loop import train

    if is_finished_run(out):
        log.info("reusing %s", out)
        return out
    log.info("training %s", out)
    train(config, out, resume=(out / "config.json").exists(), progress=progress)
    return out
