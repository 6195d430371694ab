"""Train, evaluate and compare a user's task end to end: the global model (base), DUET on top of
it, and DUET's own static part with the global head, with paired intervals over devices and seeds.

The same functions `duet train`, `duet evaluate` and `duet compare` run; this module only
strings them together for a user who works from Python.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from duet.atomic import write_bytes, write_json
from duet.config import GeneratorConfig, ModelConfig, TrainConfig
from duet.report.stats import paired_bootstrap, seed_interval
from duet.task import load_task
from duet.training.evaluation import evaluate_run
from duet.training.loop import run_config_for, train

log = logging.getLogger("duet.own")


def train_runs(data: str | Path, out: str | Path, seed: int = 0, epochs: int | None = None,
               duet_epochs: int | None = None, threads: int | None = None, encoder: str = "mean",
               progress: bool = True) -> tuple[Path, Path]:
    """The base run (the global model) and a DUET run on top of it, both selected on validation."""
    out = Path(out)
    common = {"seed": seed, "threads": threads, "batch_size": 128}
    model = ModelConfig(backbone="own")
    base = run_config_for(data, model=model, train=TrainConfig(method="base", epochs=epochs, **common))
    if not (out / "base" / "manifest.json").exists():
        train(base, out / "base", progress=progress)
    duet = run_config_for(data, model=model, generator=GeneratorConfig(encoder=encoder),
                          train=TrainConfig(method="duet", epochs=duet_epochs, init_run=str(out / "base"), **common))
    if not (out / "duet" / "manifest.json").exists():
        train(duet, out / "duet", progress=progress)
    return out / "base", out / "duet"


def _per_device(run: Path, metric: str, split: str, suffix: str = "") -> dict[int, float]:
    import json

    return {int(k): v for k, v in json.loads((run / f"device_{metric}_{split}{suffix}.json").read_text()).items()}


def compare_with_global(data: str | Path, out: str | Path, seeds: int = 1, epochs: int | None = None,
                        duet_epochs: int | None = None, threads: int | None = None, progress: bool = True) -> dict:
    """Base, DUET and DUET's static part with the global head on the test split, for `seeds` seeds;
    DUET - base and DUET - its own static part (the generator's own share) with a paired bootstrap
    interval over devices and seeds and a t-interval over seed means. Writes OUT/results.json and .md."""
    out = Path(out)
    task = load_task(run_config_for(data).builder)
    metric = task.select_metric
    scores: dict[str, list[dict[int, float]]] = {"base": [], "duet": [], "duet-global": []}
    overall: dict[str, list[float]] = {k: [] for k in scores}
    for seed in range(seeds):
        base, duet = train_runs(data, out / f"seed{seed}", seed, epochs, duet_epochs, threads, progress=progress)
        for name, run, head in (("base", base, "generated"), ("duet", duet, "generated"),
                                ("duet-global", duet, "global")):
            overall[name].append(evaluate_run(run, "test", head=head)[metric])
            scores[name].append(_per_device(run, metric, "test", "_global" if head == "global" else ""))
    results: dict = {"data": str(data), "task": task.name, "metric": metric, "seeds": seeds, "unit": task.unit,
                     "methods": {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                                     "per_seed": v} for k, v in overall.items()},
                     "differences": {}}
    for a, b in (("duet", "base"), ("duet", "duet-global")):
        devices = sorted(set.intersection(*(set(s) for s in scores[a] + scores[b])))
        diff = np.array([[sa[d] - sb[d] for d in devices] for sa, sb in zip(scores[a], scores[b], strict=True)])
        results["differences"][f"{a} - {b}"] = {"paired": paired_bootstrap(diff), "seed_level": seed_interval(diff)}
    write_json(out / "results.json", results)
    report = out / "results.md"
    write_bytes(report, render(results).encode())
    results["report"] = report
    return results


def render(results: dict) -> str:
    """results.json as a short Markdown report."""
    metric, unit = results["metric"], results["unit"]
    lines = [f"# {results['task']}: DUET against the global model", "",
             f"Test {metric}, {results['seeds']} seed(s); intervals: 95% paired bootstrap over {unit}s and seeds, "
             "and a t-interval over seed means (with 2 or more seeds).", "",
             "| method | mean | std (ddof 1) |", "|---|---:|---:|"]
    for name, m in results["methods"].items():
        lines.append(f"| {name} | {m['mean']:.4f} | {m['std']:.4f} |")
    lines += ["", "| difference | mean | paired interval | seed-level interval |", "|---|---:|---|---|"]
    for name, d in results["differences"].items():
        p, s = d["paired"], d["seed_level"]
        seed = f"[{s['lo']:+.4f}, {s['hi']:+.4f}]" if s["lo"] is not None else "(one seed)"
        lines.append(f"| {name} | {p['mean']:+.4f} | [{p['lo']:+.4f}, {p['hi']:+.4f}] | {seed} |")
    return "\n".join(lines) + "\n"
