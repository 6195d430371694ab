"""What `duet compare` prints where it runs: a summary that fits an 80-column terminal or a
CI log (the full Markdown table, 17 columns wide, is cut to nothing there), naming the files
that hold the full report."""

from __future__ import annotations

import textwrap
from pathlib import Path

from duet.tasks.recommendation.report.methods import METHODS

WIDTH = 80
LABELS = {"pop": "popularity", "base": "global model (base)", "finetune": "fine-tune (per device)",
          "duet-noswa": "DUET w/o SWA", "duet": "DUET (PPG+SWA)", "duet-global": "DUET static + global head",
          "duet-scratch": "DUET from scratch"}


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
    for method in METHODS:
        if method not in methods or "uauc" not in methods[method]:
            continue
        u = methods[method]["uauc"]
        cell = f"{u['mean']:.4f} ± {u['std']:.4f}"
        lines.append(f"  {LABELS[method]:<26} {cell:<16} {_difference(diffs.get(f'{method} - base'))}".rstrip())
    share = diffs.get("duet - duet-global")
    if share:
        lines += ["  generator's own share, DUET − its static part with the global head:",
                  f"  {'':<26} {'':<16} {_difference(share)}"]
    return lines


def terminal_summary(results: dict, report: Path, width: int = WIDTH) -> str:
    """The whole summary, every line at most `width` characters."""
    lines: list[str] = []
    for backbone, methods in results["summary"].items():
        lines += backbone_lines(backbone, methods, len(results["runs"].get(backbone, {}))) + [""]
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
