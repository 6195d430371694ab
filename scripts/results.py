"""Write every results figure in the docs from the committed result files, or check them.

README.md and docs/*.md hold two kinds of generated text, so that a number in the
docs can only come from a committed JSON (under docs/results/ or benchmarks/results/):

* blocks: the lines between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``
  are ``BLOCKS[NAME](root)``, a table rendered from the JSON files;
* inline figures: ``<!--f SOURCE|PATH|FORMAT-->TEXT<!--/f-->``, where TEXT is the value at
  PATH ('/'-separated keys) in SOURCE (a file relative to the repository root, or a
  name in ``DERIVED``), written with FORMAT (see ``format_value``).

Two more rules make a figure without a source fail the check:

* every decimal number or percentage in README.md and the site's pages (docs/**/*.md, less the
  reports a tool wrote beside its JSON) sits inside a block or an inline figure; code, comments,
  link targets and a short reviewed allow-list are exempt (``unmarked``, ``ALLOWED``);
* a comparison's stored summary (means, stds, paired bootstrap and seed-level intervals) is
  recomputed from the raw values committed beside it (per-user AUCs, per-device accuracies) with
  duet.report.stats; the docs show the recomputed values and a stored value that differs fails,
  named by its key path (``_recompute``).

``python scripts/results.py`` rewrites blocks and inline figures in place (each file atomically);
``--check`` only compares and exits 1 naming file, line and figure at every difference.
It needs the project installed (numpy, scipy, duet.report.stats): run it with the venv's
python (``make results-check`` does).
"""

from __future__ import annotations

import argparse
import hashlib
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

# The problems each committed JSON's recomputation found, by file (reset by every main()), and the
# recomputations themselves by file content: the tests run the check many times over copies.
RAW_PROBLEMS: dict[str, list[str]] = {}
_RECOMPUTED: dict[tuple, tuple[object, list[str]]] = {}
# Files whose recomputation reads other files too (their content is part of the cache key).
DEPENDS = {"docs/results/compressed-film/film_vs_head.json": ("docs/results/compressed-film/results.json",
                                                              "docs/results/compressed-w50/results.json")}


@cache
def _load(root: Path, rel: str) -> object:
    """A committed JSON with its summary recomputed from its raw values (see ``_recompute``)."""
    data = (root / rel).read_bytes()
    key = (rel, *(hashlib.sha256((root / r).read_bytes() if r != rel else data).hexdigest()
                             for r in (rel, *DEPENDS.get(rel, ()))))
    if key not in _RECOMPUTED:
        raw, problems = json.loads(data), []
        mine = _recompute(root, rel, raw)
        _RECOMPUTED[key] = (raw if mine is None else _overlay(raw, mine, rel, problems), problems)
    merged, RAW_PROBLEMS[rel] = _RECOMPUTED[key]
    return merged


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


# --- summaries recomputed from the committed raw values -------------------------------------
#
# A comparison's JSON holds its raw values (per-user AUCs per run, per-device accuracies per
# seed) and a summary its writer computed from them (means, stds, paired bootstrap and
# seed-level intervals). The check recomputes each summary from the raw values with the same
# functions (duet.report.stats), renders the recomputed values, and fails naming the key
# wherever the stored summary differs. Summaries whose raw values are not committed (the
# sensors folds' fold-level intervals, the digits differences by shift type, the own-model
# example's differences, the window sweep, the one-seed compressed experiment) are read as
# stored: RAW_MISSING says so for each.

RAW_MISSING = {
    "docs/results/sensors/folds.json": "per-fold device accuracies (fold-level intervals, the tables)",
    "docs/results/digits/results.json": "each device's shift type (the differences by shift type)",
    "docs/results/own_model/results.json": "per-device scores (the differences)",
    "docs/results/window_sweep.json": "the sweep's reports",
    "docs/results/compressed_device.json": "per-user AUCs",
}
TOLERANCE = 1e-9  # relative: the same arithmetic on the same values, up to summation order


def _paired(diff) -> dict:
    from duet.report.stats import paired_bootstrap, seed_interval

    return {**paired_bootstrap(diff), "seed_level": seed_interval(diff)}


def _recommendation_summary(raw: dict) -> dict:
    """What a recommendation comparison's summary holds, from its runs: per method each test
    metric's mean and std (ddof 1) over seeds and the paired uauc - base; per stored difference
    the paired bootstrap (users and seeds, user ids in the writer's order) and the seed-level
    interval; the share of the device-to-cloud gap where the report has a compressed device."""
    import numpy as np

    from duet.report.stats import difference_matrix

    out = {}
    for backbone, seeds in raw["runs"].items():
        stored, summary = raw["summary"].get(backbone, {}), {}
        for method, stats in stored.items():
            if method in ("differences", "gap_closed"):
                continue
            entries = [s[method] for s in seeds.values() if method in s]
            mine = {}
            for metric, value in stats.items():
                if metric in ("uauc_minus_base",):
                    paired = [s[method]["test"]["uauc"] - s["base"]["test"]["uauc"] for s in seeds.values()
                              if method in s and "base" in s]
                    mine[metric] = _mean_std_np(np.array(paired))
                elif isinstance(value, dict) and set(value) == {"mean", "std"} and all(metric in e["test"] for e in entries):
                    mine[metric] = _mean_std_np(np.array([e["test"][metric] for e in entries], dtype=float))
            summary[method] = mine
        differences = {}
        for name in stored.get("differences", {}):
            a, b = name.split(" - ")
            pairs = [(s[a]["user_auc"], s[b]["user_auc"]) for s in seeds.values() if a in s and b in s]
            differences[name] = _paired(difference_matrix(pairs))
        summary["differences"] = differences
        if "gap_closed" in stored:
            summary["gap_closed"] = _gap_closed(seeds)
        out[backbone] = summary
    return out


def _mean_std_np(values) -> dict[str, float]:
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


def _gap_closed(seeds: dict) -> dict:
    """The share of the device-to-cloud gap each device row closes (duet.tasks.recommendation's
    gap_closed: per seed, mean of seeds, pooled)."""
    import numpy as np

    complete = {n: s for n, s in seeds.items() if all(m in s for m in ("base", "device", "device-duet", "device-global"))}
    gap = {n: s["base"]["test"]["uauc"] - s["device"]["test"]["uauc"] for n, s in complete.items()}
    out: dict = {"gap": {"per_seed": gap, "mean": float(np.mean(list(gap.values())))}}
    for row, (a, b) in {"device-duet": ("device-duet", "device"), "device-global": ("device-global", "device"),
                        "generation": ("device-duet", "device-global")}.items():
        diff = {n: s[a]["test"]["uauc"] - s[b]["test"]["uauc"] for n, s in complete.items()}
        per_seed = {n: diff[n] / gap[n] if gap[n] else None for n in complete}
        shares = [v for v in per_seed.values() if v is not None]
        out[row] = {"per_seed": per_seed, "mean": float(np.mean(shares)) if shares else None,
                    "pooled": float(np.mean(list(diff.values())) / out["gap"]["mean"]) if out["gap"]["mean"] else None}
    return out


def _digits_summary(raw: dict) -> dict:
    """The image comparison's seen/unseen differences from each seed's per-device test accuracy.
    A device scored on validation too is a seen one (an unseen device has one period only)."""
    from duet.report.stats import difference_matrix

    seeds = raw["seeds"]
    differences = {}
    for name in raw["summary"]["differences"]:
        a, rest = name.split(" - ")
        b, group = rest.split(" (")
        group = group.rstrip(")")
        if group not in ("seen", "unseen"):
            continue  # by shift type: the devices' shifts are not in the file
        matched = []
        for s in seeds.values():
            seen = set(s["valid_device_accuracy"][a])
            keep = (lambda d, seen=seen: d in seen) if group == "seen" else (lambda d, seen=seen: d not in seen)
            matched.append(({d: v for d, v in s["device_accuracy"][a].items() if keep(d)},
                            {d: v for d, v in s["device_accuracy"][b].items() if keep(d)}))
        differences[name] = _paired(difference_matrix(matched))
    return {"differences": differences}


def _sensors_summary(raw: dict) -> dict:
    """The sensors folds' paired intervals from each unseen test user's accuracy (users in the
    order the aggregate pooled them)."""
    import numpy as np

    from duet.report.stats import paired_bootstrap

    out = {}
    for name in raw["differences"]:
        a, b = name.split(" - ")
        users = list(raw["per_user"][a])
        out[name] = {"paired": paired_bootstrap(np.array([[raw["per_user"][a][u] - raw["per_user"][b][u]
                                                            for u in users]]))}
    return {"differences": out}


def _own_model_summary(raw: dict) -> dict:
    import numpy as np

    return {"methods": {m: _mean_std_np(np.array(v["per_seed"], dtype=float)) for m, v in raw["methods"].items()}}


def _generic_summary(raw: dict) -> dict:
    """The generic comparison's (duet.comparison.generic, e.g. examples/flights.py) methods and
    differences from its per-unit scores (`units`; null: undefined, left out and counted)."""
    import numpy as np

    from duet.comparison.engine import difference

    def units(method: str) -> list[dict]:
        return [{u: math.nan if v is None else v for u, v in seed.items()} for seed in raw["units"][method]]

    out: dict = {"methods": {m: _mean_std_np(np.array(v["per_seed"], dtype=float)) for m, v in raw["methods"].items()},
                 "differences": {}}
    for name in raw["differences"]:
        a, b = name.split(" - ")
        d = difference(list(zip(units(a), units(b), strict=True)))
        seed_level, excluded = d.pop("seed_level"), d.pop("excluded", 0)
        out["differences"][name] = {"paired": d, "seed_level": seed_level, **({"excluded": excluded} if excluded else {})}
    return out


def _film_vs_head_summary(raw: dict, root: Path) -> dict:
    """FiLM against the head alone: the paired per-user AUCs of one method in two reports, over
    the seeds both have (experiments/paired_reports.py, user ids as integers)."""
    from duet.report.stats import difference_matrix

    reports = {side: _load(root, f"docs/results/{Path(raw[side]['report']).name}/results.json") for side in "ab"}
    users = {side: {seed: {int(u): auc for u, auc in run[raw["method"]]["user_auc"].items()}
                    for seed, run in reports[side]["runs"][raw["backbone"]].items() if raw["method"] in run}
             for side in "ab"}
    seeds = sorted(set(users["a"]) & set(users["b"]))
    diff = difference_matrix([(users["a"][s], users["b"][s]) for s in seeds])
    both = _paired(diff)
    return {"a - b": {"seeds": seeds, "boot": {k: v for k, v in both.items() if k != "seed_level"},
                      "seed_level": both["seed_level"],
                      "per_seed": {s: float(row.mean()) for s, row in zip(seeds, diff, strict=True)}}}


def _recompute(root: Path, rel: str, raw: object) -> dict | None:
    """The recomputed summary of a committed JSON, as a dict to lay over it, or None when the
    file holds no raw values to recompute from."""
    if not isinstance(raw, dict):
        return None
    if "runs" in raw and "summary" in raw and any(
            "user_auc" in m for seeds in raw["runs"].values() for s in seeds.values() for m in s.values()
            if isinstance(m, dict)):
        return {"summary": _recommendation_summary(raw)}
    if rel == DIGITS:
        return {"summary": _digits_summary(raw)}
    if rel == SENSORS:
        return _sensors_summary(raw)
    if rel == OWN_MODEL:
        return _own_model_summary(raw)
    if "units" in raw and "methods" in raw and "differences" in raw:
        return _generic_summary(raw)
    if rel == FILM_VS_HEAD:
        return _film_vs_head_summary(raw, root)
    return None


def _overlay(stored: object, mine: object, path: str, problems: list[str]) -> object:
    """`stored` with every value of `mine` laid over it; a number that differs beyond TOLERANCE
    (or a flag that differs) is a problem naming its key path."""
    if isinstance(mine, dict):
        base = dict(stored) if isinstance(stored, dict) else {}
        for key, value in mine.items():
            base[key] = _overlay(base.get(key), value, f"{path}/{key}", problems)
        return base
    if isinstance(mine, list):
        return mine
    if stored is None or mine is None or isinstance(stored, str):
        if stored != mine and stored is not None:
            problems.append(f"{path}: stored {stored!r}, recomputed {mine!r}")
        return mine
    if isinstance(mine, bool) or isinstance(stored, bool):
        if bool(stored) != bool(mine):
            problems.append(f"{path}: stored {stored!r}, recomputed {mine!r}")
        return mine
    if not math.isclose(float(stored), float(mine), rel_tol=TOLERANCE, abs_tol=1e-12):
        problems.append(f"{path}: stored {stored!r}, the raw values give {mine!r}")
    return mine


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
    against_global = {}  # not in the comparison's summary: paired from the same per-device accuracies
    for method in ("bnstats", "armbn"):
        diff = _digits_summary({"seeds": raw["seeds"],
                                "summary": {"differences": {f"{method} - global (unseen)": None}}})["differences"]
        against_global[method] = diff[f"{method} - global (unseen)"]
    return {"metrics": metrics, "differences": raw["summary"]["differences"], "seed_level": seed_level,
            "against_global": against_global,
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


ML100K = "docs/results/ml-100k/results.json"
ML100K_PUBLISHED = "docs/results/ml-100k/published.json"
ML100K_CELLS = (("base", "base"), ("finetune", "fine-tune"), ("duet", "DUET"))


def _cell_minutes(wall: dict[str, float], method: str) -> float:
    """One seed's wall time to produce a method's figure, in minutes: the base run, plus fine-tuning's
    choice on validation and its test pass, or DUET's stage-2 runs (every variant tried, SWA on)."""
    seconds = wall["base"]
    if method == "finetune":
        seconds += wall["finetune-choice"] + wall["finetune"]
    elif method == "duet":
        seconds += sum(v for k, v in wall.items() if k.startswith("duet/"))
    return seconds / 60


def ml100k(root: Path) -> dict:
    """The MovieLens-100K comparison per backbone: overall AUC (the paper's metric) and the other test
    metrics as mean ± std (ddof 1) over seeds, the uauc differences with their paired bootstrap and a
    seed-level t-interval, the AUC differences with a seed-level t-interval, wall minutes per cell."""
    raw = _load(root, ML100K)
    out = {}
    for backbone, seeds in raw["runs"].items():
        runs = list(seeds.values())
        metrics = {m: {k: mean_std([r[m]["test"][k] for r in runs]) for k in runs[0][m]["test"]
                       if isinstance(runs[0][m]["test"][k], float)}
                   for m in runs[0] if isinstance(runs[0][m], dict) and "test" in runs[0][m]}
        diffs = {}
        for name, boot in raw["summary"][backbone]["differences"].items():
            a, b = name.split(" - ")
            if a not in metrics or b not in metrics:
                continue
            diffs[name] = {"boot": boot,
                           "seeds": t_interval(seed_means([(r[a]["user_auc"], r[b]["user_auc"]) for r in runs])),
                           "auc": t_interval([r[a]["test"]["auc"] - r[b]["test"]["auc"] for r in runs]),
                           "auc_mean": statistics.fmean(r[a]["test"]["auc"] - r[b]["test"]["auc"] for r in runs)}
        minutes = {m: mean_std([_cell_minutes(r["wall_s"], m) for r in runs]) for m, _ in ML100K_CELLS}
        out[backbone] = {"metrics": metrics, "differences": diffs, "minutes": minutes, "seeds": len(runs),
                         "seed_minutes": sum(sum(r["wall_s"].values()) for r in runs) / 60}
    return out


def ml100k_table(root: Path) -> str:
    """The paper's MovieLens-100K table, cell by cell: the paper's AUC, the reproduction's, duet's."""
    d, pub = ml100k(root), _load(root, ML100K_PUBLISHED)
    rows = []
    for backbone in ("din", "sasrec", "gru4rec"):
        if backbone not in d:
            continue
        for method, label in ML100K_CELLS:
            paper, repro = pub["paper"][backbone].get(method), pub["reproduction"][backbone].get(method)
            auc = d[backbone]["metrics"][method]["auc"]
            marks = ", ".join(f"{'at or above' if auc['mean'] >= ref else 'below'} the {who}" for ref, who in
                              ((paper, "paper"), (repro, "reproduction")) if ref is not None)
            rows.append([NAMES[backbone], label, f"{paper:.4f}" if paper is not None else "–",
                         f"{repro:.4f}" if repro is not None else "–", format_value(auc, "ms.4f"), marks,
                         format_value(d[backbone]["minutes"][method], "ms.1f")])
    seeds = next(iter(d.values()))["seeds"]
    return table(["backbone", "", "paper", "reproduction", f"duet ({seeds} seeds, mean ± std)", "duet is",
                  "minutes per seed (one thread)"], rows, ["---", "---", "---:", "---:", "---:", "---", "---:"])


def ml100k_metrics(root: Path) -> str:
    """Every method's test metrics on MovieLens-100K (sampled: the positive among its 99 negatives;
    full: against the whole catalogue), mean ± std over seeds."""
    labels = (("pop", "popularity"), ("base", "base (global model)"), ("finetune", "fine-tune (chosen on valid)"),
              ("duet-global", "DUET's static part, global head"), ("duet-noswa", "DUET without SWA"),
              ("duet", "**DUET (PPG+SWA)**"))
    keys = ("auc", "uauc", "ndcg@10", "hit@10", "full_ndcg@10", "full_recall@10")
    rows = []
    for backbone, b in ml100k(root).items():
        rows += [[NAMES[backbone], label] + [format_value(b["metrics"][m][k], "ms.4f") if k in b["metrics"][m] else "–"
                                             for k in keys]
                 for m, label in labels if m in b["metrics"]]
    return table(["backbone", "method", "AUC", "uAUC", "NDCG@10 (sampled)", "HR@10 (sampled)", "NDCG@10 (full)",
                  "recall@10 (full)"], rows, ["---", "---"] + ["---:"] * len(keys))


ML100K_DIFFERENCE_LABELS = {"duet - base": "DUET − base",
                            "duet - duet-global": "DUET − its static part with the global head (generation's share)",
                            "duet-global - base": "DUET's static part with the global head − base",
                            "duet - finetune": "DUET − fine-tune", "finetune - base": "fine-tune − base"}


def ml100k_differences(root: Path) -> str:
    """DUET against base and against its own static part with the global head (generation's own share):
    uauc with the paired bootstrap (users, seeds) and the seed-level interval; AUC with the seed-level one."""
    rows = []
    for backbone, b in ml100k(root).items():
        for name in ML100K_DIFFERENCE_LABELS:
            if name not in b["differences"]:
                continue
            d = b["differences"][name]
            auc = d["auc"]
            rows.append([NAMES[backbone], ML100K_DIFFERENCE_LABELS[name], _diff_cell(d),
                         bold_if(f"{signed(d['auc_mean'])} {interval(auc)}", excludes_zero(auc))])
    return table(["backbone", "difference", "uAUC: mean [paired bootstrap]; seeds [t-interval]",
                  "AUC: mean [t-interval over seeds]"], rows)


DERIVED: dict[str, Callable[[Path], object]] = {
    "digits": digits,
    "reference": reference,
    "quick": lambda root: recommendation(root, "docs/results/quick/results.json")["sasrec"],
    "default": lambda root: recommendation(root, "docs/results/results.json"),
    "shift": lambda root: recommendation(root, "docs/results/shift-sasrec/results.json")["sasrec"],
    "policy": lambda root: request_policy(root, "docs/results/request_policy.json"),
    "ml100k": ml100k,
    "shift_gap": lambda root: shift_shares(root),
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


OWN_MODEL = "docs/results/own_model/results.json"


def own_model_table(root: Path, rel: str = OWN_MODEL, digits: int = 4) -> str:
    """A generic comparison (examples/own_model.py, examples/flights.py): test metric per method and both
    intervals of each difference; how many devices a difference left out (metric undefined), if any."""
    data = _load(root, rel)
    rows = [[name, f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}", "", ""] for name, m in data["methods"].items()]
    for name, d in data["differences"].items():
        p, s = d["paired"], d["seed_level"]
        text = bold_if(signed(p["mean"], digits), excludes_zero(p, s if s["lo"] is not None else None))
        left = f" ({d['excluded']} devices left out: metric undefined)" if d.get("excluded") else ""
        rows.append([name.replace(" - ", " − ") + left, text, interval(p, digits),
                     interval(s, digits) if s["lo"] is not None else "(one seed)"])
    lower = "" if data.get("higher_is_better", True) else ", lower is better"
    return table([f"{data['metric']} ({data['seeds']} seeds, {p['users']} devices{lower})", "mean ± std (ddof 1)",
                  "paired interval (devices, seeds)", "seed-level t-interval"], rows)


FLIGHTS = "docs/results/flights/results.json"


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


SHIFT = "docs/results/shift-sasrec/results.json"
SHIFT_MANIFEST = "docs/results/shift-sasrec/dataset_manifest.json"  # `duet prepare --source synthetic-shift`'s manifest


def shift_table(root: Path) -> str:
    """The synthetic-drift comparison against the dataset's known optimum: test uauc (mean ± std
    over seeds), the paired difference to base, and its share of the base-to-oracle and
    base-to-observer gaps (the interval divided by the gap; the oracle and observer from the
    dataset's manifest, which `duet prepare` rewrites identically in seconds)."""
    d, manifest = recommendation(root, SHIFT)["sasrec"], _load(root, SHIFT_MANIFEST)
    base = d["uauc"]["base"]["mean"]
    oracle, observer = manifest["oracle_uauc"] - base, manifest["observer_uauc"] - base

    def share(x: float, gap: float) -> str:
        return f"{x / gap:.0%}"

    rows = [["oracle (true click model)", f"{manifest['oracle_uauc']:.4f}", "", "100%", ""],
            ["Bayes observer of the clicks", f"{manifest['observer_uauc']:.4f}", "", share(observer, oracle), "100%"],
            ["popularity", f"{d['uauc']['pop']['mean']:.4f}", "", "", ""],
            ["base (global SASRec)", _ms(d["uauc"]["base"]), "", "0%", "0%"]]
    for method, label in (("finetune", "fine-tune (10 steps per device)"), ("duet-noswa", "DUET w/o SWA"),
                          ("duet", "DUET (PPG+SWA)")):
        diff = d["differences"].get(f"{method} - base")
        mean = d["uauc"][method]["mean"] - base
        if diff is None:
            rows.append([label, _ms(d["uauc"][method]), signed(mean), share(mean, oracle), share(mean, observer)])
            continue
        boot = diff["boot"]
        flag = excludes_zero(boot)
        rows.append([label, _ms(d["uauc"][method]), bold_if(signed(boot["mean"]), flag) + " " + interval(boot),
                     bold_if(share(boot["mean"], oracle), flag) + f" [{share(boot['lo'], oracle)}, {share(boot['hi'], oracle)}]",
                     share(boot["mean"], observer)])
    return table(["", f"test uauc ({d['seeds']} seeds)", "− base, paired [95%]",
                  f"share of the base-to-oracle gap ({oracle:.4f})", f"share of the base-to-observer gap ({observer:.4f})"],
                 rows)


def shift_shares(root: Path) -> dict:
    """Each method's share of the synthetic drift's base-to-oracle gap: the paired difference to
    base (mean and bootstrap bounds) divided by the gap (what shift_table prints)."""
    d, manifest = recommendation(root, SHIFT)["sasrec"], _load(root, SHIFT_MANIFEST)
    gap = manifest["oracle_uauc"] - d["uauc"]["base"]["mean"]
    return {name.split(" - ")[0]: {k: diff["boot"][k] / gap for k in ("mean", "lo", "hi")}
            for name, diff in d["differences"].items() if name.endswith(" - base")}


def shift_diagnosis(root: Path) -> str:
    """Test uauc by clicks since the user's last profile switch (seed 0's runs)."""
    raw = _load(root, "docs/results/shift_diagnosis.json")
    bins = list(raw["share_of_test_events"])
    rows = [["share of test events", *(f"{raw['share_of_test_events'][b]:.0%}" for b in bins)]]
    for key, label in (("oracle", "oracle"), ("observer", "Bayes observer"), ("base", "base"),
                       ("duet/frozen-rankfull-dropout0.3", "DUET"), ("finetune", "fine-tune"), ("pop", "popularity")):
        rows.append([label, *(f"{raw['uauc'][key][b]:.4f}" for b in bins)])
    return table(["clicks since the switch", *bins], rows)


def cold_table(root: Path, rel: str = "docs/results/cutoff-sasrec/results.json") -> str:
    """Test uauc by the number of items the device had seen before the event."""
    summary = _load(root, rel)["summary"]["sasrec"]
    bins = list(summary["base"]["by_seen"])
    head = [f"{b} ({summary['base']['by_seen'][b]['events']:,} events)" for b in bins]
    rows = [[label, f"{summary[m]['uauc']['mean']:.4f}", *(f"{summary[m]['by_seen'][b]['uauc']:.4f}" for b in bins)]
            for m, label in (("pop", "popularity"), ("base", "base"), ("duet-noswa", "DUET w/o SWA"),
                             ("duet", "DUET (PPG+SWA)")) if m in summary]
    return table(["", "all", *head], rows)


def reference_diagnosis(root: Path) -> str:
    """The reference-protocol diagnosis (SASRec, seed 0; test read for every variant)."""
    raw = _load(root, "docs/results/reference_diagnosis.json")
    what = {"old-defaults": "the defaults before the study: lr 1e-3, patience 3",
            "lr3e-3-patience10": "lr 3e-3, patience 10",
            "negatives4": "lr 3e-3, patience 10, 4 fresh negatives per event every epoch",
            "defaults": "today's defaults: 4 fresh negatives, lr 3e-3, patience 5",
            "refit": "lr3e-3-patience10's epochs, retrained on train + valid (valid then means nothing)"}
    rows = [[name, what.get(name, ""), str(r["seed0"]["best_epoch"]), f"{r['seed0']['valid_uauc']:.4f}",
             f"{r['seed0']['test_uauc']:.4f}", f"{r['seed0']['seconds']:.0f}"] for name, r in raw.items()]
    return table(["variant", "what", "best epoch", "valid uauc", "test uauc", "train s"], rows)


POLICY_RUNS = (("compressed device (W 50)", "docs/results/request_policy.json", "docs/results/request_policy_recent5.json"),
               ("synthetic-shift SASRec, seed 1 (W 10)", "docs/results/request_policy_shift_sasrec.json",
                "docs/results/request_policy_shift_sasrec_recent5.json"))


def request_policy_table(root: Path) -> str:
    """Per run: asking always, and each policy's setting chosen on validation (the fewest requests
    within the tolerance of always on valid), read on test."""
    rows = []
    for label, whole, recent in POLICY_RUNS:
        a, b = _load(root, whole), _load(root, recent)
        always = next(r for r in a["test"] if r["policy"] == "always")
        rows.append([label, "always", "100%", f"{always['uauc']:.4f}", ""])
        for name, sweep, kind in (("every", a, "every"), ("drift, whole window", a, "drift"),
                                  ("drift, newest 5 items", b, "drift")):
            chosen = sweep["chosen"][kind]
            rows.append(["", f"{name}: {chosen['setting']}", f"{chosen['test']['fraction']:.1%}",
                         f"{chosen['test']['uauc']:.4f}", signed(chosen["test"]["uauc"] - always["uauc"])])
        rows.append(["", "global head (never asks)", "", f"{a['global_head_test_uauc']:.4f}",
                     signed(a["global_head_test_uauc"] - always["uauc"])])
    return table(["run", "policy (setting chosen on valid)", "share of always's requests (test)", "test uauc",
                  "− always"], rows)


def policy_simulate(root: Path) -> str:
    """The request policies through the real service and device runtimes (duet simulate)."""
    raw = _load(root, "docs/results/request_policy_simulate.json")
    rows = [[name, f"{r['requests']:,}", f"{r['request_fraction']:.0%}", f"{r['bytes_per_device']:,.0f}",
             f"{r['metrics']['device']['uauc']:.4f}"] for name, r in raw.items()]
    return table(["policy", "requests", "of always's", "bytes received per device", "device uauc"], rows)


def _headline_rows(root: Path, prefix: str) -> list[list[str]]:
    """One row per task: the global model, DUET, and DUET minus the global model with both intervals."""
    ref, dig = reference(root), digits(root)
    sensors = _load(root, SENSORS)
    comp = _load(root, COMPRESSED5)["summary"]["sasrec"]
    own = _load(root, OWN_MODEL)

    def link(text: str, page: str) -> str:
        return f"[{text}]({prefix}{page})"

    def both(boot: dict, seed: dict | None, scale: float = 1.0, digits_: int = 4) -> str:
        return _diff_cell({"boot": boot, "seeds": seed}, digits_, scale)

    din = ml100k(root)["din"]
    rows = [[link(f"recommendation, MovieLens-100K, DIN (the paper's table, {din['seeds']} seeds)",
                  "recommendation.md#movielens-100k-the-papers-table"), "uauc",
             _ms(din["metrics"]["base"]["uauc"]), _ms(din["metrics"]["duet"]["uauc"]),
             _diff_cell(din["differences"]["duet - base"])]]
    for b in ("sasrec", "din"):
        d = ref[b]
        rows.append([link(f"recommendation, MovieLens-small, the published code's protocol, {NAMES[b]} "
                          f"({d['seeds']} seeds)", "recommendation.md"), "uauc", _ms(d["uauc"]["base"]),
                     _ms(d["uauc"]["duet"]), _diff_cell(d["differences"]["duet - base"])])
    gap = comp["differences"]["device-duet - device"]
    rows.append([link("recommendation, a compressed device model (synthetic drift, 5 seeds)", "recommendation.md"),
                 "uauc", _ms(comp["device"]["uauc"]) + " (device model alone)", _ms(comp["device-duet"]["uauc"]),
                 both(gap, gap["seed_level"])])
    rows.append([link(f"images, unseen devices (digits fleet, {dig['seeds']} seeds)", "images.md"),
                 "accuracy (points)", _ms(dig["metrics"]["global"]["accuracy_unseen"]),
                 _ms(dig["metrics"]["duet"]["accuracy_unseen"]),
                 both(dig["differences"]["duet - global (unseen)"], dig["seed_level"]["duet - global (unseen)"], 100, 2)])
    s = sensors["differences"]["duet - global"]
    rows.append([link(f"sensors, unseen users (UCI HAPT, {len(sensors['folds'])} folds)", "sensors.md"),
                 "accuracy (points)", _ms(sensors["table"]["global"]["accuracy_unseen"]),
                 _ms(sensors["table"]["duet"]["accuracy_unseen"]), both(s["paired"], s["seed_level"], 100, 2)])
    o = own["differences"]["duet - base"]
    rows.append([link(f"your own model: the example ({own['seeds']} seeds)", "own.md"), own["metric"],
                 _ms(own["methods"]["base"]), _ms(own["methods"]["duet"]), both(o["paired"], o["seed_level"])])
    return rows


def headline(root: Path, prefix: str = "") -> str:
    return table(["task (its results page)", "metric", "global model", "DUET (PPG+SWA)",
                  "DUET − global [95% paired]; seeds [t]"], _headline_rows(root, prefix))


SERVE = "benchmarks/results/serve.json"


def serve_http(root: Path) -> str:
    """`POST /v1/parameters` (fp16 answers) per service mode and concurrency (benchmarks/serve.py)."""
    rows = []
    for r in _load(root, SERVE)["http"]:
        mode = (f"micro-batching (max_batch {r['max_batch']})" if r["batching"] == "batching"
                else f"no batching (max_batch {r['max_batch']})")
        rows.append([mode, str(r["concurrency"]), f"{r['throughput_per_s']:,.0f}", f"{r['p50_ms']:.2f}",
                     f"{r['p99_ms']:.2f}", f"{r['mean_batch']:.1f}", f"{r['server_cpu_us_per_answer']:.0f} us",
                     f"{r['other_cpu_cores']:.1f}"])
    return table(["service", "concurrency", "answers/s", "p50 ms", "p99 ms", "mean batch", "server CPU per answer",
                  "other jobs' cores"], rows, ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"])


def simulate_agreement(root: Path) -> str:
    """The MovieLens replay through service and device runtimes, fp32 and fp16."""
    runs = {d: _load(root, f"benchmarks/results/simulate_movielens_{d}.json") for d in ("fp32", "fp16")}

    def cells(f) -> list[str]:
        return [f(runs["fp32"]), f(runs["fp16"])]

    rows = [["max abs device logit − offline logit", *cells(lambda r: f"{r['max_abs_logit_diff']:.1e}")],
            ["uauc on the devices", *cells(lambda r: f"{r['metrics']['device']['uauc']:.6f}")],
            ["uauc offline", *cells(lambda r: f"{r['metrics']['offline']['uauc']:.6f}")],
            ["auc, device − offline", *cells(lambda r: f"{r['metrics']['diff']['auc']:+.1e}")],
            ["parameters from the service", *cells(lambda r: f"{r['sources']['service']:,} of {r['events']:,}")],
            ["answer size (bytes)", *cells(lambda r: f"{r['answer_bytes']:,}")],
            ["replay rate (events/s)", *cells(lambda r: f"{r['events_per_second']:,.0f}")]]
    return table(["", "fp32", "fp16"], rows, ["---", "---:", "---:"])


def replicas_table(root: Path) -> str:
    """Throughput at concurrency 64 with the rate limit in memory or shared through Redis."""
    t = _load(root, "benchmarks/results/replicas.json")["throughput"]
    base = t["mean_throughput_per_s"]["one_replica_memory"]
    rows = [[label, f"{t['mean_throughput_per_s'][k]:,.0f}",
             " / ".join(f"{r['throughput_per_s']:,.0f}" for r in t["rounds"][k]),
             f"{t['mean_throughput_per_s'][k] / base:.2f}"]
            for k, label in (("one_replica_memory", "one replica, 2 workers, memory"),
                             ("one_replica_redis", "one replica, 2 workers, Redis"),
                             ("two_replicas_memory", "two replicas of 2 workers, memory"),
                             ("two_replicas_redis", "two replicas of 2 workers, Redis"))]
    return table(["setup", "answers/s, mean", "rounds", "vs one replica without Redis"], rows,
                 ["---", "---:", "---:", "---:"])


def replicas_limit(root: Path) -> str:
    """One token offered more than its limit across two replicas of two workers each."""
    limit = _load(root, "benchmarks/results/replicas.json")["limit"]
    rows = [[f"`{name}`", f"{r['sent']:,}", f"{r['answered']:,}", f"{r['accepted']:,}", f"{r['allowed_total']:,.0f}",
             f"{r['most_accepted_in_one_second']:,}"] for name, r in limit.items()]
    return table(["store", "sent", "answered", "accepted", "allowed", "most accepted in any second"], rows)


def bulk_table(root: Path) -> str:
    """duet generate, one thread: the forward alone (frozen against folded decoders) and end to end."""
    raw = _load(root, "benchmarks/results/bulk_generate.json")
    alone = raw["alone"]["devices_per_s"]
    rows = [["generator forward alone, frozen decoders", f"{alone['frozen']:,.0f}", "", "", f"{raw['load_before']:.1f}"],
            ["generator forward alone, folded decoders", f"{alone['folded']:,.0f}", "", "", f"{raw['load_before']:.1f}"]]
    for r in raw["end_to_end"]:
        rows.append([f"end to end, {r['dtype']}, to `{r['dir']}`", f"{r['devices_per_s']:,.0f}",
                     f"{r['seconds']:.1f} ({r['generate_seconds']:.1f} generating)", f"{r['bytes'] / 1e6:,.0f} MB",
                     f"{r['load_before']:.1f}"])
    return table(["what", "devices/s", "seconds", "file", "load average before"], rows,
                  ["---", "---:", "---:", "---:", "---:"])


def scale_table(root: Path) -> str:
    """benchmarks/scale.py at 1x, 10x and 100x MovieLens-small (one thread)."""
    results = _load(root, "docs/results/scale.json")["results"]

    def cell(r: dict, phase: str, f) -> str:
        return f(r[phase]) if phase in r and r[phase] else "not run"

    rows = [["raw interactions", *(f"{r['dataset']['interactions']:,}" for r in results)],
            ["users / items (after 5-core)", *(f"{r['dataset']['users']:,} / {r['dataset']['items']:,}" for r in results)],
            ["train records", *(f"{r['dataset']['train_records']:,}" for r in results)],
            ["prepare: wall s / peak RSS MiB", *(cell(r, "prepare", lambda p: f"{p['seconds']:.1f} / {p['peak_rss_mib']:,.0f}")
                                                 for r in results)],
            ["one SASRec epoch: s / records/s / peak RSS MiB",
             *(cell(r, "train", lambda p: f"{p['epoch_seconds']:.0f} / {p['records_per_s']:,.0f} / {p['peak_rss_mib']:,.0f}")
               for r in results)],
            ["evaluate (test split): wall s / peak RSS MiB",
             *(cell(r, "evaluate", lambda p: f"{p['seconds']:.1f} / {p['peak_rss_mib']:,.0f}") for r in results)],
            ["bulk generation (fp32 to disk): wall s / devices/s / peak RSS MiB",
             *(cell(r, "generate", lambda p: f"{p['seconds']:.1f} / {p['devices_per_s']:,.0f} / {p['peak_rss_mib']:,.0f}")
               for r in results)],
            ["load average before prepare", *(cell(r, "prepare", lambda p: f"{p['load_before']:.1f}") for r in results)]]
    return table(["", *(f"{r['scale']:g}x" for r in results)], rows, ["---"] + ["---:"] * len(results))


def train_speed_table(root: Path, rel: str = "benchmarks/results/train_speed_default.json") -> str:
    """benchmarks/train_speed.py: records per CPU-second of one thread, the tree before and after (best
    of the rounds), wall-clock records/s in brackets."""
    raw = _load(root, rel)
    rows = []
    for name, b in raw["backbones"].items():
        rounds = b.get("rounds", {})
        old = max((r["train_records_per_cpu_s"] for r in rounds.get("old", [])), default=None)
        rows.append([f"{name} train", f"{old:,.0f}" if old else "",
                     f"{b['train_records_per_cpu_s']:,.0f} ({b['train_records_per_s']:,.0f})",
                     f"{b['train_records_per_cpu_s'] / old:.2f}" if old else ""])
    return table(["variant", "before", "after", "after / before"], rows, ["---", "---:", "---:", "---:"])


BLOCKS: dict[str, Callable[[Path], str]] = {
    "sensors-table": sensors_table, "sensors-differences": sensors_differences,
    "sensors-activity": sensors_activity, "sensors-window": sensors_window, "sensors-costs": sensors_costs,
    "own-model": own_model_table,
    "flights": lambda root: own_model_table(root, FLIGHTS, digits=2),
    "digits-table": digits_table, "digits-differences": digits_differences, "digits-window": digits_window,
    "digits-costs": digits_costs, "reference-readme": reference_readme, "reference-table": reference_table,
    "default-table": default_table, "default-adaptation": default_adaptation, "compressed-table": compressed_table,
    "swa-table": swa_table, "defaults-sweep": defaults_sweep,
    "digits-variants": digits_variants, "sensors-variants": sensors_variants, "compressed5-table": compressed5_table,
    "compressed5-cost": compressed5_cost, "window-sweep": window_sweep,
    "compressed-film-table": lambda root: compressed5_table(root, COMPRESSED_FILM, "generated head + FiLM in both blocks"),
    "compressed-film-cost": lambda root: compressed5_cost(root, COMPRESSED_FILM), "film-vs-head": film_vs_head,
    "shift-table": shift_table, "shift-diagnosis": shift_diagnosis, "cold-table": cold_table,
    "reference-diagnosis": reference_diagnosis, "request-policy": request_policy_table,
    "policy-simulate": policy_simulate, "headline": headline,
    "headline-readme": lambda root: headline(root, "docs/results/"),
    "serve-http": serve_http, "simulate-agreement": simulate_agreement, "replicas-table": replicas_table,
    "replicas-limit": replicas_limit, "bulk-table": bulk_table, "scale-table": scale_table,
    "train-speed-default": train_speed_table,
    "train-speed-reference": lambda root: train_speed_table(root, "benchmarks/results/train_speed_reference.json"),
    "train-speed-reference-sampled": lambda root: train_speed_table(root, "benchmarks/results/train_speed_reference_sampled.json"),
    "train-speed-ml100k": lambda root: train_speed_table(root, "benchmarks/results/train_speed_ml100k.json"),
    "ml100k-table": ml100k_table, "ml100k-metrics": ml100k_metrics, "ml100k-differences": ml100k_differences,
}


# --- figures outside a marker ----------------------------------------------------------------
#
# Every decimal number (0.91, 1,234.5, 2.0x, 3.8e-06) and every percentage (27%, 27 %) in a
# page must sit inside a block or an inline figure, so that it comes from a committed file.
# Not figures, and so not checked:
# * code: inline code spans and fenced blocks whose language is a command or source language
#   (FENCE_LANGS): settings typed by the reader (`--ratios 0.8,0.1,0.1`, `lr=3e-3`). A fence of
#   any other kind (none, text, console, json) shows output and is checked like prose, so a
#   measured result never hides in an output sample: it goes in prose or a table under a marker;
# * HTML comments (markers included) and link targets;
# * dotted versions of three parts or more (2.13.0, 127.0.0.1);
# * ALLOWED: the short, reviewed list below, each entry with why it is not a measured figure.

NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
FIGURE = re.compile(rf"(?<![\w.,]){NUMBER}(?:\.\d+)?(?:e[-+]?\d+)?\s?%"  # 27%, 27 %, 0.5%
                    rf"|(?<![\w.,]){NUMBER}\.\d+(?:e[-+]?\d+)?(?!\d|\.\d)"  # 0.91, 1,234.5, 2.0 of 2.0x
                    r"|(?<![\w.,])\d+e[-+]?\d+(?!\d)")  # 1e-6
FENCE = re.compile(r"^(?P<fence>```+|~~~+)(?P<lang>[^\n]*)\n.*?^(?P=fence)[ \t]*$", re.M | re.S)
FENCE_LANGS = {"bash", "sh", "shell", "python", "toml", "yaml", "ini"}
CODE_SPAN = re.compile(r"(?P<ticks>`+)(?!`)(?:(?!\n\n).)+?(?<!`)(?P=ticks)(?!`)", re.S)  # may wrap, not span a paragraph
COMMENT = re.compile(r"<!--.*?-->", re.S)
LINK_TARGET = re.compile(r"\]\([^)\s]*(?:\s+\"[^\"]*\")?\)|<?https?://[^\s>)]+>?")
ALLOWED = [
    (re.compile(r"(?:Python|FastAPI|uvicorn|onnxruntime|torch|numpy|pandas|recbole|redis-server|typer) \d+\.\d+"),
     "a package's version"),
    (re.compile(r"95 ?%(?=\s+(?:paired|bootstrap|t-interval|interval|confidence|quantile|level))"),
     "the level of every interval (duet.report.stats.LEVEL), not a result"),
    (re.compile(r"CC BY 4\.0"), "a licence's name"),
    (re.compile(r"pandas-0\.14"), "the pandas version that wrote the HAPT file"),
    (re.compile(r"HTTP/1\.1"), "a protocol's name"),
]


def _blank(match: re.Match) -> str:
    """The matched text as spaces, newlines kept: what is masked keeps every line number."""
    return re.sub(r"[^\n]", " ", match[0])


def _fence(match: re.Match) -> str:
    """A command or source fence blanked whole; any other fence (output) keeps its body, checked as
    prose, with only its delimiter lines blanked (so that they pair with no inline backtick)."""
    if match["lang"].strip().split(" ")[0] in FENCE_LANGS:
        return _blank(match)
    first, *body, last = match[0].split("\n")
    return "\n".join([" " * len(first), *body, " " * len(last)])


def unmarked(text: str) -> list[tuple[int, str, str]]:
    """(line, figure, the line's text) for every figure outside a marker, code, comment or link."""
    masked = BLOCK.sub(_blank, text)
    masked = INLINE.sub(_blank, masked)
    masked = COMMENT.sub(_blank, masked)
    masked = FENCE.sub(_fence, masked)
    masked = CODE_SPAN.sub(_blank, masked)
    masked = LINK_TARGET.sub(_blank, masked)
    for pattern, _why in ALLOWED:
        masked = pattern.sub(_blank, masked)
    lines = text.splitlines()
    return [(_line(masked, m.start()), m[0], lines[_line(masked, m.start()) - 1].strip())
            for m in FIGURE.finditer(masked)]


# --- checking and writing --------------------------------------------------------------------

def is_report(path: Path) -> bool:
    """A report a tool wrote beside the JSON it wrote (results.md by results.json, folds.md by
    folds.json): data like its JSON, neither a page of the site (mkdocs.yml excludes it) nor checked."""
    return path.with_suffix(".json").is_file()


def documents(root: Path) -> list[Path]:
    """README.md and every page of the site."""
    return [root / "README.md", *sorted(p for p in (root / "docs").rglob("*.md") if not is_report(p))]


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

    problems += [f"{name}:{line}: figure {figure!r} outside a marker: {context[:120]}"
                 for line, figure, context in unmarked(text)]
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
    RAW_PROBLEMS.clear()
    failures = []
    for path in documents(root):
        new, problems = process(root, path)
        failures += problems
        if not args.check and new != path.read_text():
            write_atomic(path, new)
    for path in sorted((root / "docs" / "results").rglob("*.json")):  # every summary, quoted or not
        try:
            _load(root, str(path.relative_to(root)))
        except Exception as exc:  # a file the recomputation cannot read is a failed check, named
            failures.append(f"{path.relative_to(root)}: error: recomputing its summary: {type(exc).__name__}: {exc}")
    failures += [f"{rel}: error: {p}" for rel, problems in sorted(RAW_PROBLEMS.items()) for p in problems]
    blocks, figures = count(root)
    for problem in failures:
        print(problem, file=sys.stderr)
    verb = "differ" if args.check else "rewritten"
    print(f"{blocks} blocks, {figures} inline figures; {len(failures)} {verb}")
    # a figure that could not be rendered, an unmarked figure or a stored summary the raw values contradict
    errors = [p for p in failures if ": error: " in p or "outside a marker" in p]
    return 1 if errors or (args.check and failures) else 0


if __name__ == "__main__":
    sys.exit(main())
