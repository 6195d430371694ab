"""`duet evaluate`: score a finished run of any task on a split, with its generated heads or,
for a DUET run, its own static part with the global head (what generation itself adds)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from duet.config import RunConfig
from duet.duet_model import DuetModel
from duet.errors import DuetError

HEADS = ("generated", "global")


def head_suffix(head: str) -> str:
    """The file suffix of a head's results (metrics_<split><suffix>.json)."""
    return "_global" if head == "global" else ""


def load_scorer(run: str | Path, head: str = "generated", device: str = "cpu") -> tuple[RunConfig, nn.Module]:
    """(config, model) of a finished run, on `device`; `head="global"` gives a DUET run's own
    static part with the global head theta_g (no generation)."""
    from duet.accel import resolve_device
    from duet.checkpoint import load_run

    if head not in HEADS:
        raise DuetError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
    target = resolve_device(device)
    config, model, _ = load_run(run)
    if head == "global":
        if not isinstance(model, DuetModel):
            raise DuetError(f"{run}: --head global is for DUET runs (a {config.train.method} run has only the global head)")
        model = model.device_model
    return config, model.to(target)


def evaluate_run(run: str | Path, split: str, data: str | Path | None = None,
                 head: str = "generated", device: str = "cpu") -> dict[str, float]:
    """Evaluate a finished run on `split` through its task, which writes RUN/metrics_<split>.json
    (metrics_<split>_global.json for the global head) and the per-unit scores behind paired intervals."""
    from duet.task import task_of_run

    config, model = load_scorer(run, head, device)
    return task_of_run(config).evaluate_run(Path(run), config, model, split, data, head_suffix(head))
