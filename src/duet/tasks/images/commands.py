"""The image task's side of the command line: `duet prepare` of its sources, `duet compare` and
`duet data info` (the generic commands call these)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from duet.errors import DuetError, option_error, refuse_given

SOURCES = ("digits-fleet", "npz")
PREPARE_OPTIONS = ("seed", "window_len", "adapt", "path")
COMPARE_OPTIONS = ("seeds", "quick", "epochs", "duet_epochs", "threads", "variants")


def _flag(name: str) -> str:
    return "--protocol" if name == "protocol_name" else "--" + name.replace("_", "-")


def prepare(source: str, out: Path, options: dict[str, Any], overwrite: bool) -> None:
    """Build an image fleet (every device with its class mix and shift); print its counts."""
    from pydantic import ValidationError
    from rich.console import Console

    from duet.tasks.images.fleet import FleetConfig, prepare_fleet

    refuse_given({_flag(k): v for k, v in options.items() if k not in PREPARE_OPTIONS},
                 f"--source {source} builds an image fleet: {{}} do not apply")
    try:
        cfg = FleetConfig(**{k: options[k] for k in ("seed", "window_len", "adapt") if options.get(k) is not None})
    except ValidationError as exc:
        raise option_error(exc) from None
    started = time.perf_counter()
    manifest = prepare_fleet(out, source, cfg, path=options.get("path"), overwrite=overwrite)
    counts = ", ".join(f"{name} {c['scored']} scored of {c['samples']} samples on {c['devices']} devices"
                       for name, c in manifest["counts"].items())
    Console().print(f"prepared in {time.perf_counter() - started:.1f} s: {counts}")


def compare(data: Path, out: Path, options: dict[str, Any], progress: bool) -> Path:
    """Global, fine-tuning, TENT, oracle and DUET on the same devices -> OUT/results.md; returns it."""
    from duet.tasks.images.compare import compare_images

    refuse_given({_flag(k): v for k, v in options.items() if k not in COMPARE_OPTIONS},
                 f"{data} is an image fleet: {{}} do not apply")
    compare_images(compare_config(data, options), out, progress=progress)
    return out / "results.md"


def compare_config(data: Path, options: dict[str, Any], **fixed: Any):
    """The comparison's configuration from `duet compare`'s options (quick: one seed, few
    epochs) and what the task fixes; a bad value is a one-line error."""
    from pydantic import ValidationError

    from duet.tasks.images.compare import DUET_VARIANTS, ImageCompareConfig

    quick = bool(options.get("quick"))
    variants = tuple(v.strip() for v in options["variants"].split(",")) if options.get("variants") else None
    unknown = [v for v in variants or () if v not in DUET_VARIANTS]
    if unknown:
        raise DuetError(f"--variants {','.join(unknown)}: an image or sensor fleet's DUET variants are "
                        f"{', '.join(DUET_VARIANTS)}")
    chosen = {"seeds": options.get("seeds") or (1 if quick else None),
              "epochs": options.get("epochs") or (10 if quick else None),
              "duet_epochs": options.get("duet_epochs") or (3 if quick else None), "threads": options.get("threads"),
              "duet_variants": variants}
    try:
        return ImageCompareConfig(data=str(data), **fixed, **{k: v for k, v in chosen.items() if v is not None})
    except ValidationError as exc:
        raise option_error(exc) from None


def describe(data: Path, plot: Path | None, top: int) -> None:  # noqa: ARG001
    """`duet data info`: samples per split, devices by kind and shift type."""
    from rich.console import Console
    from rich.table import Table

    from duet.manifest import read_manifest
    from duet.tasks.fleet.store import FORMAT

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


def compare_summary(report: Path, width: int = 80) -> str:
    """What `duet compare` prints on an image fleet: test accuracy on unseen devices per method,
    DUET against the global model and its generator's own share, and the full report's files;
    every line fits `width` columns (the Markdown tables do not)."""
    import json
    import textwrap

    summary = json.loads((report / "results.json").read_text())["summary"]
    lines = ["test accuracy on unseen devices, mean ± std over seeds",
             *(f"  {m:<14} {summary['table'][m]['accuracy_unseen']['mean']:.4f} ± "
               f"{summary['table'][m]['accuracy_unseen']['std']:.4f}" for m in summary["methods"])]
    for label, name in (("DUET − global model", "duet - global (unseen)"),
                        ("generator's own share (DUET − own static part)", "duet - duet-static (unseen)")):
        d = summary["differences"].get(name)
        if d:
            level = d.get("seed_level") or {}
            seeds = f"; seeds [{level['lo']:+.4f}, {level['hi']:+.4f}]" if level.get("lo") is not None else ""
            lines.append(f"{label}: {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]{seeds}")
    lines.append(f"full report: {report / 'results.md'}, {report / 'results.json'}")
    return "\n".join(w for line in lines for w in textwrap.wrap(line, width, subsequent_indent="    ") or [""])
