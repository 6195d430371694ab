"""Write every results figure in the docs from the committed result files, or check them.

README.md and docs/*.md hold two kinds of generated text, so that a number in the
docs can only come from a committed JSON (under docs/results/ or benchmarks/results/):

* blocks: the lines between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``
  are ``BLOCKS[NAME](root)``, a table rendered from the JSON files;
* inline figures: ``<!--f SOURCE|PATH|FORMAT-->TEXT<!--/f-->``, where TEXT is the value at
  PATH ('/'-separated keys) in SOURCE (a file relative to the repository root, or a
  name in ``DERIVED``), written with FORMAT (see ``format_value``).

``python scripts/results.py`` rewrites both in place (each file atomically);
``--check`` only compares and exits 1 naming file, line and figure at every difference.
Plain Python (stdlib only): it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

BLOCK = re.compile(r"^<!-- figures:(?P<name>[\w.-]+) -->\n(?P<body>.*?)^<!-- /figures:(?P=name) -->$",
                   re.M | re.S)
INLINE = re.compile(r"<!--f (?P<spec>[^>]*?)-->(?P<text>.*?)<!--/f-->", re.S)
MINUS = "\u2212"
# Two-sided 95% quantiles of Student's t, by degrees of freedom (seed-level intervals).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


# --- reading the committed files -------------------------------------------------------------

@cache
def _load(root: Path, rel: str) -> object:
    return json.loads((root / rel).read_text())


def load(root: Path, source: str) -> object:
    """A committed JSON (path relative to root) or a derived view of one (`DERIVED`)."""
    if source in DERIVED:
        return DERIVED[source](root)
    return _load(root, source)


def lookup(data: object, path: str) -> object:
    """The value at a '/'-separated key path ('' is the whole value); list items by index."""
    for key in filter(None, path.split("/")):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


# --- statistics (ddof 1 everywhere) ----------------------------------------------------------

def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample std (ddof 1; 0 for one value): the one std convention of the docs."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def t_interval(values: list[float]) -> dict[str, float] | None:
    """95% t-interval over seed means: the seed-to-seed uncertainty a resampling of users hides."""
    if len(values) < 2:
        return None
    m, s = statistics.fmean(values), statistics.stdev(values)
    half = T95[len(values) - 1] * s / math.sqrt(len(values))
    return {"mean": m, "lo": m - half, "hi": m + half}


def seed_means(pairs: list[tuple[dict, dict]]) -> list[float]:
    """Per seed, the mean over the users every pair scores of (A - B) per-user AUC."""
    common = set.intersection(*(set(a) & set(b) for a, b in pairs))
    return [statistics.fmean(a[u] - b[u] for u in sorted(common)) for a, b in pairs]


# --- formatting ------------------------------------------------------------------------------

FORMAT = re.compile(r"(?P<kind>ci|iv|ms|)(?P<spec>[^*]*)(?:\*(?P<scale>[\d.e+-]+))?")


def format_value(value: object, fmt: str) -> str:
    """FORMAT = [kind]spec[*scale]: spec is Python's format spec, scale multiplies first.
    kind '' formats a number; 'ci' a {mean, lo, hi} as 'm [lo, hi]'; 'iv' as '[lo, hi]';
    'ms' a {mean, std} as 'm ± s'."""
    match = FORMAT.fullmatch(fmt)
    if match is None:
        raise ValueError(f"bad format {fmt!r}")
    kind, spec, scale = match["kind"], match["spec"], match["scale"]

    def num(x: float) -> str:
        return format(x * float(scale) if scale else x, spec)

    if kind == "ci":
        return f"{num(value['mean'])} [{num(value['lo'])}, {num(value['hi'])}]"
    if kind == "iv":
        return f"[{num(value['lo'])}, {num(value['hi'])}]"
    if kind == "ms":
        return f"{num(value['mean'])} ± {format(value['std'] * float(scale or 1), spec.lstrip('+'))}"
    return num(value)


def signed(x: float, digits: int = 4) -> str:
    """+0.0028 / −0.0007 with a true minus sign, as the docs' tables write differences."""
    return f"{x:+.{digits}f}".replace("-", MINUS)


def interval(d: dict, digits: int = 4, scale: float = 1.0) -> str:
    return f"[{signed(d['lo'] * scale, digits)}, {signed(d['hi'] * scale, digits)}]"


def excludes_zero(*intervals: dict | None) -> bool:
    """Significant: every interval given exists and excludes 0."""
    return all(d is not None and (d["lo"] > 0 or d["hi"] < 0) for d in intervals)


def bold_if(text: str, flag: bool) -> str:
    return f"**{text}**" if flag else text


def table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align or ["---"] * len(header)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# --- derived views ---------------------------------------------------------------------------

DIGITS = "docs/results/digits/results.json"
DIGITS_ROWS = (("global", "global model"), ("finetune-5", "fine-tune, 5 labels (gradients on the device)"),
               ("finetune-20", "fine-tune, 20 labels (gradients on the device)"),
               ("tent", "TENT, no labels (gradients on the device)"),
               ("bnstats", "batch-norm statistics of the window, no labels, no gradient"),
               ("armbn", "ARM-BN: trained for the window's batch-norm statistics, no labels, no gradient"),
               ("oracle", "oracle per shift type"),
               ("duet-static", "DUET's own static part, global head"), ("duet-noswa", "DUET without SWA"),
               ("duet", "**DUET (PPG+SWA)**, no labels, no gradient"))


def digits(root: Path) -> dict:
    """The image comparison with ddof-1 stds and seed-level t-intervals recomputed from its seeds
    (the committed summary holds ddof-0 stds)."""
    raw = _load(root, DIGITS)
    seeds = list(raw["seeds"].values())
    metrics = {m: {k: mean_std([s["metrics"][m][k] for s in seeds]) for k in seeds[0]["metrics"][m]}
               for m in seeds[0]["metrics"]}
    seed_level = {}
    for name in raw["summary"]["differences"]:
        a, rest = name.split(" - ")
        b, where = rest.split(" (")
        key = "accuracy_" + where.rstrip(")").replace("unseen, ", "")
        seed_level[name] = t_interval([s["metrics"][a][key] - s["metrics"][b][key] for s in seeds])
    costs = {m: [s["costs"][m]["median_s"] * 1e3 for s in seeds]
             for m in ("finetune-5", "finetune-20", "tent", "bnstats", "armbn") if m in seeds[0]["costs"]}
    costs |= {f"duet_{k}": [s["costs"]["duet"][k] * 1e3 for s in seeds] for k in seeds[0]["costs"]["duet"]}
    window = {m: {w: statistics.fmean(s["window_curve"][m][w]["accuracy_unseen"] for s in seeds)
                  for w in seeds[0]["window_curve"][m]} for m in seeds[0]["window_curve"]}
    return {"metrics": metrics, "differences": raw["summary"]["differences"], "seed_level": seed_level,
            "window_unseen": window,
            "tent_loss_points": (metrics["global"]["accuracy_unseen"]["mean"] - metrics["tent"]["accuracy_unseen"]["mean"]) * 100,
            "costs_ms": costs, "cost_mean_ms": {k: statistics.fmean(v) for k, v in costs.items()},
            "seeds": len(seeds)}


REFERENCE = {"sasrec": "docs/results/reference-sasrec/results.json",
             "gru4rec": "docs/results/reference-gru4rec/results.json",
             "din": "docs/results/reference-din/results.json"}


def recommendation(root: Path, rel: str) -> dict:
    """A recommendation comparison per backbone: test uauc mean ± std (ddof 1) per method from
    its seeds, and per difference the paired bootstrap interval and a seed-level t-interval."""
    raw = _load(root, rel)
    out = {}
    for backbone, seeds in raw["runs"].items():
        runs = list(seeds.values())
        methods = {m: mean_std([r[m]["test"]["uauc"] for r in runs]) for m in runs[0] if "test" in runs[0][m]}
        diffs = {}
        for name, boot in raw["summary"][backbone].get("differences", {}).items():
            a, b = name.split(" - ")
            seed_level = t_interval(seed_means([(r[a]["user_auc"], r[b]["user_auc"]) for r in runs]))
            diffs[name] = {"boot": boot, "seeds": seed_level}
        per_seed = {m: [r[m]["test"]["uauc"] for r in runs] for m in methods}
        paired = {m: [x - y for x, y in zip(v, per_seed["base"], strict=True)] for m, v in per_seed.items()}
        out[backbone] = {"uauc": methods, "differences": diffs, "per_seed": per_seed, "paired_per_seed": paired,
                         "seeds": len(runs)}
    return out


def request_policy(root: Path, rel: str) -> dict:
    """Per policy setting on test: its share of always's requests and its uauc minus always's."""
    raw = _load(root, rel)
    always = next(r["uauc"] for r in raw["test"] if r["policy"] == "always")
    return {r["policy"]: {"fraction": r["fraction"], "uauc": r["uauc"], "minus_always": r["uauc"] - always}
            for r in raw["test"]}


def reference(root: Path) -> dict:
    return {b: recommendation(root, rel)[b] for b, rel in REFERENCE.items()}


DERIVED: dict[str, Callable[[Path], object]] = {
    "digits": digits,
    "reference": reference,
    "quick": lambda root: recommendation(root, "docs/results/quick/results.json")["sasrec"],
    "default": lambda root: recommendation(root, "docs/results/results.json"),
    "shift": lambda root: recommendation(root, "docs/results/shift-sasrec/results.json")["sasrec"],
    "policy": lambda root: request_policy(root, "docs/results/request_policy.json"),
}


# --- blocks ----------------------------------------------------------------------------------

def digits_table(root: Path) -> str:
    d = digits(root)["metrics"]
    rows = [[label] + [format_value(d[m][k], "ms.4f") for k in ("accuracy_unseen", "accuracy_seen", "macro_f1_unseen")]
            for m, label in DIGITS_ROWS if m in d]  # a comparison from before a baseline existed lacks it
    return table(["method", "unseen devices", "seen devices", "macro-F1, unseen"], rows)


def digits_differences(root: Path) -> str:
    d = digits(root)
    rows = []
    for name, boot in d["differences"].items():
        seed = d["seed_level"][name]
        rows.append([name, bold_if(signed(boot["mean"] * 100, 2), excludes_zero(boot, seed)),
                     interval(boot, 2, 100), interval(seed, 2, 100) if seed else "–"])
    return table(["difference", "mean", "95% paired bootstrap (devices, seeds)", "95% t-interval over seed means"],
                 rows)


def digits_window(root: Path) -> str:
    raw = _load(root, DIGITS)
    seeds = list(raw["seeds"].values())
    widths = list(seeds[0]["window_curve"]["duet"])

    def row(label: str, method: str, key: str) -> list[str]:
        return [label] + [f"{statistics.fmean(s['window_curve'][method][w][key] for s in seeds):.4f}" for w in widths]

    glob = statistics.fmean(s["metrics"]["global"]["accuracy_unseen"] for s in seeds)
    rows = [row("DUET, unseen", "duet", "accuracy_unseen"), row("DUET, seen", "duet", "accuracy_seen"),
            row("DUET without SWA, unseen", "duet-noswa", "accuracy_unseen"),
            ["global model, unseen (no window)"] + [f"{glob:.4f}"] * len(widths)]
    return table(["W", *widths], rows)


def digits_costs(root: Path) -> str:
    d = digits(root)
    ft20 = statistics.fmean(d["costs_ms"]["finetune-20"])
    rows = [[label, where, " / ".join(f"{v:.0f}" for v in d["costs_ms"][m]),
             f"{statistics.fmean(d['costs_ms'][m]):.1f}", ""]
            for m, label, where in (("finetune-5", "fine-tune, 5 labels", "device, forward + backward"),
                                    ("finetune-20", "fine-tune, 20 labels", "device, forward + backward"),
                                    ("tent", "TENT", "device, forward + backward"),
                                    ("bnstats", "batch-norm statistics", "device, forward only"),
                                    ("armbn", "ARM-BN", "device, forward only"))
            if m in d["costs_ms"]]
    for key, label in (("single_s", "DUET from the raw window, one device alone"),
                       ("batched_s", "DUET from the raw window, batch of 256"),
                       ("features_single_s", "DUET from the device's features (privacy mode), one device alone"),
                       ("features_batched_s", "DUET from the device's features, batch of 256")):
        ms = statistics.fmean(d["costs_ms"][f"duet_{key}"])
        rows.append([label, "cloud, no gradient", " / ".join(f"{v:.4f}" for v in d["costs_ms"][f"duet_{key}"]),
                     f"{ms:.4f}", f"{ft20 / ms:,.0f}x"])
    return table(["method", "where", "median ms per seed", "mean ms", "fine-tune-20 / this"], rows)


ANCHOR = "docs/results/published_code_anchor.json"


def _anchor_cells(root: Path) -> tuple[str, str, str]:
    a = _load(root, ANCHOR)["user_auc"]
    return (f"{a['popularity']:.4f}", f"{a['sasrec_last_epoch']:.4f} ({a['sasrec_best_on_test']:.4f})",
            f"{a['duet_1_thread']:.4f} (2 threads: {a['duet_2_threads']:.4f})")


def _diff_cell(d: dict, digits: int = 4, scale: float = 1.0) -> str:
    boot, seed = d["boot"], d["seeds"]
    seed = seed if seed and seed["lo"] is not None else None  # one seed has no seed-level interval
    text = f"{signed(boot['mean'] * scale, digits)} {interval(boot, digits, scale)}" + (
        f"; seeds {interval(seed, digits, scale)}" if seed else "")
    return bold_if(text, excludes_zero(boot, seed))


NAMES = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "din": "DIN"}


def reference_readme(root: Path) -> str:
    ref = reference(root)
    pop, base, duet = _anchor_cells(root)
    rows = [["published code, SASRec (one run of its code, its own files, CPU)", pop, base, duet, "", ""]]
    for b, d in ref.items():
        rows.append([f"duet, {NAMES[b]} ({d['seeds']} seeds)", f"{d['uauc']['pop']['mean']:.4f}",
                     format_value(d["uauc"]["base"], "ms.4f"), format_value(d["uauc"]["duet"], "ms.4f"),
                     _diff_cell(d["differences"]["duet - base"]), _diff_cell(d["differences"]["duet - duet-global"])])
    return table(["", "popularity", "base", "DUET (PPG+SWA)", "DUET − base",
                  "DUET − its own static part with the global head"], rows)


def reference_table(root: Path) -> str:
    ref = reference(root)
    rows = []
    for b, d in ref.items():
        u = d["uauc"]
        cells = [format_value(u[m], "ms.4f") if m in u else "–"
                 for m in ("base", "finetune", "duet-noswa", "duet", "duet-scratch")]
        rows.append([NAMES[b], str(d["seeds"]), f"{u['pop']['mean']:.4f}", *cells,
                     _diff_cell(d["differences"]["duet - base"]), _diff_cell(d["differences"]["duet - duet-global"])])
    pop, base, duet = _anchor_cells(root)
    rows.append(["published code, SASRec (one run, its own files)", "1", pop, base, "", "", duet, "", "", ""])
    return table(["backbone", "seeds", "popularity", "base", "fine-tune", "DUET w/o SWA", "DUET (PPG+SWA)",
                  "DUET from scratch", "DUET − base [paired; seeds]", "DUET − its static part + global head"], rows)


def default_table(root: Path) -> str:
    """The earlier-defaults comparison; the last column pairs each seed's DUET with its base."""
    rows = []
    for b, d in recommendation(root, "docs/results/results.json").items():
        u, per = d["uauc"], d["per_seed"]
        paired = mean_std([x - y for x, y in zip(per["duet"], per["base"], strict=True)])
        rows.append([b] + [format_value(u[m], "ms.4f") for m in ("pop", "base", "finetune", "duet-noswa", "duet")]
                    + [f"{signed(paired['mean'])} ± {paired['std']:.4f}".replace(MINUS, "-")])
    return table(["backbone", "popularity", "base (global)", "fine-tune", "DUET w/o SWA", "DUET (PPG+SWA)",
                  "DUET − base, paired by seed (mean ± std)"], rows)


def default_adaptation(root: Path) -> str:
    raw = _load(root, "docs/results/results.json")["summary"]
    rows = []
    for b, s in raw.items():
        ft, gen, one = (s["finetune"]["adapt_ms_per_device"]["mean"], s["duet"]["adapt_ms_per_device"]["mean"],
                        s["duet"]["adapt_ms_single_device"]["mean"])
        rows.append([b, f"{ft:.0f}", f"{gen * 1e3:.1f}", f"{ft / gen:,.0f}x", f"{one:.2f}", f"{ft / one:,.0f}x"])
    return table(["backbone", "fine-tuning, ms/device", "generation, µs/device (batch 1024)", "ratio",
                  "generation, one device alone, ms", "ratio"], rows, ["---", *["---:"] * 5])


def compressed_table(root: Path) -> str:
    c = _load(root, "docs/results/compressed_device.json")
    t, share, diff = c["test_uauc"], c["share_of_gap"], c["differences"]

    def d(name: str) -> str:
        x = diff[name]
        return bold_if(signed(x["mean"]), x["significant"]) + " " + interval(x)

    static = c["duet_static_global_head_test_uauc"]
    rows = [["cloud base (L 50, embedding 32)", f"{t['cloud base']:.4f}", d("cloud base - device base"), "100%"],
            ["device base (L 5, embedding 16)", f"{t['device base']:.4f}", "", "0%"],
            ["device fine-tune (10 steps per device)", f"{t['device fine-tune']:.4f}",
             d("device fine-tune - device base"), f"{share['device fine-tune']:.0%}"],
            ["DUET's own static part + global head", f"{static:.4f}", f"{signed(static - t['device base'])}",
             f"{(static - t['device base']) / c['device_to_cloud_gap']:.0%}"],
            ["**DUET** (device static part + generated head)", f"**{t['DUET']:.4f}**", d("DUET - device base"),
             f"**{share['DUET']:.0%}**"]]
    return table(["", "test uauc", "− device base [95%]",
                  f"share of the device-to-cloud gap ({c['device_to_cloud_gap']:.4f})"], rows)


COMPRESSED5 = "docs/results/compressed-w50/results.json"
COMPRESSED5_ROWS = (("base", "cloud model (L 50, embedding 32, 2 blocks)"),
                    ("device", "device model alone (last 5 items, embedding 16, 2 blocks)"),
                    ("device-global", "device DUET's static part + global head"),
                    ("device-duet", "**device model + DUET** (generated head)"),
                    ("duet", "cloud model + DUET"))


COMPRESSED_FILM = "docs/results/compressed-film/results.json"
FILM_VS_HEAD = "docs/results/compressed-film/film_vs_head.json"


def compressed5_table(root: Path, rel: str = COMPRESSED5, generated: str = "generated head") -> str:
    """The compressed device over 5 seeds: test uauc, the difference to the device model alone
    (paired over users and seeds, and over seed means) and the share of the device-to-cloud gap.
    `generated`: what DUET writes into the device model."""
    raw = _load(root, rel)
    summary = raw["summary"]["sasrec"]
    diffs, gap = summary["differences"], summary["gap_closed"]

    def paired(name: str) -> str:
        d = diffs.get(name)
        return "" if d is None else _diff_cell({"boot": d, "seeds": d["seed_level"]})

    def pooled(g: dict) -> str:
        return f"{g['pooled']:.0%} (mean of seeds {g['mean']:.0%})".replace("-", MINUS)

    shares = {"base": "100%", "device": "0%"}
    labels = {m: label.replace("generated head", generated) for m, label in COMPRESSED5_ROWS}
    rows = [[labels[m], _ms(summary[m]["uauc"]), paired(f"{m} - device"),
             shares.get(m) or (pooled(gap[m]) if m in gap else "")] for m in labels if m in summary]
    rows.append(["generation itself (device + DUET − its own static part + global head)", "",
                 paired("device-duet - device-global"), pooled(gap["generation"])])
    return table(["", "test uauc (5 seeds)", "− device model [paired] ; seeds [t]",
                  f"share of the gap ({gap['gap']['mean']:+.4f}), pooled"], rows)


def compressed5_cost(root: Path, rel: str = COMPRESSED5) -> str:
    """What each model costs on the device runtime (onnxruntime, one thread), mean over seeds."""
    summary = _load(root, rel)["summary"]["sasrec"]
    rows = [[label, f"{c['parameters']['mean']:,.0f}", f"{c['head_parameters']['mean']:,.0f}",
             f"{4 * c['head_parameters']['mean']:,.0f}", f"{c['onnx_weight_bytes']['mean'] / 1024:,.1f}",
             f"{c['score_ms_p50']['mean']:.3f}", f"{c['score_ms_p90']['mean']:.3f}"]
            for m, label in (("device", "device model"), ("device-duet", "device model + DUET"),
                             ("base", "cloud model")) if (c := summary.get(m, {}).get("device_cost"))]
    return table(["model", "parameters", "dynamic (head) parameters", "payload (bytes, float32)",
                  "ONNX weights (KiB)", "ms per request, p50", "p90"], rows)


def film_vs_head(root: Path) -> str:
    """The compressed device model with FiLM in its blocks against the head alone: each one's test
    uauc and share of the gap, their paired difference (same users and seeds), what validation chose."""
    c = _load(root, FILM_VS_HEAD)
    d = c["a - b"]

    def row(side: dict) -> list[str]:
        variants = list(side["variant"].values())
        frozen = sum(v.startswith("frozen") for v in variants)
        return [side["label"], f"{side['valid_uauc']:.4f}", _ms(side["uauc"]), f"{side['gap_closed']['pooled']:.0%}",
                f"{side['dynamic_parameters']:,.0f} ({4 * side['dynamic_parameters']:,.0f} B)",
                f"{frozen} of {len(variants)}"]

    rows = [row(c["a"]), row(c["b"]),
            [f"{c['a']['label']} − {c['b']['label']}", "", _diff_cell({"boot": d["boot"], "seeds": d["seed_level"]}),
             "", "", ""]]
    return table(["device model + DUET, generating", "valid uauc (mean of seeds)", f"test uauc ({len(d['seeds'])} seeds)",
                  "share of the gap, pooled",
                  "generated numbers (payload)", "static part frozen (seeds)"], rows)


def swa_table(root: Path) -> str:
    s = _load(root, "docs/results/swa_stability.json")["curves"]
    rows = []
    for lr, curves in s.items():
        for np_key, label in (("np1", "1 (no SWA)"), ("np3", "3 (SWA)")):
            c = curves[np_key]
            osc = c["oscillation"]
            rows.append([f"{float(lr):.0e}".replace("e-0", "e-"), label, f"{c['best']:.4f}",
                         f"{osc['mean_abs_change']:.4f}", str(osc["direction_changes"])])
    return table(["stage-2 lr", "N_p", "best valid uauc", "mean abs epoch-to-epoch change",
                  "direction changes (of 8 possible)"], rows, ["---", "---", "---:", "---:", "---:"])


def own_model_table(root: Path) -> str:
    """examples/own_model.py's comparison: test metric per method and both intervals of each difference."""
    data = _load(root, "docs/results/own_model/results.json")
    rows = [[name, f"{m['mean']:.4f} ± {m['std']:.4f}", "", ""] for name, m in data["methods"].items()]
    for name, d in data["differences"].items():
        p, s = d["paired"], d["seed_level"]
        text = bold_if(signed(p["mean"]), excludes_zero(p, s if s["lo"] is not None else None))
        rows.append([name.replace(" - ", " − "), text, interval(p), interval(s) if s["lo"] is not None else "(one seed)"])
    return table([f"{data['metric']} ({data['seeds']} seeds, {p['users']} devices)", "mean ± std (ddof 1)",
                  "paired interval (devices, seeds)", "seed-level t-interval"], rows)


SENSORS = "docs/results/sensors/folds.json"
SENSOR_LABELS = {"global": "global model", "finetune-5": "fine-tune, 5 labels (gradients on the device)",
                 "finetune-20": "fine-tune, 20 labels (gradients on the device)",
                 "tent": "TENT, no labels (gradients on the device)",
                 "bnstats": "batch-norm statistics of the window (no labels, no gradient)",
                 "armbn": "ARM-BN, trained for the window's statistics (no labels, no gradient)",
                 "duet-static": "DUET's own static part, global head", "duet-noswa": "DUET without SWA",
                 "duet": "**DUET (PPG+SWA)**, no labels, no gradient"}


SENSOR_ORDER = ("global", "finetune-5", "finetune-20", "tent", "bnstats", "armbn", "duet-static", "duet-noswa", "duet")


def _sensor_methods(data: dict) -> list[str]:
    return sorted(data["methods"], key=lambda m: SENSOR_ORDER.index(m) if m in SENSOR_ORDER else len(SENSOR_ORDER))


def _ms(d: dict) -> str:
    return f"{d['mean']:.4f} ± {d['std']:.4f}"


def sensors_table(root: Path) -> str:
    """Unseen and seen users' accuracy and macro-F1 per method, mean ± std (ddof 1) over the folds."""
    data = _load(root, SENSORS)
    keys = ("accuracy_unseen", "macro_f1_unseen", "accuracy_seen", "macro_f1_seen")
    rows = [[SENSOR_LABELS.get(m, m), *(_ms(data["table"][m][k]) for k in keys)] for m in _sensor_methods(data)]
    return table(["method", "**unseen** accuracy", "unseen macro-F1", "seen accuracy", "seen macro-F1"], rows)


def sensors_differences(root: Path) -> str:
    """Each difference on unseen users with both intervals; bold where both exclude 0."""
    data = _load(root, SENSORS)
    rows = []
    for name, d in data["differences"].items():
        p, s = d["paired"], d["seed_level"]
        rows.append([name.replace(" - ", " − "), bold_if(signed(p["mean"] * 100, 2), excludes_zero(p, s)),
                     interval(p, 2, 100), interval(s, 2, 100)])
    return table(["difference (unseen users, accuracy points)", "mean",
                  f"paired interval ({next(iter(data['differences'].values()))['users']} users)",
                  f"fold-level interval ({len(data['folds'])} folds)"], rows)


def sensors_activity(root: Path) -> str:
    """Unseen users' accuracy per activity (the recall of each), mean over folds."""
    data = _load(root, SENSORS)
    classes = list(next(iter(data["by_class"].values())))
    rows = [[SENSOR_LABELS.get(m, m), *(f"{data['by_class'][m][c]['mean']:.3f}" for c in classes)]
            for m in _sensor_methods(data)]
    return table(["method", *(c.replace("_", " ") for c in classes)], rows)


def sensors_window(root: Path) -> str:
    """Unseen users' accuracy against the window length W, mean ± std over folds."""
    data = _load(root, SENSORS)
    curve = data["window_curve"]
    windows = list(curve["duet"])
    rows = [[SENSOR_LABELS.get(m, m), *(_ms(curve[m][w]) for w in windows)] for m in curve]
    return table(["W", *windows], rows)


def sensors_costs(root: Path) -> str:
    """Adaptation time per device (one thread, medians per device, mean over folds)."""
    data = _load(root, SENSORS)
    rows = [[SENSOR_LABELS.get(m, m), "device, no gradient" if m in ("bnstats", "armbn") else "device, with gradients",
             f"{c['mean'] * 1e3:.2f}"] for m, c in data["costs"].items() if m != "duet"]
    names = {"single_s": "DUET from the raw window, one device alone",
             "batched_s": "DUET from the raw window, in a batch of 256 devices",
             "features_single_s": "DUET from the device's features (privacy mode), one device alone",
             "features_batched_s": "DUET from the device's features, in a batch of 256"}
    rows += [[text, "cloud, no gradient", f"{data['duet_costs'][k]['mean'] * 1e3:.3f}"]
             for k, text in names.items() if k in data["duet_costs"]]
    return table(["method", "where", "ms per device"], rows)


VARIANT_LABELS = {"head": "head only, mean encoder", "film": "head + FiLM (scale, shift) in every block",
                  "set": "head only, set encoder (samples attend to each other)"}


def variants_table(variants: dict, unit: str) -> str:
    """DUET's variants as validation saw them: how often each was chosen, its validation accuracy,
    what a device receives and the cloud's time to generate it (mean over seeds or folds)."""
    rows = [[VARIANT_LABELS.get(v, v), f"{r['chosen']}", _ms(r["valid_accuracy"]), _ms(r["valid_accuracy_unseen"]),
             f"{r['payload_bytes']['mean']:,.0f}", f"{r['generation_single_s']['mean'] * 1e3:.3f}"]
            for v, r in variants.items()]
    return table(["DUET variant", f"chosen ({unit})", "valid accuracy (all)", "valid, unseen",
                  "payload (bytes)", "generation, one device (ms)"], rows)


def digits_variants(root: Path) -> str:
    return variants_table(_load(root, DIGITS)["summary"]["variants"], "seeds")


def sensors_variants(root: Path) -> str:
    return variants_table(_load(root, SENSORS)["variants"], "folds")


WINDOW_SWEEP = "docs/results/window_sweep.json"


def window_sweep(root: Path) -> str:
    """Unseen devices' accuracy against W (validation, where W is chosen, then test; mean ± std over
    seeds), DUET minus the global model and minus its own static part with the global head on test,
    with both intervals, and what a device uploads."""
    sweep = _load(root, WINDOW_SWEEP)
    rows = []
    for w, r in sorted(sweep["by_window"].items(), key=lambda item: int(item[0])):
        acc = r["accuracy"]
        cells = [_diff_cell({"boot": d, "seeds": d["seed_level"]}, digits=2, scale=100)
                 for d in (r["differences"][f"duet - {b} (unseen)"]["test"] for b in ("global", "duet-static"))]
        rows.append([w, f"{r['stat_samples']}", _ms(acc["duet"]["valid_unseen"]), _ms(acc["duet"]["test_unseen"]),
                     _ms(acc["global"]["test_unseen"]), _ms(acc["bnstats"]["test_unseen"]),
                     _ms(acc["armbn"]["test_unseen"]), *cells,
                     f"{r['payload']['float32_bytes']['duet_upload_raw_window']:,}"])
    return table(["W", "samples bnstats / ARM-BN see", "DUET, valid", "DUET, test", "global, test",
                  "bnstats, test", "ARM-BN, test", "DUET − global, test (points) [paired] ; seeds [t]",
                  "generation itself: DUET − its static part + global head", "DUET upload (bytes)"], rows)


def defaults_sweep(root: Path) -> str:
    """The base schedule chosen on the default protocol's validation split (test never read)."""
    raw = _load(root, "docs/results/defaults_sweep.json")
    rows = []
    for name, r in raw["settings"].items():
        cells = [f"{r['lr']:g}", str(r["sampled_negatives"]), str(r["best_epoch"]), str(r["epochs_run"]),
                 f"{r['valid_uauc']:.4f}", f"{r['seconds']:.0f}"]
        rows.append([bold_if(c, name == raw["chosen"]) for c in cells])
    return table(["lr", "fresh negatives per event", "best epoch", "epochs run", "valid uauc", "train s"], rows)


BLOCKS: dict[str, Callable[[Path], str]] = {
    "sensors-table": sensors_table, "sensors-differences": sensors_differences,
    "sensors-activity": sensors_activity, "sensors-window": sensors_window, "sensors-costs": sensors_costs,
    "own-model": own_model_table,
    "digits-table": digits_table, "digits-differences": digits_differences, "digits-window": digits_window,
    "digits-costs": digits_costs, "reference-readme": reference_readme, "reference-table": reference_table,
    "default-table": default_table, "default-adaptation": default_adaptation, "compressed-table": compressed_table,
    "swa-table": swa_table, "defaults-sweep": defaults_sweep,
    "digits-variants": digits_variants, "sensors-variants": sensors_variants, "compressed5-table": compressed5_table,
    "compressed5-cost": compressed5_cost, "window-sweep": window_sweep,
    "compressed-film-table": lambda root: compressed5_table(root, COMPRESSED_FILM, "generated head + FiLM in both blocks"),
    "compressed-film-cost": lambda root: compressed5_cost(root, COMPRESSED_FILM), "film-vs-head": film_vs_head,
}


# --- checking and writing --------------------------------------------------------------------

def documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _same(a: str, b: str) -> bool:
    """Equal up to the minus sign's spelling (U+2212 or '-')."""
    return a.replace(MINUS, "-") == b.replace(MINUS, "-")


def render_inline(root: Path, spec: str, old: str) -> str:
    source, path, fmt = spec.split("|")
    value = lookup(load(root, source), path)
    new = format_value(value, fmt)
    if isinstance(value, str):  # a date or a phrase: its hyphens are not minus signs
        return new
    return new.replace("-", MINUS) if MINUS in old or "-" not in old else new


def process(root: Path, path: Path) -> tuple[str, list[str]]:
    """The file's text with every block and inline figure re-rendered, and a message per difference."""
    text, problems = path.read_text(), []
    name = path.relative_to(root)

    def block(m: re.Match) -> str:
        try:
            body = BLOCKS[m["name"]](root).rstrip("\n") + "\n"
        except Exception as exc:  # a missing file, key or renderer is a failed check, named
            problems.append(f"{name}:{_line(text, m.start())}: block {m['name']}: error: {type(exc).__name__}: {exc}")
            return m[0]
        if body != m["body"]:
            old, new = m["body"].splitlines(), body.splitlines()
            at = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))
            line = _line(text, m.start()) + 1 + at
            problems.append(f"{name}:{line}: block {m['name']}: "
                            f"{(old[at] if at < len(old) else '<end>')!r} should be "
                            f"{(new[at] if at < len(new) else '<end>')!r}")
        return f"<!-- figures:{m['name']} -->\n{body}<!-- /figures:{m['name']} -->"

    def inline(m: re.Match) -> str:
        try:
            new = render_inline(root, m["spec"], m["text"])
        except Exception as exc:
            problems.append(f"{name}:{_line(text, m.start())}: figure {m['spec']}: error: {type(exc).__name__}: {exc}")
            return m[0]
        if not _same(new, m["text"]):
            problems.append(f"{name}:{_line(text, m.start())}: figure {m['spec']}: {m['text']!r} should be {new!r}")
            return f"<!--f {m['spec']}-->{new}<!--/f-->"
        return m[0]

    text = INLINE.sub(inline, text)  # inline values hold no newline: line numbers stay those of the file
    return BLOCK.sub(block, text), problems


def write_atomic(path: Path, text: str) -> None:
    """Temp file in the same folder, then rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def count(root: Path) -> tuple[int, int]:
    texts = [p.read_text() for p in documents(root)]
    return sum(len(BLOCK.findall(t)) for t in texts), sum(len(INLINE.findall(t)) for t in texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on any difference")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    root = args.root.resolve()
    _load.cache_clear()
    failures = []
    for path in documents(root):
        new, problems = process(root, path)
        failures += problems
        if not args.check and new != path.read_text():
            write_atomic(path, new)
    blocks, figures = count(root)
    for problem in failures:
        print(problem, file=sys.stderr)
    verb = "differ" if args.check else "rewritten"
    print(f"{blocks} blocks, {figures} inline figures; {len(failures)} {verb}")
    errors = [p for p in failures if ": error: " in p]  # a figure that could not be rendered at all
    return 1 if errors or (args.check and failures) else 0


if __name__ == "__main__":
    sys.exit(main())
