"""The recommendation task's side of the command line: `duet prepare` of its sources, `duet compare`,
`duet data info`, `duet finetune` and `duet export-text` (the generic commands call these)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from duet.errors import DuetError, option_error, refuse_given

PROTOCOL_OPTIONS = ("min_user_interactions", "min_item_interactions", "history_len", "window_len", "window_lag",
                    "train_negatives",
                    "eval_negatives", "split", "ratios", "seed", "cutoff_quantile")
SHIFT_OPTIONS = {"users": "users", "items": "items", "profiles": "profiles", "switch_rate": "switch_rate",
                 "generator_seed": "seed"}
PREPARE_OPTIONS = (*PROTOCOL_OPTIONS, *SHIFT_OPTIONS, "path", "train", "test", "user_col", "item_col", "rating_col",
                   "timestamp_col", "sep", "max_users", "protocol_name", "scale")


def _flag(name: str) -> str:
    return "--protocol" if name == "protocol_name" else "--" + name.replace("_", "-")


def prepare(source: str, out: Path, options: dict[str, Any], overwrite: bool) -> None:
    """Build a dataset directory from a raw source (or generate one); print its counts."""
    from pydantic import ValidationError
    from rich.console import Console

    from duet.config import ProtocolConfig
    from duet.tasks.recommendation.data.prepare import prepare_dataset

    refuse_given({_flag(k): v for k, v in options.items() if k not in PREPARE_OPTIONS},
                 f"--source {source} is a recommendation source: {{}} do not apply")
    protocol_options = {k: options[k] for k in PROTOCOL_OPTIONS if options.get(k) is not None}
    if "ratios" in protocol_options:
        protocol_options["ratios"] = _ratios(protocol_options["ratios"])
    try:
        protocol = ProtocolConfig(**protocol_options) if protocol_options else None
    except ValidationError as exc:
        raise option_error(exc) from None
    generator = {field: options[k] for k, field in SHIFT_OPTIONS.items() if options.get(k) is not None}
    shift = None
    if generator:
        from duet.tasks.recommendation.data.synthetic_shift import ShiftConfig

        shift = ShiftConfig(**generator)
    console = Console()
    started = time.perf_counter()
    with console.status("preparing") as status:
        manifest = prepare_dataset(
            out, source, path=options.get("path"), train=options.get("train"), test=options.get("test"),
            user_col=options.get("user_col"), item_col=options.get("item_col"), rating_col=options.get("rating_col"),
            timestamp_col=options.get("timestamp_col"), sep=options.get("sep") or ",", protocol=protocol,
            named_protocol=options.get("protocol_name"), max_users=options.get("max_users"),
            scale=options.get("scale"), shift=shift, overwrite=overwrite, progress=status.update,
        )
    _print_counts(console, f"prepared in {time.perf_counter() - started:.1f} s", manifest)
    if "oracle_uauc" in manifest:
        console.print(f"test uauc of the true click model (oracle) {manifest['oracle_uauc']:.4f}, of a Bayes "
                      f"observer of the clicks {manifest['observer_uauc']:.4f}")


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in str(text).split(","))
    except ValueError:
        raise DuetError(f"--ratios: expected three numbers like 0.8,0.1,0.1, got {text!r}") from None


def _print_counts(console: Any, title: str, manifest: dict) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("split", "records", "positives", "events", "users", "items"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, c in manifest["counts"].items():
        table.add_row(name, *(f"{c[k]:,}" for k in ("records", "positives", "events", "users", "items")))
    table.caption = (f"{manifest['num_users']:,} users, {manifest['num_items'] - 1:,} items, "
                     f"L={manifest['history_len']}, W={manifest['window_len']}")
    console.print(table)


COMPARE_OPTIONS = ("backbones", "seeds", "only_seeds", "quick", "epochs", "duet_epochs", "variants", "finetune_steps",
                   "finetune_scope", "scratch", "full_ranking_positives", "threads", "embed_dim", "finetune_choice_devices",
                   "device_model")


def parse_seeds(text: str | None, seeds: int) -> tuple[int, ...] | None:
    """`--only-seeds 3,4` -> (3, 4), each checked to be one of the comparison's seeds."""
    if text is None:
        return None
    try:
        chosen = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise DuetError(f"--only-seeds: expected comma-separated seed numbers, got {text!r}") from None
    outside = [s for s in chosen if not 0 <= s < seeds]
    if not chosen or outside:
        raise DuetError(f"--only-seeds: seeds must be in 0..{seeds - 1} (--seeds {seeds}), got {text!r}")
    return chosen


def compare(data: Path, out: Path, options: dict[str, Any], progress: bool) -> Path:
    """Pop, base, fine-tune and DUET variants on the same splits -> OUT/results.md; returns it."""
    from duet.tasks.recommendation.report.compare import CompareConfig, DuetVariant, quick_config
    from duet.tasks.recommendation.report.compare import compare as run_compare
    from duet.tasks.recommendation.report.compressed import CompressedDevice

    refuse_given({_flag(k): v for k, v in options.items() if k not in COMPARE_OPTIONS},
                 f"{data} is a recommendation dataset: {{}} do not apply")
    backbones, variants, epochs = options.get("backbones"), options.get("variants"), options.get("epochs")
    device = options.get("device_model")
    base = quick_config(str(data)) if options.get("quick") else CompareConfig(data=str(data))
    chosen = {"backbones": tuple(b.strip() for b in backbones.split(",") if b.strip()) if backbones else None,
              "seeds": options.get("seeds"), "epochs": epochs, "backbone_epochs": {} if epochs else None,
              "duet_epochs": options.get("duet_epochs"),
              "duet_variants": tuple(DuetVariant.parse(v) for v in variants.split(",")) if variants else None,
              "device_model": CompressedDevice.parse(device) if device is not None else None,
              **{k: options.get(k) for k in ("finetune_steps", "finetune_scope", "scratch", "full_ranking_positives",
                                              "threads", "embed_dim", "finetune_choice_devices")}}
    if options.get("finetune_steps") is not None:  # steps given: no validation grid over them
        chosen["finetune_grid"] = ()
    cfg = CompareConfig.model_validate({**base.model_dump(), **{k: v for k, v in chosen.items() if v is not None}})
    run_compare(cfg, out, progress=progress, only_seeds=parse_seeds(options.get("only_seeds"), cfg.seeds))
    return out / "results.md"


def describe(data: Path, plot: Path | None, top: int) -> None:
    """`duet data info`: counts per split, sequence lengths and item popularity."""
    from rich.console import Console
    from rich.table import Table

    from duet.tasks.recommendation.data.info import plot as write_plot
    from duet.tasks.recommendation.data.info import summarize

    info = summarize(data, top=top)
    console = Console()
    console.print(f"[bold]{info['path']}[/bold]  source: {json.dumps(info['source'])}")
    console.print(f"protocol: {json.dumps(info['protocol'])}")
    table = Table(title=f"{info['num_users']:,} users, {info['num_items'] - 1:,} items, "
                        f"L={info['history_len']}, W={info['window_len']}")
    table.add_column("split")
    for column in ("records", "positives", "events", "users", "items"):
        table.add_column(column, justify="right")
    lengths = Table(title="non-padding sequence lengths of the positives")
    lengths.add_column("split")
    lengths.add_column("sequence")
    for stat in ("min", "median", "mean", "max"):
        lengths.add_column(stat, justify="right")
    for name, s in info["splits"].items():
        table.add_row(name, *(f"{s[k]:,}" for k in ("records", "positives", "events", "users", "items")))
        for key in ("history", "window"):
            lengths.add_row(name, key, *(f"{s[key][stat]:.4g}" for stat in ("min", "median", "mean", "max")))
    console.print(table)
    console.print(lengths)
    pop = info["popularity"]
    console.print(f"item popularity over {pop['positives']:,} positives: "
                  f"{pop['items_with_positives']:,} items with positives, gini {pop['gini']:.3f}, "
                  f"top 10% of items hold {pop['top10pct_share']:.1%}")
    items = Table(title=f"top {len(pop['top'])} items")
    for column in ("item", "raw id", "positives", "share"):
        items.add_column(column, justify="right")
    for row in pop["top"]:
        items.add_row(str(row["item"]), str(row["raw"]), f"{row['positives']:,}", f"{row['share']:.2%}")
    console.print(items)
    if plot is not None:
        write_plot(data, plot)
        console.print(f"wrote {plot}")


def finetune(options: dict[str, Any], out: Path | None, progress: bool) -> dict:
    """Per-device fine-tuning of a base run; returns its summary."""
    from pydantic import ValidationError

    from duet.tasks.recommendation.finetune import FinetuneConfig
    from duet.tasks.recommendation.finetune import finetune as run_finetune

    try:
        cfg = FinetuneConfig(**options)
    except ValidationError as exc:
        raise option_error(exc) from None
    return run_finetune(cfg, out, progress=progress)


def export_text(data: Path, train: Path, test: Path, overwrite: bool) -> dict[Path, int]:
    """The dataset in the reference text format; records written per file."""
    from duet.tasks.recommendation.data.textformat import export_text as run_export

    return run_export(data, train, test, overwrite=overwrite)
