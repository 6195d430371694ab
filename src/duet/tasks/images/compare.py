"""`duet compare` on an image fleet: the global model, per-device fine-tuning with k
labels, TENT, batch-norm statistics of the window (with the global model and with a model
trained for them, ARM-BN), an oracle per shift type, and DUET with and without SWA, on the
same devices, samples and seeds.

DUET comes in variants that differ in which parameters are dynamic and how the window is
read (`DUET_VARIANTS`: the head only; the head plus a per-channel scale and shift in every
block, FiLM; the head from a set encoder whose samples attend to each other). Every variant
is trained for every seed and the one with the best validation accuracy is DUET's row.

Every choice (the DUET variant, fine-tuning and TENT steps/lr, the batch-norm prior, every
model's epochs) is made on the validation devices, whose figures are kept (`valid_metrics`);
the test devices are scored once. A comparison interrupted after some seeds continues from
the next one when rerun with the same configuration. Differences come with 95% paired bootstrap intervals over devices and seeds
(a device's accuracy is the unit).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from duet.atomic import write_json
from duet.checkpoint import load_run
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
from duet.config import GeneratorConfig, ModelConfig, Strict, TrainConfig
from duet.tasks.fleet.batches import predict_samples
from duet.tasks.fleet.store import FleetData, FleetSplit, load_fleet
from duet.tasks.images.baselines import (
    Adapted,
    bnstats_images,
    finetune_images,
    tent_images,
    train_oracle,
)
from duet.tasks.images.metrics import classification_metrics, device_groups, per_group_accuracy

log = logging.getLogger("duet.compare")

# DUET variant -> (FiLM in the static part, window encoder). Run directories: duet (head),
# duet-film, duet-set; a FiLM variant starts from its own base model, base-film.
DUET_VARIANTS: dict[str, tuple[bool, str]] = {"head": (False, "mean"), "film": (True, "mean"), "set": (False, "set")}
Variant = Literal["head", "film", "set"]


class ImageCompareConfig(Strict):
    """One image comparison; saved as OUT/compare_config.json."""

    data: str
    seeds: int = Field(3, ge=1)
    epochs: int | None = Field(None, ge=1, description="base epochs (None: duet train's default)")
    duet_epochs: int | None = Field(None, ge=1, description="DUET stage-2 epochs (None: duet train's default)")
    ks: tuple[int, ...] = (5, 20)
    finetune_steps: tuple[int, ...] = (10, 30)
    finetune_lrs: tuple[float, ...] = (1e-3, 1e-2)
    tent_steps: tuple[int, ...] = (1, 10)
    tent_lrs: tuple[float, ...] = (1e-3, 1e-2)
    bn_priors: tuple[int, ...] = Field((0, 8, 32), description="batch-norm prior strengths N tried on validation "
                                       "(batch-norm statistics and ARM-BN, each its own)")
    windows: tuple[int, ...] = (1, 5, 10, 20, 50)
    oracle: bool = True
    cost_repeats: int = Field(20, ge=1, description="timings of DUET's generation per seed (their median is kept)")
    threads: int | None = Field(1, ge=1)
    duet_variants: tuple[Variant, ...] = Field(("head", "film", "set"), description="DUET variants trained for "
                                               "every seed; the best on validation is DUET's row")

    @field_validator("duet_variants")
    @classmethod
    def _some_distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("give at least one DUET variant, each once")
        return value


def _run(cfg: ImageCompareConfig, out: Path, seed: int, method: str, num_generators: int = 3,
         init: Path | None = None, progress: bool = True, variant: str = "head") -> Path:
    from duet.training.loop import run_config_for

    duet = method == "duet"
    epochs = cfg.duet_epochs if duet else cfg.epochs
    film, encoder = DUET_VARIANTS[variant]
    train_cfg = TrainConfig.model_validate({
        "method": method, "seed": seed, "batch_size": 128, "threads": cfg.threads,
        "init_run": str(init) if init else None, **({"epochs": epochs} if epochs else {})})
    generator = GeneratorConfig(encoder=encoder, num_generators=num_generators) if duet else None
    config = run_config_for(cfg.data, model=ModelConfig(backbone="cnn", film=film), train=train_cfg,
                            generator=generator)
    return run_or_reuse(config, out, progress)


def _score(logits: np.ndarray, split: FleetSplit, **keep: object) -> Scores:
    """Classification metrics of a split's logits and each device's accuracy (the paired unit)."""
    metrics = classification_metrics(split.y, logits, device_groups(split))
    return Scores(metrics, per_group_accuracy(split.y, logits.argmax(1), split.device), dict(keep))


def generation_seconds(run: Path, split: FleetSplit, window_len: int, batch: int = 256,
                       repeats: int = 20) -> dict[str, float]:
    """Cloud time per device to make its head, one thread, alone and amortised over a batch
    (medians over `repeats`): from the raw window (`single_s`, `batched_s`: the window's
    static features, then the generator) and from features the device sends (`features_*`:
    privacy mode; a device has those features already, it computed them to classify)."""
    from duet.tasks.fleet.batches import make_batch

    _, model, _ = load_run(run)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = split.rows[np.linspace(0, len(split) - 1, batch).astype(int)]
    full = make_batch(split.data, rows, np.zeros(len(rows)), window_len)
    times: dict[str, list[float]] = {k: [] for k in ("single_s", "batched_s", "features_single_s",
                                                     "features_batched_s")}

    def timed(key: str, fn, per: int) -> None:
        started = time.perf_counter()
        fn()
        times[key].append((time.perf_counter() - started) / per)

    try:
        with torch.inference_mode():
            features, mask = model.window_features(full.window, full.mask)
            for i in range(repeats + 3):
                j = i % batch
                timed("single_s", lambda j=j: model.generate(full.window[j][None], full.mask[j][None]), 1)
                timed("batched_s", lambda: model.generate(full.window, full.mask), batch)
                timed("features_single_s", lambda j=j: model.generate_from_features(features[j][None],
                                                                                    mask[j][None]), 1)
                timed("features_batched_s", lambda: model.generate_from_features(features, mask), batch)
    finally:
        torch.set_num_threads(previous)
    return {k: float(np.median(v[3:])) for k, v in times.items()}


def remeasure_generation(report: str | Path) -> None:
    """Measure DUET's generation cost again for every seed of a finished report (e.g. after
    the measurement changed), then rewrite the report."""
    report = Path(report)
    results, data = _finished(report, "test")
    for seed, entry in results["seeds"].items():
        entry["costs"]["duet"] = generation_seconds(report / "runs" / f"seed{seed}" / "duet", data["test"],
                                                    data.window_len)
    write_report(results, data, report)


def _finished(report: Path, split: str) -> tuple[dict, FleetData]:
    """A finished report's results (without their summary, which write_report recomputes)
    and its dataset with the labels of `split`."""
    results = json.loads((report / "results.json").read_text())
    results.pop("summary", None)
    cfg = ImageCompareConfig.model_validate_json((report / "compare_config.json").read_text())
    return results, load_fleet(cfg.data, (split,))


def compare_images(cfg: ImageCompareConfig, report: str | Path, progress: bool = True) -> dict:
    """Train and score every method for every seed; write OUT/results.{json,md} and plots."""
    report = Path(report)
    report.mkdir(parents=True, exist_ok=True)
    data = load_fleet(cfg.data, ("train", "valid", "test"))
    results = _resumable(report, cfg)
    write_json(report / "compare_config.json", json.loads(cfg.model_dump_json()))
    methods = _methods(cfg, report, data, progress)
    rewritten = False
    for seed in range(cfg.seeds):
        if str(seed) in results["seeds"]:
            log.info("seed %d: reusing its finished results", seed)
            continue
        outcomes = run_seed(methods, seed, "accuracy")
        for name, choice in _choices(outcomes).items():
            results["choices"].setdefault(name, []).append(choice)
        results["seeds"][str(seed)] = _seed_record(outcomes)
        write_report(results, data, report)
        rewritten = True
    if not rewritten:  # every seed reused (e.g. fewer --seeds than before): the report still matches them
        write_report(results, data, report)
    return results


def _methods(cfg: ImageCompareConfig, report: Path, data: FleetData, progress: bool) -> list[Method]:
    """The image comparison as the engine runs it: each method, its settings and how validation scores one."""
    valid, test, window_len = data["valid"], data["test"], data.window_len

    def runs(seed: Seed) -> Path:
        return report / "runs" / f"seed{seed.seed}"

    def base(seed: Seed) -> nn.Module:
        return load_run(_run(cfg, runs(seed) / "base", seed.seed, "base", progress=progress))[1]

    def scored_run(run: Path, split: FleetSplit, **keep: object) -> Scores:
        return _score(predict_samples(load_run(run)[1], split), split, run=run, **keep)

    def duet_variant(seed: Seed, variant: str) -> Path:
        """A DUET variant's run (from its own base run), trained or reused."""
        folder = runs(seed)
        init = _run(cfg, variant_dir(folder, variant, "base"), seed.seed, "base", progress=progress, variant=variant)
        return _run(cfg, variant_dir(folder, variant, "duet"), seed.seed, "duet", 3, init, progress, variant)

    def validate_variant(seed: Seed, variant: str) -> Scores:
        run = duet_variant(seed, variant)
        model = load_run(run)[1]
        scores = _score(predict_samples(model, valid), valid)
        timing = generation_seconds(run, valid, window_len, repeats=cfg.cost_repeats)
        scores.keep["row"] = {
            "valid_accuracy": scores.metrics["accuracy"], "valid_accuracy_unseen": scores.metrics["accuracy_unseen"],
            "payload_bytes": 4 * model.device_model.param_spec.numel,
            "generation_single_s": timing["single_s"], "generation_batched_s": timing["batched_s"]}
        return scores

    def noswa(seed: Seed) -> Path:
        variant = seed.outcomes["duet"].setting
        return _run(cfg, variant_dir(runs(seed), variant, "duet-noswa"), seed.seed, "duet", 1,
                    variant_dir(runs(seed), variant, "base"), progress, variant)

    def curve(run: Path) -> dict[str, dict]:
        model = load_run(run)[1]
        return {str(w): _score(predict_samples(model, test, window_len=w), test).metrics for w in cfg.windows}

    def duet_test(seed: Seed, variant: str) -> Outcome:
        run = duet_variant(seed, variant)
        log.info("seed %d: generation cost and the accuracy-vs-W curve", seed.seed)
        return Outcome(scored_run(run, test, costs=generation_seconds(run, test, window_len, repeats=cfg.cost_repeats),
                                  curve=curve(run)))

    def static(seed: Seed, split: FleetSplit) -> Scores:
        """DUET's own static part (trained on in stage 2) with the global head."""
        model = load_run(seed.outcomes["duet"].test.keep["run"])[1].device_model
        return _score(predict_samples(model, split), split)

    def adapted(name: str, adapt, settings: list[tuple], model) -> Method:
        """A per-device adaptation of `model(seed)` whose setting validation chooses."""
        return Method(name, settings=settings, label=lambda s: repr(s),
                      validate=lambda seed, s: _score(adapt(model(seed), valid, *s).logits, valid),
                      test=lambda seed, s: _adapted_outcome(adapt(model(seed), test, *s), test))

    def armbn(seed: Seed) -> nn.Module:
        return load_run(_run(cfg, runs(seed) / "armbn", seed.seed, "armbn", progress=progress))[1]

    grid = [(s, lr) for s in cfg.finetune_steps for lr in cfg.finetune_lrs]
    methods = [
        Method("global", lambda seed, _: Outcome(_score(predict_samples(base(seed), test), test)),
               validate=lambda seed, _: _score(predict_samples(base(seed), valid), valid)),
        Method("duet", duet_test, settings=cfg.duet_variants, validate=validate_variant),
        Method("duet-noswa", lambda seed, _: Outcome(scored_run(noswa(seed), test, curve=curve(noswa(seed)))),
               validate=lambda seed, _: scored_run(noswa(seed), valid)),
        Method("duet-static", lambda seed, _: Outcome(static(seed, test)), validate=lambda seed, _: static(seed, valid)),
        *(adapted(f"finetune-{k}", lambda m, split, s, lr, k=k: finetune_images(m, split, k, s, lr, progress=progress),
                  grid, base) for k in cfg.ks),
        adapted("tent", lambda m, split, s, lr: tent_images(m, split, s, lr, progress=progress),
                [(s, lr) for s in cfg.tent_steps for lr in cfg.tent_lrs], base),
        *(adapted(name, lambda m, split, p: bnstats_images(m, split, p, context=window_len, progress=progress),
                  [(p,) for p in cfg.bn_priors], model) for name, model in (("bnstats", base), ("armbn", armbn))),
    ]
    if cfg.oracle:
        methods.append(Method("oracle", lambda seed, _: Outcome(
            _score(_oracle_logits(base(seed), data, window_len, seed.seed), test))))
    return methods


def _adapted_outcome(adapted: Adapted, split: FleetSplit) -> Outcome:
    return Outcome(_score(adapted.logits, split, costs=_costs(adapted)))


def _choices(outcomes: dict[str, Outcome]) -> dict[str, dict]:
    """What validation chose in a seed, as results.json keeps it (`choices`)."""
    out = {"duet": {"variant": outcomes["duet"].setting,
                    "valid": {v: s.keep["row"]["valid_accuracy"] for v, s in outcomes["duet"].tried.items()}}}
    for name, outcome in outcomes.items():
        if name.startswith("finetune-") or name == "tent":
            steps, lr = outcome.setting
            out[name] = {"steps": steps, "lr": lr, "valid": outcome.valid.metrics["accuracy"]}
        elif name in ("bnstats", "armbn"):
            out[name] = {"prior": outcome.setting[0], "valid": outcome.valid.metrics["accuracy"]}
    return out


def _seed_record(outcomes: dict[str, Outcome]) -> dict:
    """One seed's entry of results.json."""
    def accuracy(scores: Scores) -> dict[str, float]:
        return {str(d): a for d, a in scores.units.items()}

    validated = {name: o.valid for name, o in outcomes.items() if o.valid is not None}
    costs = {name: o.test.keep["costs"] for name, o in outcomes.items() if "costs" in o.test.keep and name != "duet"}
    return {
        "metrics": {name: o.test.metrics for name, o in outcomes.items()},
        "device_accuracy": {name: accuracy(o.test) for name, o in outcomes.items()},
        "costs": {**costs, "duet": outcomes["duet"].test.keep["costs"]},
        "window_curve": {name: outcomes[name].test.keep["curve"] for name in ("duet", "duet-noswa")},
        "variants": {v: s.keep["row"] for v, s in outcomes["duet"].tried.items()},
        "valid_metrics": {name: v.metrics for name, v in validated.items()},
        "valid_device_accuracy": {name: accuracy(v) for name, v in validated.items()},
    }


def variant_dir(runs: Path, variant: str, kind: str) -> Path:
    """Where a variant's run of `kind` (base, duet, duet-noswa) lives: the head variant's are
    plain (base, duet, duet-noswa); FiLM has its own base; the set encoder shares the base."""
    if variant == "head" or (kind == "base" and not DUET_VARIANTS[variant][0]):
        return runs / kind
    return runs / f"{kind}-{variant}"


def _resumable(report: Path, cfg: ImageCompareConfig) -> dict:
    """The finished seeds of an earlier run of this comparison with the same configuration (its
    seeds ran in order, so each choice list holds one entry per finished seed); else nothing."""
    empty: dict = {"seeds": {}, "choices": {}}
    try:  # compared as saved: a report from before a field existed is another configuration
        saved = json.loads((report / "compare_config.json").read_text())
        results = json.loads((report / "results.json").read_text())
    except (OSError, ValueError):
        return empty
    done = [str(s) for s in range(cfg.seeds) if str(s) in results.get("seeds", {})]
    done = done[: next((i for i, s in enumerate(done) if s != str(i)), len(done))]
    if {**saved, "seeds": cfg.seeds} != json.loads(cfg.model_dump_json()) or not done:
        return empty
    return {"seeds": {s: results["seeds"][s] for s in done},
            "choices": {m: c[: len(done)] for m, c in results.get("choices", {}).items()}}


def _costs(adapted: Adapted) -> dict[str, float]:
    return {"median_s": float(np.median(adapted.seconds)), "mean_s": float(adapted.seconds.mean()),
            "peak_mib": float(np.max(adapted.peak_bytes) / 2**20)}


def _oracle_logits(base, data, window_len: int, seed: int) -> np.ndarray:
    """Each test sample scored by the oracle of its device's shift type."""
    test = data["test"]
    types = {d["id"]: d["shift"]["type"] for d in data.device_info()}
    logits = np.zeros((len(test), base.num_classes), dtype=np.float32)
    for kind in sorted(set(types.values())):
        of_kind = {d for d, t in types.items() if t == kind}
        masks = {name: np.isin(data[name].device, list(of_kind)) for name in ("train", "valid", "test")}
        oracle = train_oracle(base, data["train"].select(masks["train"]), data["valid"].select(masks["valid"]),
                              window_len, seed)
        logits[masks["test"]] = predict_samples(oracle, test.select(masks["test"]))
    return logits


# ---- the report ---------------------------------------------------------------------------------

ORDER = ("global", "finetune", "tent", "bnstats", "armbn", "oracle", "duet-static", "duet-noswa", "duet")
LABELS = {"global": "global model", "tent": "TENT (no labels, gradients)", "oracle": "oracle per shift type",
          "bnstats": "batch-norm statistics (no labels, no gradient)",
          "armbn": "ARM-BN, trained for batch-norm statistics (no labels, no gradient)",
          "duet-static": "DUET's static part, global head", "duet-noswa": "DUET without SWA", "duet": "DUET (PPG+SWA)"}


NO_GRADIENT = ("bnstats", "armbn")  # device-side adaptation with forward passes only


def label(method: str) -> str:
    if method.startswith("finetune-"):
        return f"fine-tune, {method.removeprefix('finetune-')} labels"
    return LABELS[method]


def ordered(methods: set[str]) -> list[str]:
    """Methods in report order (fine-tuning by k)."""
    def key(m: str) -> tuple[int, int]:
        if m.startswith("finetune-"):
            return ORDER.index("finetune"), int(m.removeprefix("finetune-"))
        return ORDER.index(m), 0
    return sorted(methods, key=key)


def pairs(methods: list[str]) -> list[tuple[str, str]]:
    """The paired differences reported: DUET against each other method, and what training for
    the window's statistics adds (ARM-BN against the global model's statistics)."""
    others = ["global", "tent", "bnstats", "armbn", *[m for m in methods if m.startswith("finetune-")][::-1],
              "duet-noswa", "duet-static", "oracle"]
    extra = [("armbn", "bnstats")] if {"armbn", "bnstats"} <= set(methods) else []
    return [("duet", b) for b in others if b in methods] + extra


def summarize(results: dict, devices: list[dict]) -> dict:
    seeds = results["seeds"]
    methods = ordered(set.intersection(*(set(s["metrics"]) for s in seeds.values())))
    keys = sorted({k for s in seeds.values() for m in s["metrics"].values() for k in m if k != "records"})
    table = {m: {k: mean_std([s["metrics"][m].get(k, np.nan) for s in seeds.values()]) for k in keys}
             for m in methods}
    kind = {str(d["id"]): d["kind"] for d in devices}
    differences = _differences(seeds, "device_accuracy", methods, kind)
    shift = {str(d["id"]): d["shift"]["type"] for d in devices}
    by_shift: dict[str, dict[str, dict[str, float]]] = {}  # unseen devices: method -> type -> mean/std
    for t in sorted(set(shift.values())):
        scored = next(iter(seeds.values()))["device_accuracy"][methods[0]]
        mine = [d for d in scored if kind[d] == "unseen" and shift[d] == t]
        if not mine:
            continue
        for m in methods:
            by_shift.setdefault(m, {})[t] = mean_std(
                [np.mean([s["device_accuracy"][m][d] for d in mine]) for s in seeds.values()])
        matched = [({d: s["device_accuracy"]["duet"][d] for d in mine},
                    {d: s["device_accuracy"]["global"][d] for d in mine}) for s in seeds.values()]
        if "duet" in methods and "global" in methods:
            paired = difference(matched)  # by shift type: the paired interval only (few devices per seed)
            differences[f"duet - global (unseen, {t})"] = {k: v for k, v in paired.items() if k != "seed_level"}
    costs = {m: mean_std([s["costs"][m].get("median_s", s["costs"][m].get("single_s")) for s in seeds.values()])
             for m in next(iter(seeds.values()))["costs"]}
    valid_table = _valid_table(seeds)
    valid_differences = (_differences(seeds, "valid_device_accuracy", list(valid_table), kind)
                         if all("valid_device_accuracy" in s for s in seeds.values()) else {})
    return {"methods": methods, "table": table, "unseen_by_shift": by_shift, "differences": differences,
            "costs": costs, "valid_table": valid_table, "valid_differences": valid_differences,
            "variants": _variant_table(seeds)}


def _variant_table(seeds: dict) -> dict:
    """Per DUET variant: how often validation chose it, and its validation accuracy, payload and
    generation time (mean, std over seeds). Empty for reports written before variants."""
    if not all("variants" in s for s in seeds.values()):
        return {}
    chosen = [max(s["variants"], key=lambda v, s=s: s["variants"][v]["valid_accuracy"]) for s in seeds.values()]
    names = list(next(iter(seeds.values()))["variants"])
    return {v: {"chosen": chosen.count(v),
                **{k: mean_std([s["variants"][v][k] for s in seeds.values()])
                   for k in next(iter(seeds.values()))["variants"][v]}} for v in names}


def _differences(seeds: dict, key: str, methods: list[str], kind: dict[str, str]) -> dict:
    """The paired differences of `pairs(methods)` over the devices of each kind, from each seed's
    per-device accuracies under `key` (test: device_accuracy; validation: valid_device_accuracy)."""
    out = {}
    for group in ("unseen", "seen"):
        for a, b in pairs(methods):
            matched = [({d: v for d, v in s[key][a].items() if kind[d] == group},
                        {d: v for d, v in s[key][b].items() if kind[d] == group}) for s in seeds.values()]
            out[f"{a} - {b} ({group})"] = difference(matched)
    return out


def _valid_table(seeds: dict) -> dict:
    """Validation metrics (the chosen setting of each method), mean and std over seeds: what a
    choice between reports (e.g. of W) may read. Empty for reports written before they were kept."""
    if not all("valid_metrics" in s for s in seeds.values()):
        return {}
    methods = ordered(set.intersection(*(set(s["valid_metrics"]) for s in seeds.values())))
    keys = sorted({k for s in seeds.values() for m in s["valid_metrics"].values() for k in m if k != "records"})
    return {m: {k: mean_std([s["valid_metrics"][m].get(k, np.nan) for s in seeds.values()]) for k in keys}
            for m in methods}


def write_report(results: dict, data, report: Path) -> None:
    """results.json, results.md and the plots; `rerender` rebuilds them from results.json alone."""
    from duet.atomic import atomic_path

    summary = summarize(results, data.device_info())
    write_json(report / "results.json", {**results, "summary": summary})
    shift_types = sorted({d["shift"]["type"] for d in data.device_info()})
    n = len(results["seeds"])
    lines = [f"# Image fleet: {data.path.name} ({n} seed{'s' * (n > 1)})", "",
             "Test accuracy, mean ± std (ddof 1) over seeds. Unseen devices never appear in training. "
             "Every method is scored on the same samples (each device's adaptation prefix is never scored).", "",
             "| method | accuracy (all) | seen | **unseen** | macro-F1 unseen | " + " | ".join(shift_types) + " |",
             "|---|---|---|---|---|" + "---|" * len(shift_types)]
    for m in summary["methods"]:
        row = summary["table"][m]

        def cell(key: str, row=row) -> str:
            v = row.get(key)
            return "" if v is None or np.isnan(v["mean"]) else f"{v['mean']:.4f} ± {v['std']:.4f}"

        lines.append(f"| {label(m)} | {cell('accuracy')} | {cell('accuracy_seen')} | {cell('accuracy_unseen')} | "
                     f"{cell('macro_f1_unseen')} | " + " | ".join(cell(f"accuracy_{t}") for t in shift_types) + " |")
    lines += ["", "Per-shift columns: all devices of that shift type, seen and unseen.", "",
              "### Unseen devices by shift type (mean device accuracy)", "",
              "| method | " + " | ".join(shift_types) + " |", "|---|" + "---|" * len(shift_types)]
    for m in summary["methods"]:
        cells = [summary["unseen_by_shift"].get(m, {}).get(t) for t in shift_types]
        lines.append(f"| {label(m)} | " + " | ".join(
            "" if c is None else f"{c['mean']:.4f} ± {c['std']:.4f}" for c in cells) + " |")
    classes = data.manifest.get("class_names", [])
    if classes:
        lines += ["", "### Unseen devices by class (accuracy on that class's samples: its recall)", "",
                  "| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for m in summary["methods"]:
            row = summary["table"][m]
            lines.append(f"| {label(m)} | " + " | ".join(
                f"{row[f'accuracy_unseen_{c}']['mean']:.4f}" if f"accuracy_unseen_{c}" in row else ""
                for c in classes) + " |")
    lines += ["",
              "## Differences (device accuracy; 95% paired bootstrap over devices and seeds, and a t-interval "
              "over seed means; **bold**: both exclude 0)", "",
              "| difference | mean | paired interval | seed-level interval |", "|---|---|---|---|"]
    for name, d in summary["differences"].items():
        text = f"{d['mean']:+.4f}"
        level = d.get("seed_level") or {}
        both = d["significant"] and bool(level.get("significant"))
        seed_text = f"[{level['lo']:+.4f}, {level['hi']:+.4f}]" if level.get("lo") is not None else "(one seed)"
        lines.append(f"| {name} | {'**' + text + '**' if both else text} | "
                     f"[{d['lo']:+.4f}, {d['hi']:+.4f}] | {seed_text} |")
    lines += excluded_lines(summary["differences"], "device")
    lines += ["", "## Adaptation cost per device (one thread; medians per device, mean over seeds)", "",
              "| method | where | seconds per device |", "|---|---|---|"]
    for m, c in summary["costs"].items():
        if m != "duet":
            where = "device, no gradient" if m in NO_GRADIENT else "device, with gradients"
            lines.append(f"| {label(m)} | {where} | {c['mean']:.6f} |")
    duet_costs = [s["costs"]["duet"] for s in results["seeds"].values()]
    rows = (("single_s", "DUET from the raw window, one device alone"),
            ("batched_s", "DUET from the raw window, amortised in a batch of 256 devices"),
            ("features_single_s", "DUET from the device's features (privacy mode), one device alone"),
            ("features_batched_s", "DUET from the device's features, amortised in a batch of 256"))
    duet_means = {key: float(np.mean([c[key] for c in duet_costs])) for key, _ in rows
                  if all(key in c for c in duet_costs)}
    for key, text in rows:
        if key in duet_means:
            lines.append(f"| {text} | cloud, no gradient | {duet_means[key]:.6f} |")
    if "finetune-20" in summary["costs"]:
        ft = summary["costs"]["finetune-20"]["mean"]
        lines += ["", "Fine-tuning with 20 labels takes, per device, " + "; ".join(
            f"{ft / v:,.0f}x the time of {text}" for key, text in rows if (v := duet_means.get(key))) + "."]
    lines += ["", "Fine-tuning and TENT run on the device (forward and backward passes); batch-norm statistics "
              "and ARM-BN run one forward pass over the W most recent samples of the device's adaptation prefix; "
              "DUET runs in the cloud, and the device computes no gradient. A device classifying its samples has "
              "their static features already, so in privacy mode generation is its only adaptation cost.", "",
              *_valid_lines(summary["valid_table"]), *variant_lines(summary.get("variants", {}), n),
              "Choices made on validation devices: " + json.dumps(results["choices"]), "",
              "![accuracy against window length](accuracy_vs_window.png)", "",
              "![adaptation time](adaptation_time.png)", ""]
    with atomic_path(report / "results.md") as tmp:
        tmp.write_text("\n".join(lines))
    _plots(results, summary, report)


def excluded_lines(differences: dict, unit: str) -> list[str]:
    """A line per difference that left units out of its intervals (their metric undefined in a seed)."""
    return [f"{name}: {d['excluded']} {unit}s left out (their metric is undefined in some seed)"
            for name, d in differences.items() if d.get("excluded")]


def _valid_lines(table: dict) -> list[str]:
    """The validation devices' accuracy of every method at its chosen setting (what choices read)."""
    if not table:
        return []
    lines = ["## Validation devices (each method at its chosen setting)", "",
             "| method | accuracy (all) | unseen |", "|---|---|---|"]
    for m, row in table.items():
        cells = [row.get(k) for k in ("accuracy", "accuracy_unseen")]
        lines.append(f"| {label(m)} | " + " | ".join(
            "" if c is None else f"{c['mean']:.4f} ± {c['std']:.4f}" for c in cells) + " |")
    return [*lines, ""]


VARIANT_LABELS = {"head": "head only, mean encoder", "film": "head + FiLM in every block, mean encoder",
                  "set": "head only, set encoder (samples attend to each other)"}


def variant_lines(table: dict, runs: int, unit: str = "seed") -> list[str]:
    """The DUET variants tried: validation accuracy (what the choice reads), what a device
    receives, and the cloud's time to generate it; `runs` of `unit` (seeds, or a task's folds)."""
    if not table:
        return []
    lines = [f"## DUET variants (validation devices; the best on accuracy (all) is DUET's row, per {unit})", "",
             f"| variant | chosen ({unit}s) | accuracy (all) | unseen | payload (bytes, float32) | "
             "generation, one device (ms) | in a batch of 256 (ms per device) |", "|---|---|---|---|---|---|---|"]
    for v, row in table.items():
        lines.append(f"| {VARIANT_LABELS.get(v, v)} | {row['chosen']} of {runs} | "
                     f"{row['valid_accuracy']['mean']:.4f} ± {row['valid_accuracy']['std']:.4f} | "
                     f"{row['valid_accuracy_unseen']['mean']:.4f} ± {row['valid_accuracy_unseen']['std']:.4f} | "
                     f"{row['payload_bytes']['mean']:,.0f} | {1e3 * row['generation_single_s']['mean']:.3f} | "
                     f"{1e3 * row['generation_batched_s']['mean']:.4f} |")
    return [*lines, ""]


def _plots(results: dict, summary: dict, report: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from duet.atomic import save_png

    seeds = list(results["seeds"].values())
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("duet", "-o"), ("duet-noswa", "--s")):
        windows = sorted(int(w) for w in seeds[0]["window_curve"][name])
        for group, color in (("unseen", "C0"), ("seen", "C1")):
            values = np.array([[s["window_curve"][name][str(w)][f"accuracy_{group}"] for w in windows] for s in seeds])
            ax.errorbar(windows, values.mean(0), yerr=values.std(0), fmt=style, color=color, capsize=3,
                        label=f"{label(name)}, {group} devices")
    for group, color in (("unseen", "C0"), ("seen", "C1")):
        ax.axhline(summary["table"]["global"][f"accuracy_{group}"]["mean"], color=color, lw=1, ls=":",
                   label=f"global model, {group}")
        if "duet-static" in summary["table"]:
            ax.axhline(summary["table"]["duet-static"][f"accuracy_{group}"]["mean"], color=color, lw=1, ls="-.",
                       label=f"DUET's static part + global head, {group}")
    ax.set_xscale("log")
    ax.set_xlabel("window length W (device's most recent samples, unlabeled)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_png(fig, report / "accuracy_vs_window.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(summary["costs"])
    values = [summary["costs"][m]["mean"] for m in names]
    bars = [label(m) if m != "duet" else "DUET from the raw window (cloud)" for m in names]
    duet_costs = [s["costs"]["duet"] for s in seeds]
    if all("features_single_s" in c for c in duet_costs):
        bars.append("DUET from device features (privacy mode)")
        values.append(float(np.mean([c["features_single_s"] for c in duet_costs])))
    ax.barh(bars, values, color=["C3" if b.startswith("DUET") else "C2" for b in bars])
    ax.set_xscale("log")
    ax.set_xlabel("adaptation seconds per device, one device alone (one thread, log scale)")
    fig.tight_layout()
    save_png(fig, report / "adaptation_time.png", dpi=120)
    plt.close(fig)


def rerender(report: str | Path) -> None:
    """Rewrite a finished comparison's report from its results.json (after a report change)."""
    report = Path(report)
    write_report(*_finished(report, "valid"), report)
