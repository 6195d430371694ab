"""Recommendation as a task: records grouped by event, binary cross-entropy, uauc.

The parts live beside this file: data/ (format, protocols, sources), models/ (backbones,
Recommender, popularity), batches, evaluate (scoring and metrics), finetune, full_ranking
and report/ (`duet compare`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from duet.config import Strict
from duet.errors import ArtifactError, DuetError
from duet.spec import GraphInput, SampleSpec
from duet.task import DeviceGraph, DeviceStep, Extras, Simulation, check_dataset, task_options
from duet.tasks.base import BaseTask
from duet.tasks.recommendation import BUILDER, NAME, TRAIN_OPTIONS, commands
from duet.tasks.recommendation.batches import Batch, EventBatcher, with_sampled_negatives
from duet.tasks.recommendation.data import SOURCES
from duet.tasks.recommendation.data.store import PAD, Dataset, Split, load_dataset, load_vocab
from duet.tasks.recommendation.evaluate import (
    METRIC_KS,
    evaluate,
    predict,
    score_batch,
    write_scores,
)


class Facts(Strict):
    """What a recommendation run needs to know of its dataset."""

    num_items: int = Field(ge=2, description="item vocabulary incl. padding")
    history_len: int = Field(ge=1, description="click-history length L")


class RecommendationGraph(nn.Module):
    """What the device runs: one history, C candidates, one head given as inputs -> logits (C,)."""

    def __init__(self, recommender: nn.Module):
        super().__init__()
        self.recommender = recommender

    def forward(self, history: Tensor, items: Tensor, params: dict[str, Tensor]) -> Tensor:
        inverse = torch.zeros_like(items)  # every candidate belongs to the one event
        return self.recommender(history, items, inverse, params)


class RecommendationTask(BaseTask):
    """Click-through records grouped by event: SASRec, GRU4Rec or DIN static parts, binary
    cross-entropy, uauc selected on validation, users as the unit of intervals."""

    name = NAME
    builder = BUILDER
    select_metric = "uauc"
    unit = "user"
    backbones = ("sasrec", "gru4rec", "din")
    methods = ("pop", "base", "duet")
    gradient_methods = ()  # pop is fitted without gradients
    defaults: Mapping[str, Any] = {"encoder": "gru", "batch_size": 1024}
    options = TRAIN_OPTIONS  # its own `duet train` options (sampled negatives), in its runs' `options`

    def facts(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return Facts(num_items=manifest["num_items"], history_len=manifest["history_len"]).model_dump()

    def load(self, path: str | Path, splits: tuple[str, ...]) -> Dataset:
        return load_dataset(path, splits=splits)

    def batcher(self, data: Dataset, config) -> EventBatcher:
        return EventBatcher(data["train"], config.train.batch_size)

    def build(self, config) -> nn.Module:
        from duet.tasks.recommendation.models.popularity import Popularity
        from duet.tasks.recommendation.models.recommender import Recommender

        facts = Facts.model_validate(config.facts)
        if config.train.method == "pop":
            return Popularity(facts.num_items)
        if config.train.method not in ("base", "duet"):
            raise ArtifactError(f"method {config.train.method!r}: recommendation runs are pop, base or duet")
        if config.model.backbone not in self.backbones:
            raise ArtifactError(f"backbone {config.model.backbone!r} is not a recommendation static part "
                                f"({', '.join(self.backbones)})")
        if (config.model.device_history or 0) > facts.history_len:
            raise ArtifactError(f"--device-history {config.model.device_history}: longer than the dataset's "
                                f"history (L={facts.history_len})")
        return Recommender(facts.num_items, facts.history_len, config.model)

    def fit_without_gradients(self, config, data: Dataset) -> nn.Module:
        from duet.tasks.recommendation.models.popularity import Popularity

        if config.train.method != "pop":
            raise DuetError(f"--method {config.train.method}: recommendation methods are pop, base and duet")
        return Popularity.fit(data.num_items, data["train"].item, data["train"].label)

    def loss(self, model: nn.Module, batch: Batch, data: Dataset, config, device: torch.device) -> tuple[Tensor, int]:
        negatives = task_options(self, config).sampled_negatives
        if negatives:  # drawn on the CPU: the random stream does not depend on the device
            batch = with_sampled_negatives(batch, negatives, data.num_items)
        batch = batch.to(device)
        return F.binary_cross_entropy_with_logits(score_batch(model, batch), batch.label), len(batch.item)

    def evaluate(self, model: nn.Module, split: Split, config) -> dict[str, float]:
        return evaluate(model, split, config.train.eval_batch_size)

    def evaluate_run(self, run: Path, config, model: nn.Module, split: str, data: str | Path | None,
                     suffix: str) -> dict[str, float]:
        from duet.atomic import write_json
        from duet.metrics import compute_metrics

        records = _dataset(config, data, split)[split]
        logits = predict(model, records, config.train.eval_batch_size)
        metrics = compute_metrics(records.label, logits, records.user, ks=METRIC_KS)
        write_json(Path(run) / f"metrics_{split}{suffix}.json", metrics)
        write_scores(Path(run), split, "global" if suffix else "generated", records, logits)
        return metrics

    def unit_scores(self, run: Path, split: str, suffix: str) -> dict[str, float]:
        """Each user's AUC over its test records (users with both labels only)."""
        import json

        from duet.tasks.recommendation.evaluate import user_auc_file

        return json.loads(user_auc_file(run, split, "global" if suffix else "generated").read_text())

    # --- command line (`duet prepare`, `duet compare`, `duet data info`)
    sources = SOURCES

    def prepare(self, source: str, out: Path, options: dict[str, Any], overwrite: bool) -> None:
        commands.prepare(source, out, options, overwrite)

    def compare(self, data: Path, out: Path, options: dict[str, Any], progress: bool) -> Path:
        return commands.compare(data, out, options, progress)

    def compare_summary(self, report: Path) -> str:
        """What `duet compare` prints: fits 80 columns and names the full report."""
        from duet.tasks.recommendation.report.summary import summary_of_report

        return summary_of_report(report)

    def describe(self, data: Path, plot: Path | None, top: int) -> None:
        commands.describe(data, plot, top)

    def finetune(self, options: dict[str, Any], out: Path | None, progress: bool) -> dict:
        """`duet finetune`: per-device fine-tuning of a base run."""
        return commands.finetune(options, out, progress)

    def export_text(self, data: Path, train: Path, test: Path, overwrite: bool) -> dict[Path, int]:
        """`duet export-text`: the dataset in the published code's text format."""
        return commands.export_text(data, train, test, overwrite)

    # --- device side
    def sample(self, config) -> SampleSpec:
        facts = Facts.model_validate(config.facts)
        return SampleSpec("int64", (), low=1, high=facts.num_items - 1)

    def device_graph(self, model: nn.Module) -> DeviceGraph:
        L, n = model.history_len, model.num_items

        def examples(count: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
            history = torch.zeros(1, L, dtype=torch.long)
            length = int(torch.randint(0, L + 1, (1,), generator=gen))
            history[0, :length] = torch.randint(1, n, (length,), generator=gen)
            return history, torch.randint(1, n, (count,), generator=gen)

        return DeviceGraph(RecommendationGraph(model),
                           inputs=(GraphInput("history", "int64", (1, L), pad=PAD),
                                   GraphInput("items", "int64", (None,))),
                           outputs=("logits",), examples=examples)

    def bundle_extras(self, config, model: nn.Module, data: str | Path | None) -> Extras:  # noqa: ARG002
        from duet.manifest import read_any_manifest
        from duet.tasks.recommendation.data.store import manifest_hash

        data = Path(data or config.data)
        _same_items(config, data, read_any_manifest(data, "duet dataset", ("task",)), manifest_hash(data))
        item_raw = load_vocab(data)["item_raw"]
        # Only items: the user vocabulary has no business on a device.
        return Extras(files={"vocab.safetensors": {"item_raw": np.ascontiguousarray(item_raw, dtype=np.int64)}})

    def simulation(self, config, model: nn.Module, data: str | Path | None, devices: int) -> Simulation:
        """The first `devices` users of the test split; each test event: refresh with its window,
        score its candidates."""
        from duet.metrics import compute_metrics

        dataset = _dataset(config, data, "test")
        test = dataset["test"]
        chosen = np.unique(test.user)[:devices]
        subset = test.select(np.isin(test.user, chosen))
        offline = predict(model, subset, config.train.eval_batch_size)
        order = np.argsort(subset.line, kind="stable")  # chronological record order
        records_of: dict[int, list[int]] = {}
        for record in order:
            records_of.setdefault(int(subset.event[record]), []).append(int(record))
        streams: dict[str, list[DeviceStep]] = {}
        for event in sorted(records_of, key=lambda e: subset.line[records_of[e]].min()):
            records = np.array(records_of[event])
            streams.setdefault(f"user-{int(subset.user[records[0]])}", []).append(DeviceStep(
                observed=[], window=subset.window[event].astype(np.int64),
                inputs={"history": subset.history[event], "items": subset.item[records]}, records=records))
        return Simulation(
            offline=offline, streams=dict(sorted(streams.items())), events=int(subset.num_events),
            metrics=lambda logits: compute_metrics(subset.label, logits, subset.user, ks=METRIC_KS))


def _dataset(config, data: str | Path | None, split: str) -> Dataset:
    """The run's own dataset, or `data`: another recommendation dataset with the same facts and the
    same item vocabulary (an item id must mean the same item), e.g. other users of the same catalogue."""
    dataset = load_dataset(data or config.data, splits=(split,))
    _same_items(config, dataset.path, dataset.manifest, dataset.hash)
    return dataset


def _same_items(config, path: Path, manifest: Mapping[str, Any], data_hash: str) -> None:
    check_dataset(config, manifest, data_hash, path)
    if data_hash == config.data_hash:
        return
    try:
        theirs, ours = (load_vocab(p)["item_raw"] for p in (path, config.data))
    except (ArtifactError, OSError) as exc:
        raise ArtifactError(f"{path}: another dataset than the run's, whose item vocabulary cannot be compared "
                            f"with the run's own ({exc})") from None
    if not np.array_equal(theirs, ours):
        raise ArtifactError(f"{path}: a recommendation dataset with another item vocabulary than the run's (its item "
                            "ids would name other items)")


def task() -> RecommendationTask:
    return RecommendationTask()
