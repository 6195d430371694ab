"""results.json -> results.md and the plots (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from duet.atomic import save_png, write_bytes

LABELS = {"pop": "popularity", "base": "base (global)", "finetune": "fine-tune", "duet-noswa": "DUET w/o SWA",
          "duet": "DUET (PPG+SWA)", "duet-global": "DUET static + global head",
          "duet-scratch": "DUET from scratch (published schedule)", "device": "device model alone (global head)",
          "device-duet": "device model + DUET", "device-global": "device-DUET static + global head"}


def _fmt(stat: dict) -> str:
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def write_markdown(results: dict, report: Path) -> None:
    from duet.tasks.recommendation.report.methods import FULL_RANKED, REPORTED, ROWS

    cfg = results["config"]
    lines = [
        "# duet comparison", "",
        f"Dataset `{cfg['data']}`; test split; mean ± std over the seeds finished so far "
        f"(of {cfg['seeds']} planned). Models selected on validation uauc only. The paired column is the "
        "mean ± std over seeds of (method − base) test uauc within each seed, where both share the base run. "
        "`full_*` metrics rank a test positive against every item the user never interacted with "
        f"({cfg.get('full_ranking_positives') or 'all'} seeded positives, the same for every method; "
        "fine-tuning has none: it is a model per device).", "",
    ]
    for backbone, methods in results["summary"].items():
        lines += [f"## {backbone} ({len(results['runs'][backbone])} seed(s))", "",
                  "| method | " + " | ".join(REPORTED + FULL_RANKED)
                  + " | uauc − base, paired by seed | adaptation ms/device (batched) |",
                  "|---|" + "---|" * (len(REPORTED) + len(FULL_RANKED) + 2)]
        for method in ROWS:
            if method not in methods:
                continue
            stats = methods[method]
            adapt = stats.get("adapt_ms_per_device")
            delta = stats.get("uauc_minus_base")
            cells = [_fmt(stats[m]) if m in stats else "–" for m in REPORTED + FULL_RANKED] + [f"{delta['mean']:+.4f} ± {delta['std']:.4f}" if delta else "–",
                                                         f"{adapt['mean']:.4f}" if adapt else "–"]
            lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
        ft, gen = methods.get("finetune", {}).get("adapt_ms_per_device"), methods.get("duet", {}).get("adapt_ms_per_device")
        single = methods.get("duet", {}).get("adapt_ms_single_device")
        if ft and gen and single:
            lines += ["", f"Per-device adaptation on one CPU thread: fine-tuning {ft['mean']:.1f} ms; generation "
                      f"{gen['mean'] * 1e3:.1f} µs amortised in a batch of 1024 devices "
                      f"(**{ft['mean'] / gen['mean']:,.0f}x** faster), {single['mean']:.3f} ms for a device alone "
                      f"({ft['mean'] / single['mean']:,.0f}x)."]
        lines += ["", *_difference_lines(methods.get("differences", {})), ""]
        lines += ["", *_device_lines(methods, cfg), ""]
        lines += ["", *_cold_lines(methods), ""]
        lines += ["", *_variant_lines(results["runs"][backbone]), ""]
    lines += ["![uauc](uauc.png)", "", "![adaptation time](adaptation.png)", "", "![validation curves](curves.png)", "",
              "![uauc by items seen](cold.png)", ""]
    write_bytes(report / "results.md", "\n".join(lines).encode())


def _difference_lines(differences: dict) -> list[str]:
    """Paired test-uauc differences with 95% bootstrap intervals over users (and seeds)."""
    if not differences:
        return []
    lines = ["Paired differences of test uauc (mean over users and seeds; 95% percentile bootstrap interval, "
             "users and seeds resampled; **bold** = the interval excludes 0; seed-level: a t-interval over the "
             "seed means, the spread of training itself, none with one seed). `duet - duet-global` is what "
             "generation itself adds beyond the static part DUET trained:", "",
             "| difference | mean | 95% interval | significant | seed-level 95% | seeds x users |",
             "|---|---|---|---|---|---|"]
    for name, d in differences.items():
        a, b = name.split(" - ")
        label = f"{LABELS.get(a, a)} − {LABELS.get(b, b)}"
        mean = f"**{d['mean']:+.4f}**" if d["significant"] else f"{d['mean']:+.4f}"
        seed = d.get("seed_level") or {}
        seed_cell = "–" if seed.get("lo") is None else f"[{seed['lo']:+.4f}, {seed['hi']:+.4f}]" + (
            " (excludes 0)" if seed["significant"] else "")
        lines.append(f"| {label} | {mean} | [{d['lo']:+.4f}, {d['hi']:+.4f}] | "
                     f"{'yes' if d['significant'] else 'no'} | {seed_cell} | {d['seeds']} x {d['users']} |")
    left_out = [f"{name}: {d['excluded']} users left out (their AUC is undefined in some seed)"
                for name, d in differences.items() if d.get("excluded")]
    return [*lines, *([""] + left_out if left_out else [])]


def _device_lines(methods: dict, cfg: dict) -> list[str]:
    """--device-model: the share of the device-to-cloud gap each device row closes, and what the
    device and cloud models cost on the device runtime."""
    gap = methods.get("gap_closed")
    if not gap:
        return []
    from duet.tasks.recommendation.report.compressed import device_spelling

    spelling = device_spelling(cfg)
    seeds = list(gap["gap"]["per_seed"])
    lines = [f"Compressed device model (`--device-model {spelling}`) against the cloud model (base): the share "
             "of the device-to-cloud test-uauc gap each row closes, (row − device) / (base − device); pooled = "
             "mean difference over mean gap.", "",
             "| | " + " | ".join(seeds) + " | mean | pooled |", "|---|" + "---|" * (len(seeds) + 2),
             "| gap (base − device) | " + " | ".join(f"{gap['gap']['per_seed'][s]:+.4f}" for s in seeds)
             + f" | {gap['gap']['mean']:+.4f} | |"]
    for row, label in (("device-duet", LABELS["device-duet"]), ("generation", "generation itself (device-duet − "
                                                                               "device-global)"),
                       ("device-global", LABELS["device-global"])):
        share = gap[row]
        cells = [_percent(share["per_seed"][s]) for s in seeds] + [_percent(share["mean"]), _percent(share["pooled"])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    costs = [(m, methods[m]["device_cost"]) for m in ("device", "device-duet", "base") if "device_cost" in methods.get(m, {})]
    if costs:
        lines += ["", "On the device runtime (the exported bundle on onnxruntime, one thread; a request is one test "
                  "event's history and candidates, median and p90 over the first test events; the ONNX file also "
                  "holds the exporter's per-node stack traces, hence its weights' bytes beside it):", "",
                  "| model | parameters | head parameters | history items | ONNX weights KiB | ONNX file KiB | "
                  "ms per request (p50) | p90 |", "|---|---|---|---|---|---|---|---|"]
        for method, c in costs:
            name = "cloud model (base)" if method == "base" else LABELS[method]
            lines.append(f"| {name} | {c['parameters']['mean']:,.0f} | {c['head_parameters']['mean']:,.0f} | "
                         f"{c['history_items']['mean']:.0f} | {c['onnx_weight_bytes']['mean'] / 1024:,.1f} | "
                         f"{c['onnx_bytes']['mean'] / 1024:,.1f} | {c['score_ms_p50']['mean']:.3f} | "
                         f"{c['score_ms_p90']['mean']:.3f} |")
    return lines


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _cold_lines(methods: dict) -> list[str]:
    """Test uauc per bin of items the device had seen before the event (cold devices first)."""
    from duet.tasks.recommendation.report.cold import LABELS as BINS
    from duet.tasks.recommendation.report.methods import ROWS

    rows = [m for m in ROWS if "by_seen" in methods.get(m, {})]
    if not rows:
        return []
    bins = [b for b in BINS if any(b in methods[m]["by_seen"] for m in rows)]
    counts = {b: next(methods[m]["by_seen"][b] for m in rows if b in methods[m]["by_seen"]) for b in bins}
    lines = ["Test uauc by items the device had seen before the event (mean over seeds; events and users per bin "
             "in the header):", "",
             "| method | " + " | ".join(f"{b} ({counts[b]['events']:,} ev, {counts[b]['users']:,} users)" for b in bins)
             + " |", "|---|" + "---|" * len(bins)]
    for m in rows:
        cells = [f"{methods[m]['by_seen'][b]['uauc']:.4f}" if b in methods[m]["by_seen"] else "–" for b in bins]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    return lines


def _variant_lines(seeds: dict) -> list[str]:
    """Which DUET stage-2 variant validation chose, per seed, with every variant's valid uauc."""
    lines = ["DUET stage-2 variant chosen on validation uauc (every variant's valid uauc in brackets):", ""]
    for seed, runs in seeds.items():
        for method in ("duet-noswa", "duet", "device-duet"):
            scores = runs.get(method, {}).get("valid_uauc_per_variant")
            if scores:
                tried = ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
                lines.append(f"- {seed}, {LABELS[method]}: **{runs[method]['variant']}** ({tried})")
    return lines if len(lines) > 2 else []


def write_plots(results: dict, report: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from duet.tasks.recommendation.report.methods import DEVICE_METHODS, METHODS

    summary = results["summary"]
    backbones = list(summary)
    # uauc per backbone and method, with error bars; device rows only where the comparison has them
    rows = METHODS + tuple(m for m in DEVICE_METHODS if any(m in summary[b] for b in backbones))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(rows)
    for i, method in enumerate(rows):
        means = [summary[b].get(method, {}).get("uauc", {}).get("mean", np.nan) for b in backbones]
        stds = [summary[b].get(method, {}).get("uauc", {}).get("std", 0.0) for b in backbones]
        bars = ax.bar(np.arange(len(backbones)) + i * width, means, width, yerr=stds, label=LABELS[method],
                      capsize=3)
        ax.bar_label(bars, fmt="%.4f", fontsize=6, padding=2)
    lows = [summary[b][m]["uauc"]["mean"] for b in backbones for m in rows if m in summary[b]]
    ax.set_ylim(max(0.0, min(lows) - 0.02), min(1.0, max(lows) + 0.02))
    ax.set_xticks(np.arange(len(backbones)) + 0.4 - width / 2, backbones)
    ax.set_ylabel("test uauc")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, report / "uauc.png")
    # adaptation time per device, log scale
    fig, ax = plt.subplots(figsize=(6, 3))
    names, values = [], []
    for b in backbones:
        for method in ("finetune", "duet"):
            stat = summary[b].get(method, {}).get("adapt_ms_per_device")
            if stat:
                names.append(f"{b}\n{LABELS[method]}")
                values.append(stat["mean"])
    ax.bar(names, values, color=["tab:orange" if "fine" in n else "tab:green" for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("ms per device (log)")
    ax.tick_params(axis="x", labelsize=7)
    _save(fig, report / "adaptation.png")
    # validation uauc per epoch with and without SWA
    fig, axes = plt.subplots(1, len(backbones), figsize=(4 * len(backbones), 3), squeeze=False)
    for ax, backbone in zip(axes[0], backbones, strict=True):
        for color, (seed, runs) in enumerate(results["runs"][backbone].items()):
            for method, style in (("duet-noswa", "--"), ("duet", "-")):  # one colour per seed
                history = runs.get(method, {}).get("history", [])
                ax.plot([h["epoch"] for h in history], [h["valid_uauc"] for h in history], style, marker=".",
                        color=f"C{color}", label=f"{LABELS[method]} {seed}")
        ax.set_title(backbone)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("stage-2 epoch")
        ax.set_ylabel("valid uauc")
        ax.legend(fontsize=6)
    _save(fig, report / "curves.png")
    _plot_cold(summary, report / "cold.png")


def _plot_cold(summary: dict, path: Path) -> None:
    """uauc per items-seen bin, one panel per backbone, one line per method."""
    import matplotlib.pyplot as plt

    from duet.tasks.recommendation.report.cold import LABELS as BINS
    from duet.tasks.recommendation.report.methods import ROWS

    backbones = list(summary)
    fig, axes = plt.subplots(1, len(backbones), figsize=(4.5 * len(backbones), 3.2), squeeze=False)
    for ax, backbone in zip(axes[0], backbones, strict=True):
        for method in ROWS:
            bins = summary[backbone].get(method, {}).get("by_seen", {})
            if not bins:  # a method this comparison did not run
                continue
            xs = [i for i, b in enumerate(BINS) if b in bins]
            ax.plot(xs, [bins[BINS[i]]["uauc"] for i in xs], marker="o", label=LABELS[method])
        ax.set_xticks(range(len(BINS)), BINS)
        ax.set_xlabel("items the device had seen")
        ax.set_ylabel("test uauc")
        ax.set_title(backbone)
        ax.legend(fontsize=6)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    save_png(fig, path, dpi=120)
