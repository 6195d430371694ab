"""The comparison any task with a base and a DUET method gets (`BaseTask.compare`, and a user's
own task through `duet.tasks.own.compare_with_global`): the global model (base), DUET trained on
top of it, and DUET's own static part with the global head, for every seed; DUET − base and DUET −
its own static part (the generator's own share) with a paired interval over units and seeds and a
t-interval over seed means. With several window encoders, DUET's is chosen on validation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from duet.atomic import write_bytes, write_json
from duet.comparison.engine import (
    Method,
    Outcome,
    Scores,
    Seed,
    difference,
    mean_std,
    run_or_reuse,
    run_seed,
)
from duet.config import GeneratorConfig, ModelConfig, TrainConfig
from duet.task import Task, load_task
from duet.training.evaluation import evaluate_run
from duet.training.loop import read_dataset_manifest, run_config_for

PAIRS = (("duet", "base"), ("duet", "duet-global"))


def train_runs(data: str | Path, out: str | Path, seed: int = 0, epochs: int | None = None,
               duet_epochs: int | None = None, threads: int | None = None, encoder: str | None = None,
               progress: bool = True, task: Task | None = None, name: str = "duet") -> tuple[Path, Path]:
    """The base run (the global model) and a DUET run on top of it (OUT/base, OUT/<name>), both selected
    on validation; finished runs are reused."""
    out = Path(out)
    task = task or _task(data)
    common = {"seed": seed, "threads": threads, "batch_size": task.defaults.get("batch_size", 128)}
    model = ModelConfig(backbone=task.backbones[0])
    base = run_config_for(data, task, model=model, train=TrainConfig(method="base", epochs=epochs, **common))
    run_or_reuse(base, out / "base", progress)
    generator = GeneratorConfig(encoder=encoder or task.defaults.get("encoder", "mean"))
    duet = run_config_for(data, task, model=model, generator=generator,
                          train=TrainConfig(method="duet", epochs=duet_epochs, init_run=str(out / "base"), **common))
    run_or_reuse(duet, out / name, progress)
    return out / "base", out / name


def _task(data: str | Path) -> Task:
    from duet.task import builder_of

    return load_task(builder_of(read_dataset_manifest(data), Path(data) / "manifest.json"))


def scored(task: Task, run: Path, split: str, head: str = "generated") -> Scores:
    """A finished run's metrics on `split` and the task's metric per unit (`Task.unit_scores`)."""
    metrics = evaluate_run(run, split, head=head)
    return Scores(metrics, task.unit_scores(run, split, "_global" if head == "global" else ""))


def compare_with_global(data: str | Path, out: str | Path, seeds: int = 1, epochs: int | None = None,
                        duet_epochs: int | None = None, threads: int | None = None, progress: bool = True,
                        encoders: tuple[str, ...] | None = None) -> dict:
    """Base, DUET and DUET's static part with the global head on the test split, for `seeds` seeds
    (OUT/seed<k>/...); writes OUT/results.json and OUT/results.md and returns the results (with
    `report`: the Markdown file). `encoders`: DUET's window encoders to choose from on validation
    (default: the task's)."""
    out, task = Path(out), _task(data)
    encoders = tuple(encoders or (task.defaults.get("encoder", "mean"),))

    def runs(seed: int, encoder: str) -> tuple[Path, Path]:
        name = "duet" if len(encoders) == 1 else f"duet-{encoder}"
        return train_runs(data, out / f"seed{seed}", seed, epochs, duet_epochs, threads, encoder, progress, task, name)

    methods = [
        Method("base", lambda s, _: Outcome(scored(task, runs(s.seed, encoders[0])[0], "test"))),
        Method("duet", lambda s, encoder: Outcome(scored(task, runs(s.seed, encoder)[1], "test")), settings=encoders,
               validate=(lambda s, encoder: scored(task, runs(s.seed, encoder)[1], "valid")) if len(encoders) > 1
               else None),
        Method("duet-global", lambda s, _: Outcome(scored(task, runs(s.seed, _chosen(s))[1], "test", "global"))),
    ]
    outcomes = [run_seed(methods, seed, task.select_metric, task.higher_is_better) for seed in range(seeds)]
    results = summarize(task, data, outcomes)
    if len(encoders) > 1:
        results["choices"] = {"duet": [{"encoder": o["duet"].setting,
                                        "valid": {e: v.metrics[task.select_metric] for e, v in o["duet"].tried.items()}}
                                       for o in outcomes]}
    write_json(out / "results.json", results)
    report = out / "results.md"
    write_bytes(report, render(results).encode())
    return {**results, "report": report}


def _chosen(seed: Seed) -> str:
    return seed.outcomes["duet"].setting


def summarize(task: Task, data: str | Path, outcomes: list[dict[str, Outcome]]) -> dict:
    """results.json: each method's test metric (mean, std over seeds, per seed) and the differences."""
    metric = task.select_metric
    overall = {name: [o[name].test.metrics[metric] for o in outcomes] for name in outcomes[0]}
    results: dict[str, Any] = {
        "data": str(data), "task": task.name, "metric": metric, "seeds": len(outcomes), "unit": task.unit,
        **({} if task.higher_is_better else {"higher_is_better": False}),
        "methods": {name: {**mean_std(v), "per_seed": v} for name, v in overall.items()}, "differences": {}}
    for a, b in PAIRS:
        d = difference([(o[a].test.units, o[b].test.units) for o in outcomes])
        seed_level, excluded = d.pop("seed_level"), d.pop("excluded", 0)
        results["differences"][f"{a} - {b}"] = {"paired": d, "seed_level": seed_level,
                                                **({"excluded": excluded} if excluded else {})}
    # The raw values behind the differences (null: undefined for that unit), so that they can be recomputed.
    results["units"] = {name: [{str(u): v if math.isfinite(v) else None for u, v in o[name].test.units.items()}
                               for o in outcomes] for name in outcomes[0]}
    return results


def render(results: dict) -> str:
    """results.json as a short Markdown report."""
    metric, unit = results["metric"], results["unit"]
    lower = "" if results.get("higher_is_better", True) else " (lower is better)"
    lines = [f"# {results['task']}: DUET against the global model", "",
             f"Test {metric}{lower}, {results['seeds']} seed(s); intervals: 95% paired bootstrap over {unit}s and "
             "seeds, and a t-interval over seed means (with 2 or more seeds).", "",
             "| method | mean | std (ddof 1) |", "|---|---:|---:|"]
    for name, m in results["methods"].items():
        lines.append(f"| {name} | {m['mean']:.4f} | {m['std']:.4f} |")
    lines += ["", "| difference | mean | paired interval | seed-level interval |", "|---|---:|---|---|"]
    for name, d in results["differences"].items():
        p, s = d["paired"], d["seed_level"]
        seed = f"[{s['lo']:+.4f}, {s['hi']:+.4f}]" if s["lo"] is not None else "(one seed)"
        lines.append(f"| {name} | {p['mean']:+.4f} | [{p['lo']:+.4f}, {p['hi']:+.4f}] | {seed} |")
    left_out = [(name, d["excluded"], d["paired"]["users"]) for name, d in results["differences"].items()
                if d.get("excluded")]
    if left_out:
        lines += [""] + [f"{name}: {n} of {n + kept} {unit}s left out of the intervals ({metric} undefined for them "
                         "in some seed, e.g. a single class in their test period)." for name, n, kept in left_out]
    return "\n".join(lines) + "\n"
