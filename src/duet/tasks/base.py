"""The defaults of a task: a task subclasses `BaseTask` and gives what is its own.

What every task must give: `name`, `builder`, `select_metric`, `facts`, `load`, `batcher`, `build`,
`loss`, `evaluate`, `evaluate_run` and `sample`. Everything else has a default here: one static
part, the methods base and DUET, no `duet prepare` source, the generic comparison (base, DUET and
DUET's static part with the global head, `duet.comparison.generic`), no device side. A task of
sample fleets (devices, each a stream of samples) starts from `duet.tasks.fleet.FleetTask`, which
gives the data, batching, evaluation and device side too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from duet.errors import DuetError, refuse_given
from duet.task import Extras, Simulation

# `duet compare` options the generic comparison takes.
GENERIC_COMPARE_OPTIONS = ("seeds", "epochs", "duet_epochs", "threads", "quick")


class BaseTask:
    """Defaults of every member of `duet.task.Task` a task need not write itself."""

    name: str
    builder: str
    select_metric: str
    higher_is_better = True  # of select_metric: what selects epochs and settings, and reports read
    unit = "device"  # what paired intervals resample
    backbones: tuple[str, ...] = ("default",)
    methods: tuple[str, ...] = ("base", "duet")
    gradient_methods: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = {}
    sources: tuple[str, ...] = ()
    options = None  # no training options of its own (a pydantic model of them otherwise)

    def fit_without_gradients(self, config, data: Any) -> nn.Module:  # noqa: ARG002
        raise DuetError(f"--method {config.train.method}: {self.name} methods are {', '.join(self.methods)}")

    def unit_scores(self, run: Path, split: str, suffix: str) -> dict[str, float]:
        """The per-unit scores `evaluate_run` wrote (RUN/<unit>_<select_metric>_<split><suffix>.json; null
        there, NaN here: undefined for that unit)."""
        scores = json.loads((Path(run) / f"{self.unit}_{self.select_metric}_{split}{suffix}.json").read_text())
        return {unit: float("nan") if value is None else value for unit, value in scores.items()}

    # --- command line
    def prepare(self, source: str, out: Path, options: dict[str, Any], overwrite: bool) -> None:  # noqa: ARG002
        raise DuetError(f"task {self.name!r} has no `duet prepare` source {source!r}")

    def compare(self, data: Path, out: Path, options: dict[str, Any], progress: bool) -> Path:
        """The generic comparison: base, DUET and DUET's static part with the global head."""
        from duet.comparison.generic import compare_with_global

        refuse_given({"--" + k.replace("_", "-"): v for k, v in options.items() if k not in GENERIC_COMPARE_OPTIONS},
                     f"{data} is a dataset of task {self.name!r}: {{}} do not apply")
        quick = bool(options.get("quick"))
        return compare_with_global(data, out, seeds=options.get("seeds") or 1,
                                   epochs=options.get("epochs") or (10 if quick else None),
                                   duet_epochs=options.get("duet_epochs") or (3 if quick else None),
                                   threads=options.get("threads"), progress=progress)["report"]

    def describe(self, data: Path, plot: Path | None, top: int) -> None:  # noqa: ARG002
        from rich.console import Console

        from duet.manifest import read_any_manifest

        manifest = read_any_manifest(data, "duet dataset", ("counts",))
        console = Console()
        console.print(f"[bold]{data}[/bold]  task {self.name}, W={manifest.get('window_len')}")
        for name, c in manifest["counts"].items():
            console.print(f"  {name}: " + ", ".join(f"{v:,} {k}" for k, v in c.items()))

    # --- device
    def device_graph(self, model: nn.Module) -> None:  # noqa: ARG002
        return None  # no device side: `duet export` and `duet simulate` say so in one line

    def bundle_extras(self, config, model: nn.Module, data: str | Path | None) -> Extras:  # noqa: ARG002
        return Extras()

    def simulation(self, config, model: nn.Module, data: str | Path | None, devices: int) -> Simulation:  # noqa: ARG002
        raise NotImplementedError(f"task {self.name!r} has no device side to simulate")
