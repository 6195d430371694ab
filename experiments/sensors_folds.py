"""The sensor task over its 5 folds of users: every user is unseen (never trained on) in exactly
one fold, so the 5 comparisons together score every method on every user as a new device.

    bash experiments/sensors_folds.sh            # prepares the 5 folds and runs `duet compare` on each
    python experiments/sensors_folds.py reports/hapt --out docs/results/sensors/folds

Reads each fold's `duet compare` report (reports/hapt/fold-S/results.json) and its dataset's
manifest, and writes OUT.json and OUT.md: accuracy and macro-F1 on unseen and seen users (mean
and ddof-1 std over folds), per activity on unseen users, accuracy against W, adaptation cost,
and each difference with two intervals: a paired bootstrap over the unseen test users of all folds
(each fold trained with its own seed, so resampling users resamples seeds too) and a t-interval
over the 5 fold means. Every choice inside a fold was made on that fold's validation users.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from duet.atomic import write_bytes, write_json
from duet.report.stats import paired_bootstrap, seed_interval
from duet.tasks.images.compare import variant_lines

PAIRS = (("duet", "global"), ("duet", "bnstats"), ("duet", "armbn"), ("duet", "duet-static"), ("duet", "duet-noswa"),
         ("duet", "tent"), ("duet", "finetune-20"), ("duet", "finetune-5"), ("duet-static", "global"),
         ("bnstats", "global"), ("armbn", "global"), ("armbn", "bnstats"))


def load_folds(reports: Path) -> list[dict]:
    """Each fold's results (its single training seed) and its devices' manifest records."""
    folds = []
    for report in sorted(reports.glob("fold-*")):
        results = json.loads((report / "results.json").read_text())
        config = json.loads((report / "compare_config.json").read_text())
        manifest = json.loads((Path(config["data"]) / "manifest.json").read_text())
        (seed,) = results["seeds"].values()
        folds.append({"fold": manifest["protocol"]["fold"], "seed": seed, "devices": manifest["devices"],
                      "classes": manifest["class_names"], "choices": results["choices"]})
    if len(folds) < 2:
        raise SystemExit(f"{reports}: need the fold-* reports of at least 2 folds, found {len(folds)}")
    return folds


def unseen_test_users(fold: dict) -> dict[str, int]:
    """{device id: user} of a fold's unseen users scored on test."""
    return {str(d["id"]): d["user"] for d in fold["devices"] if d["kind"] == "unseen" and d["split"] == "test"}


def mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def summarize(folds: list[dict]) -> dict:
    methods = [m for m in folds[0]["seed"]["metrics"] if all(m in f["seed"]["metrics"] for f in folds)]
    keys = ("accuracy_unseen", "macro_f1_unseen", "accuracy_seen", "macro_f1_seen")
    table = {m: {k: mean_std([f["seed"]["metrics"][m][k] for f in folds]) for k in keys} for m in methods}
    classes = folds[0]["classes"]
    by_class = {m: {c: mean_std([f["seed"]["metrics"][m][f"accuracy_unseen_{c}"] for f in folds]) for c in classes}
                for m in methods}
    per_user = {m: {} for m in methods}
    differences = {}
    for a, b in PAIRS:
        if a not in methods or b not in methods:
            continue
        diffs, fold_means = [], []
        for f in folds:
            users = unseen_test_users(f)
            d = [f["seed"]["device_accuracy"][a][i] - f["seed"]["device_accuracy"][b][i] for i in users]
            diffs += d
            fold_means.append(d)
        matrix = np.array(diffs)[None, :]
        differences[f"{a} - {b}"] = {
            "paired": paired_bootstrap(matrix),
            "seed_level": seed_interval(np.array([np.mean(d) for d in fold_means])[:, None]),
            "users": len(diffs)}
    for f in folds:
        for i, user in unseen_test_users(f).items():
            for m in methods:
                per_user[m][str(user)] = f["seed"]["device_accuracy"][m][i]
    curve = {}
    for name in ("duet", "duet-noswa"):
        windows = sorted(int(w) for w in folds[0]["seed"]["window_curve"][name])
        curve[name] = {str(w): mean_std([f["seed"]["window_curve"][name][str(w)]["accuracy_unseen"] for f in folds])
                       for w in windows}
    costs = {m: mean_std([f["seed"]["costs"][m].get("median_s", f["seed"]["costs"][m].get("single_s"))
                          for f in folds]) for m in folds[0]["seed"]["costs"]}
    duet_costs = {k: mean_std([f["seed"]["costs"]["duet"][k] for f in folds])
                  for k in folds[0]["seed"]["costs"]["duet"]}
    return {"folds": [f["fold"] for f in folds], "methods": methods, "table": table, "by_class": by_class,
            "differences": differences, "per_user": per_user, "window_curve": curve, "costs": costs,
            "duet_costs": duet_costs, "choices": {str(f["fold"]): f["choices"] for f in folds},
            "variants": variants(folds)}


def variants(folds: list[dict]) -> dict:
    """Per DUET variant tried in every fold: how many folds chose it on validation, and its
    validation accuracy, payload and generation time (mean, std over folds); empty for reports
    from before variants."""
    if not all("variants" in f["seed"] for f in folds):
        return {}
    chosen = [f["choices"]["duet"][0]["variant"] for f in folds]
    names = [v for v in folds[0]["seed"]["variants"] if all(v in f["seed"]["variants"] for f in folds)]
    return {v: {"chosen": chosen.count(v), **{k: mean_std([f["seed"]["variants"][v][k] for f in folds])
                                             for k in folds[0]["seed"]["variants"][v]}} for v in names}


def render(summary: dict) -> str:
    n = len(summary["folds"])
    lines = [f"# Sensors (UCI HAPT): {n} folds of users, every user unseen once", "",
             f"Test accuracy and macro-F1, mean ± std (ddof 1) over the {n} folds (one training seed each).", "",
             "| method | unseen accuracy | unseen macro-F1 | seen accuracy | seen macro-F1 |", "|---|---|---|---|---|"]
    for m in summary["methods"]:
        row = summary["table"][m]
        lines.append(f"| {m} | " + " | ".join(f"{row[k]['mean']:.4f} ± {row[k]['std']:.4f}" for k in
                                            ("accuracy_unseen", "macro_f1_unseen", "accuracy_seen", "macro_f1_seen"))
                     + " |")
    classes = list(next(iter(summary["by_class"].values())))
    lines += ["", "Unseen users by activity (accuracy on that activity's segments):", "",
              "| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for m in summary["methods"]:
        lines.append(f"| {m} | " + " | ".join(f"{summary['by_class'][m][c]['mean']:.4f}" for c in classes) + " |")
    lines += ["", "Differences in unseen-user accuracy: a paired bootstrap over the unseen test users of all "
              "folds, and a t-interval over the fold means; **bold**: both exclude 0.", "",
              "| difference | mean | paired interval (users) | fold-level interval |", "|---|---|---|---|"]
    for name, d in summary["differences"].items():
        p, s = d["paired"], d["seed_level"]
        both = p["significant"] and bool(s["significant"])
        text = f"{p['mean']:+.4f}"
        lines.append(f"| {name} | {'**' + text + '**' if both else text} | [{p['lo']:+.4f}, {p['hi']:+.4f}] | "
                     f"[{s['lo']:+.4f}, {s['hi']:+.4f}] |")
    lines += ["", "Accuracy of unseen users against the window length W (the model trained with W = 20):", "",
              "| W | " + " | ".join(summary["window_curve"]["duet"]) + " |",
              "|---|" + "---|" * len(summary["window_curve"]["duet"])]
    for name, curve in summary["window_curve"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v['mean']:.4f}" for v in curve.values()) + " |")
    lines += ["", "Adaptation cost per device (one thread; medians per device, mean over folds):", "",
              "| method | seconds |", "|---|---|"]
    lines += [f"| {m} | {c['mean']:.6f} |" for m, c in summary["costs"].items() if m != "duet"]
    lines += [f"| duet ({k}) | {c['mean']:.6f} |" for k, c in summary["duet_costs"].items()]
    lines += ["", *variant_lines(summary.get("variants", {}), n, unit="fold")]
    users = sorted(summary["per_user"]["global"], key=int)
    lines += ["", "Per unseen user (test accuracy): does the window identify the user's style?", "",
              "| user | " + " | ".join(summary["methods"]) + " |", "|---|" + "---|" * len(summary["methods"])]
    for u in users:
        lines.append(f"| {u} | " + " | ".join(f"{summary['per_user'][m][u]:.3f}" for m in summary["methods"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/results/sensors/folds"))
    args = parser.parse_args()
    summary = summarize(load_folds(args.reports))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), summary)
    write_bytes(args.out.with_suffix(".md"), render(summary).encode())
    print(render(summary))


if __name__ == "__main__":
    main()
