"""Run every method on the same dataset and seeds, then write the report.

Each run lands in REPORT/runs/<backbone>/seed<k>/<method> (DUET: one folder per
stage-2 variant below it, the best on validation is the one reported); a
finished run is reused when the comparison is started again, so an interrupted
comparison resumes where it stopped. With `device_model` (`--device-model`), a compressed
device model's rows join them (report/compressed.py).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from duet.atomic import write_json
from duet.checkpoint import is_finished_run, load_run
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
from duet.errors import DuetError
from duet.tasks.recommendation.evaluate import scores_file, user_auc_file
from duet.tasks.recommendation.full_ranking import full_ranking, interacted_items
from duet.tasks.recommendation.models.backbones import BACKBONES
from duet.tasks.recommendation.report.cold import by_seen, items_seen
from duet.tasks.recommendation.report.compressed import CompressedDevice, device_cost, gap_closed
from duet.tasks.recommendation.report.methods import (
    DEVICE_METHODS,
    FULL_RANKED,
    GLOBAL_HEAD,
    METHODS,
    REPORTED,
    ROWS,
)
from duet.training.evaluation import evaluate_run, load_scorer

BACKBONE_NAMES = tuple(BACKBONES)
log = logging.getLogger("duet.compare")

# (A, B): A - B per user (and seed) with a paired bootstrap interval in every report.
DIFFERENCES = (("duet", "base"), ("duet", "finetune"), ("duet", "duet-noswa"), ("duet", "duet-global"),
               ("duet-global", "base"), ("duet-scratch", "base"), ("finetune", "base"))
# With --device-model (`base` is the cloud model): what DUET adds to the device model, generation's
# own share (device-duet - device-global), the gap to close (base - device) and what is left of it.
DEVICE_DIFFERENCES = (("device-duet", "device"), ("device-duet", "device-global"), ("device-global", "device"),
                      ("base", "device"), ("device-duet", "base"))


class DuetVariant(Strict):
    """One DUET stage-2 setting. `duet compare` trains every variant it is given and
    reports the one with the best validation uauc, per backbone, seed and SWA setting."""

    freeze_static: bool = False
    rank: int | None = Field(4, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)

    @property
    def name(self) -> str:
        return f"{'frozen' if self.freeze_static else 'joint'}-rank{self.rank or 'full'}-dropout{self.dropout:g}"

    @classmethod
    def parse(cls, name: str) -> DuetVariant:
        """The inverse of `name`, e.g. 'frozen-rankfull-dropout0.3'."""
        match = re.fullmatch(r"(joint|frozen)-rank(full|\d+)-dropout([0-9.]+)", name.strip())
        if match is None:
            raise DuetError(f"--variants: {name!r} is not like joint-rank4-dropout0.5 or frozen-rankfull-dropout0.3")
        static, rank, dropout = match.groups()
        return cls(freeze_static=static == "frozen", rank=None if rank == "full" else int(rank), dropout=float(dropout))


# Chosen on the validation split of seed 0 (docs/RESULTS.md): a small, strongly
# regularised generator trained with the static part (best for SASRec), and a
# full-rank one over a frozen static part (best for DIN, whose static part
# overfits when trained on).
DEFAULT_VARIANTS = (DuetVariant(), DuetVariant(freeze_static=True, rank=None, dropout=0.3))


class CompareConfig(Strict):
    """Defaults were chosen on the validation split of the default MovieLens protocol
    (docs/RESULTS.md lists what was tried)."""

    data: str
    backbones: tuple[str, ...] = ("sasrec", "gru4rec", "din")
    seeds: int = Field(3, ge=1)
    # None = `duet train`'s defaults (config.SCRATCH_SCHEDULE for base and DUET from
    # scratch, config.STAGE2_SCHEDULE for DUET stage 2).
    epochs: int | None = Field(None, ge=1)
    backbone_epochs: dict[str, int] = Field(default_factory=dict,
                                            description="max base epochs per backbone, overriding `epochs`")
    duet_epochs: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    duet_lr: float | None = Field(None, gt=0)
    num_generators: int = Field(3, ge=2, description="N_p of the SWA variant")
    temperature: float = 1.0
    duet_variants: tuple[DuetVariant, ...] = Field(DEFAULT_VARIANTS, min_length=1)
    finetune_steps: int = 10
    finetune_lr: float = 1e-3
    # Equal care with DUET: with a grid, fine-tuning's (steps, lr) are chosen on the validation split
    # (fine-tuned on train, scored on valid) before the test run; None uses finetune_steps/lr as given.
    finetune_grid: tuple[tuple[int, float], ...] | None = ((5, 1e-4), (10, 1e-3), (30, 1e-3), (10, 1e-2))
    # The grid is scored on the first N validation devices (by id), not all: fine-tuning every device
    # once per grid setting is most of a comparison's time on 943 users. None: every device.
    finetune_choice_devices: int | None = Field(None, ge=1)
    finetune_negatives: int = Field(4, ge=0, description="fine-tuning's extra sampled negatives per event, as base")
    finetune_scope: str = "all"
    scratch: bool = Field(True, description="also train DUET jointly from scratch (the published schedule)")
    scratch_epochs: int | None = Field(None, ge=1)
    # Full-catalogue ranking of a seeded sample of test positives (the same for every
    # method); None ranks all of them (slow for DIN, which scores every pair).
    full_ranking_positives: int | None = Field(2000, ge=1)
    threads: int | None = None
    # Item embedding size of every model (None: ModelConfig's default, 32). 64 on `--protocol loo`
    # (MovieLens-100K), chosen there on validation (experiments/loo_sweep.py).
    embed_dim: int | None = Field(None, ge=2)
    # A compressed device model beside the cloud model (`base`): rows device, device-duet and
    # device-global, trained like base and DUET stage 2 (report/compressed.py). None: no device rows.
    device_model: CompressedDevice | None = None


def quick_config(data: str) -> CompareConfig:
    """The README's main job: one seed, SASRec, minutes on 2 cores. The base stops at
    8 epochs, before its optimum, so DUET's stage-2 epochs keep training its static
    part; the report's "DUET static + global head" row and paired differences show how
    much of DUET's gain is that, and how much is generation itself."""
    return CompareConfig(data=data, backbones=("sasrec",), seeds=1, epochs=8, duet_epochs=2, patience=2,
                         backbone_epochs={}, duet_variants=DEFAULT_VARIANTS[:1], scratch=False, finetune_grid=None)


def _run_dir(report: Path, backbone: str, seed: int, method: str) -> Path:
    return report / "runs" / backbone / f"seed{seed}" / method


class Timings:
    """Wall seconds of each step of one (backbone, seed), kept in timing.json beside its runs: a
    step reused from an earlier start keeps the time it took when it ran."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    @contextmanager
    def step(self, name: str, done: bool) -> Iterator[None]:
        """Time the body as step `name` unless it was `done` before (then it is reused, not run)."""
        started = time.perf_counter()
        yield
        if not done:
            self.seconds[name] = time.perf_counter() - started
            write_json(self.path, self.seconds)


def _train(cfg: CompareConfig, out: Path, backbone: str, seed: int, method: str, progress: bool,
           init: Path | None = None, num_generators: int = 1, variant: DuetVariant | None = None,
           model: ModelConfig | None = None, timings: Timings | None = None) -> None:
    from duet.training.loop import run_config_for

    if is_finished_run(out):  # reused: its timing stays the one recorded when it ran
        log.info("reusing %s", out)
        return
    duet = method == "duet"
    scratch = duet and init is None
    variant = variant or DuetVariant()
    epochs = cfg.scratch_epochs if scratch else cfg.duet_epochs if duet else cfg.backbone_epochs.get(backbone, cfg.epochs)
    train_cfg = TrainConfig(
        method=method, seed=seed, epochs=epochs, patience=cfg.patience,
        lr=cfg.duet_lr if duet and not scratch else cfg.lr, threads=cfg.threads,
        freeze_static=duet and variant.freeze_static, init_run=str(init) if init else None, from_scratch=scratch,
    )
    generator = GeneratorConfig(num_generators=num_generators, temperature=cfg.temperature, rank=variant.rank,
                                dropout=variant.dropout) if duet else None
    cloud = ModelConfig(backbone=backbone, **({"embed_dim": cfg.embed_dim} if cfg.embed_dim else {}))
    config = run_config_for(cfg.data, model=model or cloud, train=train_cfg,
                            generator=generator)
    with timings.step(str(out.relative_to(timings.path.parent)), done=False) if timings else nullcontext():
        run_or_reuse(config, out, progress)


def generation_cost(run: Path, windows: np.ndarray, batch: int = 1024, repeats: int = 50) -> dict[str, float]:
    """Per-device generation time on one thread, in ms: alone (batch of 1, a single
    request) and amortised in a batch of `batch` devices (as the service's
    micro-batcher runs it). Medians over `repeats`."""
    _, model, _ = load_run(run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tensor = torch.from_numpy(windows.astype(np.int64))
    single, batched = [], []
    try:
        with torch.inference_mode():
            for i in range(repeats + 5):
                one = tensor[i % len(tensor)][None]
                started = time.perf_counter()
                model.generate(one)
                single.append(time.perf_counter() - started)
                rows = tensor[(np.arange(batch) + i * batch) % len(tensor)]
                started = time.perf_counter()
                model.generate(rows)
                batched.append((time.perf_counter() - started) / batch)
    finally:
        torch.set_num_threads(threads)
    return {"single_ms": float(np.median(single[5:]) * 1e3), "batched_ms": float(np.median(batched[5:]) * 1e3)}


def compare(cfg: CompareConfig, report: str | Path, progress: bool = True,
            only_seeds: tuple[int, ...] | None = None) -> dict:
    """Every method for every (seed, backbone) -> report/results.{json,md} and plots.
    `only_seeds` runs a subset and reports just those, without changing the saved
    configuration, so two processes can share one report's seeds; a later full run
    reuses their finished runs."""
    from duet.tasks.recommendation.data.store import load_dataset

    for backbone in (*cfg.backbones, *cfg.backbone_epochs):
        if backbone not in BACKBONE_NAMES:
            raise DuetError(f"--backbones: unknown {backbone!r}; choose from {', '.join(BACKBONE_NAMES)}")
    data = load_dataset(cfg.data)
    history = cfg.device_model.history if cfg.device_model else None
    if history is not None and history > data.history_len:  # refused before anything is written
        raise DuetError(f"--device-model: history={history} is longer than the dataset's history "
                        f"(L={data.history_len})")
    report = Path(report)
    report.mkdir(parents=True, exist_ok=True)
    saved = report / "compare_config.json"
    if saved.exists() and _saved_config(saved) != cfg:
        raise DuetError(f"{saved}: this report was started with another configuration; use a new --out")
    write_json(saved, cfg.model_dump(mode="json"))
    seen = interacted_items(data, data.num_users)  # for full ranking: the same for every run
    seen_count = items_seen(data, "test")  # (E,) items each test event's device had seen: the cold-device bins
    results: dict = {"config": cfg.model_dump(mode="json"), "runs": {}}
    # Seed-major, and the report is rewritten after every (seed, backbone): an
    # interrupted comparison still leaves a complete report of what finished.
    for seed in only_seeds if only_seeds is not None else range(cfg.seeds):
        for backbone in cfg.backbones:
            entry = _run_all(cfg, report, backbone, seed, data, seen, seen_count, progress)
            results["runs"].setdefault(backbone, {})[f"seed{seed}"] = entry
            write_report(results, report)
    return results


def _saved_config(saved: Path) -> CompareConfig | None:
    """The configuration a report was started with (options added since take their defaults); None if unreadable."""
    from pydantic import ValidationError

    try:
        return CompareConfig.model_validate_json(saved.read_text())
    except ValidationError:
        return None


def _run_all(cfg: CompareConfig, report: Path, backbone: str, seed: int, data, seen: list[set[int]],
             seen_count: np.ndarray, progress: bool) -> dict:
    """Train/fine-tune/evaluate every method for one (backbone, seed); test metrics per method."""
    timings = Timings(_run_dir(report, backbone, seed, "base").parent / "timing.json")
    methods = _methods(cfg, report, backbone, data, seen, seen_count, timings, progress)
    outcomes = run_seed(methods, seed, "uauc")
    order = [m for m in (*METHODS, *DEVICE_METHODS) if m in outcomes]  # results.json's order of methods
    entry: dict = {m: outcomes[m].test.keep["entry"] for m in sorted(order, key=_ENTRY_ORDER.index)}
    if cfg.device_model is not None:  # what the device rows cost on a device, the cloud model for contrast
        for method in ("device", "device-duet", "base"):
            entry[method]["device_cost"] = device_cost(outcomes[method].test.keep["run"], data["test"])
    if timings.seconds:
        entry["wall_s"] = timings.seconds  # each step's wall time, when it ran (`Timings`)
    return entry


# The order of a (backbone, seed)'s methods in results.json (as earlier reports have them).
_ENTRY_ORDER = ("pop", "base", "finetune", "duet-noswa", "duet", "duet-scratch", "duet-global", *DEVICE_METHODS)


def _methods(cfg: CompareConfig, report: Path, backbone: str, data, seen: list[set[int]], seen_count: np.ndarray,
             timings: Timings, progress: bool) -> list[Method]:
    """The recommendation comparison as the engine runs it, for one backbone: each method in the order
    it is trained, the DUET variants and fine-tuning's (steps, lr) chosen on validation uauc."""
    def run_dir(seed: Seed, method: str) -> Path:
        return _run_dir(report, backbone, seed.seed, method)

    def scored(seed: Seed, method: str, run: Path, **extra: object) -> Outcome:
        """A finished run scored on test as `method` (its global head for the rows that read it)."""
        head = "global" if method in GLOBAL_HEAD else "generated"
        entry = {"test": evaluate_run(run, "test", head=head)}
        _, model = load_scorer(run, head)
        entry["test"].update(full_ranking(model, data["test"], seen, data.num_items,
                                          max_positives=cfg.full_ranking_positives, seed=seed.seed))
        entry.update(_user_entry(data, seen_count, run, head))
        entry.update(extra)
        return Outcome(Scores(entry["test"], entry["user_auc"], {"entry": entry, "run": run}))

    def trained(method: str, kind: str, **train: object) -> Method:
        """A method that is one run, trained (or reused) as `kind` (pop, base, duet from scratch)."""
        def test(seed: Seed, _setting: object) -> Outcome:
            run = run_dir(seed, method)
            _train(cfg, run, backbone, seed.seed, kind, progress, timings=timings, **train)
            return scored(seed, method, run)

        return Method(method, test)

    def with_variants(method: str, init: str, num_generators: int, model: ModelConfig | None = None) -> Method:
        """DUET stage 2 from the `init` run under every variant; validation uauc chooses."""
        def variant_run(seed: Seed, variant: DuetVariant) -> Path:
            run = run_dir(seed, method) / variant.name
            _train(cfg, run, backbone, seed.seed, "duet", progress, init=run_dir(seed, init),
                   num_generators=num_generators, variant=variant, model=model, timings=timings)
            return run

        def validate(seed: Seed, variant: DuetVariant) -> Scores:
            run = variant_run(seed, variant)
            return Scores({"uauc": json.loads((run / "metrics_valid.json").read_text())["uauc"]})

        def test(seed: Seed, variant: DuetVariant) -> Outcome:
            run = variant_run(seed, variant)
            tried = {name: s.metrics["uauc"] for name, s in seed.tried.items()}
            cost = generation_cost(run, data["test"].window)
            return scored(seed, method, run, variant=run.name, valid_uauc_per_variant=tried,
                          history=json.loads((run / "history.json").read_text()),
                          adapt_ms_per_device=cost["batched_ms"], adapt_ms_single_device=cost["single_ms"])

        return Method(method, test, settings=cfg.duet_variants, validate=validate, label=lambda v: v.name)

    def global_head(method: str, of: str) -> Method:
        return Method(method, lambda seed, _: scored(seed, method, seed.outcomes[of].test.keep["run"]))

    methods = [trained("pop", "pop"), trained("base", "base")]
    if cfg.scratch:
        methods.append(trained("duet-scratch", "duet", num_generators=cfg.num_generators))
    methods += [with_variants("duet-noswa", "base", 1), with_variants("duet", "base", cfg.num_generators),
                _finetune_method(cfg, run_dir, data, seen_count, timings, progress)]
    if cfg.device_model is not None:
        device = cfg.device_model.model(backbone)
        methods += [trained("device", "base", model=device),
                    with_variants("device-duet", "device", cfg.num_generators, device)]
    methods.append(global_head("duet-global", "duet"))
    if cfg.device_model is not None:
        methods.append(global_head("device-global", "device-duet"))
    return methods


def _user_entry(data, seen_count: np.ndarray, run: Path, head: str) -> dict:
    """A scored run's per-user AUCs and, where its per-record scores were kept, uauc by items seen."""
    entry = {"user_auc": json.loads(user_auc_file(run, "test", head).read_text())}
    if scores_file(run, "test", head).exists():  # a fine-tuning run from before scores were saved has none
        entry["by_seen"] = by_seen(data["test"], seen_count, scores_file(run, "test", head))
    return entry


def _finetune_method(cfg: CompareConfig, run_dir, data, seen_count: np.ndarray, timings: Timings,
                     progress: bool) -> Method:
    """Per-device fine-tuning of the base run: with a grid, its (steps, lr) chosen on validation uauc
    (fine-tuned on train, scored on valid), then fine-tuned on train + valid and scored on test. A
    finished fine-tuning (its finetune.json) is reused as it is."""
    from duet.tasks.recommendation.finetune import FinetuneConfig, finetune

    grid = tuple(cfg.finetune_grid or ((cfg.finetune_steps, cfg.finetune_lr),))
    choosing: dict[int, float] = {}  # seed -> seconds the validation of the grid took

    def options(seed: Seed, split: str, setting: tuple[int, float]) -> FinetuneConfig:
        return FinetuneConfig(base_run=str(run_dir(seed, "base")), data=cfg.data, split=split, steps=setting[0],
                              lr=setting[1], scope=cfg.finetune_scope, sampled_negatives=cfg.finetune_negatives,
                              max_devices=cfg.finetune_choice_devices if split == "valid" else None,
                              seed=seed.seed)

    def validate(seed: Seed, setting: tuple[int, float]) -> Scores:
        started = time.perf_counter()
        summary = finetune(options(seed, "valid", setting), None, progress=progress)
        choosing[seed.seed] = choosing.get(seed.seed, 0.0) + time.perf_counter() - started
        return Scores({"uauc": summary["metrics"]["uauc"]})

    def test(seed: Seed, setting: tuple[int, float]) -> Outcome:
        folder = run_dir(seed, "finetune")
        timings.seconds["finetune-choice"] = choosing.pop(seed.seed, 0.0)
        with timings.step("finetune", done=False):
            finetune(options(seed, "test", setting), folder, progress=progress)
        if cfg.finetune_grid:
            write_json(folder / "finetune_choice.json", {"steps": setting[0], "lr": setting[1],
                                                         "valid_uauc": {n: s.metrics["uauc"] for n, s in seed.tried.items()}})
        return finished(seed)

    def finished(seed: Seed) -> Outcome | None:
        folder = run_dir(seed, "finetune")
        ft_file = folder / "finetune.json"
        if not ft_file.exists():
            return None
        summary = json.loads(ft_file.read_text())
        entry: dict = {"test": summary["metrics"]}
        if (folder / "finetune_choice.json").exists():  # the (steps, lr) validation chose
            entry["choice"] = json.loads((folder / "finetune_choice.json").read_text())
        if summary["devices"]:  # new devices (the cutoff split) have no labels to fine-tune on
            entry.update(adapt_ms_per_device=summary["seconds_per_device"]["p50"] * 1e3,
                         peak_bytes_per_device=summary["peak_bytes_per_device"]["max"])
        entry.update(_user_entry(data, seen_count, folder, "generated"))
        return Outcome(Scores(entry["test"], entry["user_auc"], {"entry": entry, "run": folder}))

    return Method("finetune", test, settings=grid, label=lambda s: f"{s[0]}@{s[1]:g}",
                  validate=validate if cfg.finetune_grid else None, reuse=finished)


def write_report(results: dict, report: Path) -> None:
    from duet.tasks.recommendation.report.render import write_markdown, write_plots

    results["summary"] = summarize(results)
    write_json(report / "results.json", results)
    write_plots(results, report)
    write_markdown(results, report)


def summarize(results: dict) -> dict:
    """mean and std over seeds of each reported metric and of adaptation time, and the
    paired differences (`DIFFERENCES`) with bootstrap intervals over users and seeds."""
    out: dict = {}
    for backbone, seeds in results["runs"].items():
        for method in ROWS:
            entries = [seed[method] for seed in seeds.values() if method in seed]
            if not entries:
                continue
            stats = {}
            for metric in REPORTED + FULL_RANKED:
                if all(metric in e["test"] for e in entries):
                    stats[metric] = mean_std(np.array([e["test"][metric] for e in entries], dtype=float))
            # Paired over seeds: each seed's method and base share the dataset draw and
            # the base run, so the seed-to-seed spread of the base cancels out.
            paired = [seed[method]["test"]["uauc"] - seed["base"]["test"]["uauc"]
                      for seed in seeds.values() if method in seed and "base" in seed]
            if method != "base" and paired:
                stats["uauc_minus_base"] = mean_std(np.array(paired))
            bins = [e["by_seen"] for e in entries if "by_seen" in e]
            if bins:  # mean uauc over the seeds that have the bin; events of one seed (the same split)
                stats["by_seen"] = {label: {"uauc": float(np.mean([b[label]["uauc"] for b in bins if label in b])),
                                            "events": next(b[label]["events"] for b in bins if label in b),
                                            "users": next(b[label]["users"] for b in bins if label in b)}
                                    for label in dict.fromkeys(k for b in bins for k in b)}
            for key in ("adapt_ms_per_device", "adapt_ms_single_device"):
                if key in entries[0]:
                    stats[key] = mean_std(np.array([e[key] for e in entries], dtype=float))
            costs = [e["device_cost"] for e in entries if "device_cost" in e]
            if costs:
                stats["device_cost"] = {k: mean_std(np.array([c[k] for c in costs], dtype=float)) for k in costs[0]}
            out.setdefault(backbone, {})[method] = stats
        differences = {}
        for a, b in DIFFERENCES + DEVICE_DIFFERENCES:
            pairs = [(seed[a]["user_auc"], seed[b]["user_auc"]) for seed in seeds.values()
                     if a in seed and b in seed and "user_auc" in seed[a] and "user_auc" in seed[b]]
            if pairs:  # seed_level: a t-interval over seed means, the spread of training itself (None with one seed)
                differences[f"{a} - {b}"] = difference(pairs)
        out.setdefault(backbone, {})["differences"] = differences
        gap = gap_closed(seeds)
        if gap:
            out[backbone]["gap_closed"] = gap
    return out
