"""What `duet compare` prints where it runs: a summary that fits an 80-column terminal or a
CI log (the full Markdown table, 17 columns wide, is cut to nothing there), naming the files
that hold the full report."""

from __future__ import annotations

import textwrap
from pathlib import Path

from duet.tasks.recommendation.report.compressed import device_spelling
from duet.tasks.recommendation.report.methods import DEVICE_METHODS, ROWS

WIDTH = 80
LABELS = {"pop": "popularity", "base": "global model (base)", "finetune": "fine-tune (per device)",
          "duet-noswa": "DUET w/o SWA", "duet": "DUET (PPG+SWA)", "duet-global": "DUET static + global head",
          "duet-scratch": "DUET from scratch", "device": "device model alone", "device-duet": "device model + DUET",
          "device-global": "device static, global head"}
# --device-model's differences, as the terminal names them (20 columns).
DEVICE_DIFFERENCES = {"device-duet - device": "DUET − device model", "device-duet - device-global": "generation itself",
                      "device-global - device": "static part − device", "base - device": "cloud − device (gap)",
                      "device-duet - base": "DUET − cloud model"}


def _signed(x: float) -> str:
    return f"{x:+.4f}"


def _difference(d: dict | None) -> str:
    """'+0.0041 [+0.0020, +0.0061] *' (* = the interval excludes 0), or '' when not computed."""
    if not d:
        return ""
    return f"{_signed(d['mean'])} [{_signed(d['lo'])}, {_signed(d['hi'])}]" + (" *" if d["significant"] else "")


def backbone_lines(backbone: str, methods: dict, seeds: int) -> list[str]:
    """One backbone: each method's test uauc (mean ± std over seeds) and its difference
    against the global model, then generation's own share."""
    diffs = methods.get("differences", {})
    lines = [f"{backbone}, {seeds} seed(s): test uauc, mean ± std over seeds",
             f"  {'method':<26} {'uauc':<16} {'− global model [95%]'}"]
    for method in ROWS:
        if method not in methods or "uauc" not in methods[method]:
            continue
        u = methods[method]["uauc"]
        cell = f"{u['mean']:.4f} ± {u['std']:.4f}"
        # device rows: their differences are against the device model, below
        diff = "" if method in DEVICE_METHODS else _difference(diffs.get(f"{method} - base"))
        lines.append(f"  {LABELS[method]:<26} {cell:<16} {diff}".rstrip())
    share = diffs.get("duet - duet-global")
    if share:
        lines += ["  generator's own share, DUET − its static part with the global head:",
                  f"  {'':<26} {'':<16} {_difference(share)}"]
    return lines


def _seed_level(d: dict | None) -> str:
    """'[+0.0010, +0.0030] *' for a seed-level interval, '' with one seed (no interval)."""
    if not d or d.get("lo") is None:
        return ""
    return f"[{_signed(d['lo'])}, {_signed(d['hi'])}]" + (" *" if d["significant"] else "")


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def device_lines(methods: dict, spelling: str) -> list[str]:
    """--device-model: DUET on the device model against the cloud model (base), the share of the gap
    it closes, and what each model costs on the device runtime."""
    diffs, gap = methods.get("differences", {}), methods.get("gap_closed", {})
    if "device" not in methods:
        return []
    seeds = any((diffs[name].get("seed_level") or {}).get("lo") is not None for name in DEVICE_DIFFERENCES
                if name in diffs)
    lines = [f"  compressed device ({spelling}) and the cloud model (base):",
             f"  {'':<20} {'paired [95%]':<29} {'seed-level [95%]' if seeds else ''}".rstrip()]
    for name, label in DEVICE_DIFFERENCES.items():
        if name in diffs:
            lines.append(f"  {label:<20} {_difference(diffs[name]):<29} {_seed_level(diffs[name].get('seed_level'))}"
                         .rstrip())
    if gap.get("device-duet"):
        seeds = ", ".join(_share(v) for v in gap["device-duet"]["per_seed"].values())
        lines.append(f"  share of the device-to-cloud gap ({gap['gap']['mean']:+.4f}) closed: DUET "
                     f"{_share(gap['device-duet']['mean'])} (per seed {seeds}), generation itself "
                     f"{_share(gap['generation']['mean'])}, its static part {_share(gap['device-global']['mean'])}")
    costs = [(name, methods[m]["device_cost"]) for name, m in (("device", "device"), ("cloud", "base"))
             if "device_cost" in methods.get(m, {})]
    if costs:
        lines.append("  on the device runtime (onnxruntime, 1 thread): " + "; ".join(
            f"{name} {c['parameters']['mean']:,.0f} parameters ({c['onnx_weight_bytes']['mean'] / 1024:,.0f} KiB of "
            f"weights, {c['history_items']['mean']:.0f} history items), {c['score_ms_p50']['mean']:.3f} ms per request"
            for name, c in costs))
    return lines


def terminal_summary(results: dict, report: Path, width: int = WIDTH) -> str:
    """The whole summary, every line at most `width` characters."""
    lines: list[str] = []
    for backbone, methods in results["summary"].items():
        lines += backbone_lines(backbone, methods, len(results["runs"].get(backbone, {})))
        lines += device_lines(methods, device_spelling(results.get("config", {}))) + [""]
    lines.append("* the 95% paired bootstrap interval (users and seeds) excludes 0")
    plots = ", ".join(sorted(p.name for p in report.glob("*.png")))
    lines.append(f"full report: {report / 'results.md'} (every metric, cold devices, variants), "
                 f"{report / 'results.json'}" + (f"; plots: {plots}" if plots else ""))
    wrapped: list[str] = []
    for line in lines:
        indent = " " * (len(line) - len(line.lstrip()) + 2)
        wrapped += textwrap.wrap(line, width, subsequent_indent=indent, break_on_hyphens=False) or [""]
    return "\n".join(wrapped)


def summary_of_report(report: Path, width: int = WIDTH) -> str:
    """The summary of a finished report folder (its results.json)."""
    import json

    return terminal_summary(json.loads((report / "results.json").read_text()), report, width)
