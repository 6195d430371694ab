"""One method of two recommendation comparisons, paired on the same users and seeds.

`duet compare` pairs methods within one report. Two reports that differ in one setting (for
instance the compressed device model with and without FiLM in its blocks, issue 22) score the
same test users with the same seeds, so a method's per-user AUC in one pairs with the other's:
the difference gets the same two intervals as a report's own (the paired bootstrap over users
and seeds, and the t-interval over seed means). Each report's share of the device-to-cloud gap
is copied beside it.

    python experiments/paired_reports.py --a reports/compressed-film --b reports/compressed-w50 \
        --method device-duet --label-a "FiLM + head" --label-b "head" \
        --out docs/results/compressed-film/film_vs_head.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from duet.atomic import write_json
from duet.report.stats import difference_matrix, paired_bootstrap, seed_interval


def load(report: Path) -> dict:
    try:
        return json.loads((report / "results.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{report / 'results.json'}: not a finished comparison ({e})") from None


def method_runs(results: dict, backbone: str, method: str) -> dict[str, dict]:
    """seed -> what the report recorded of `method` in that seed, for every seed that ran it."""
    runs = results["runs"].get(backbone)
    if runs is None:
        raise SystemExit(f"no {backbone} runs in this report")
    return {seed: by_method[method] for seed, by_method in runs.items() if method in by_method}


def paired(a: dict, b: dict, backbone: str, method: str) -> dict:
    """Per-user AUC of `method` in a minus in b over the seeds both have, both intervals."""
    ua, ub = ({seed: {int(u): auc for u, auc in run["user_auc"].items()}
               for seed, run in method_runs(r, backbone, method).items()} for r in (a, b))
    seeds = sorted(set(ua) & set(ub))
    if not seeds:
        raise SystemExit(f"the two reports share no seed of {method}")
    diff = difference_matrix([(ua[s], ub[s]) for s in seeds])
    return {"seeds": seeds, "boot": paired_bootstrap(diff), "seed_level": seed_interval(diff),
            "per_seed": {s: float(row.mean()) for s, row in zip(seeds, diff, strict=True)}}


def side(results: dict, backbone: str, method: str) -> dict:
    """What one report says of `method`: test uauc over its seeds, its gap share, its payload."""
    runs = method_runs(results, backbone, method)
    summary = results["summary"][backbone]
    cost = summary[method].get("device_cost", {})
    valid = [max(run["valid_uauc_per_variant"].values()) for run in runs.values() if run.get("valid_uauc_per_variant")]
    return {"uauc": summary[method]["uauc"], "gap_closed": summary.get("gap_closed", {}).get(method),
            # the chosen variant's validation uauc, mean over seeds: what a choice between a and b reads
            "valid_uauc": float(np.mean(valid)) if valid else None,
            "dynamic_parameters": cost.get("head_parameters", {}).get("mean"),
            "valid_uauc_per_variant": {s: run.get("valid_uauc_per_variant") for s, run in runs.items()},
            "variant": {s: run.get("variant") for s, run in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, required=True, help="a comparison's output folder")
    parser.add_argument("--b", type=Path, required=True, help="the other comparison's output folder")
    parser.add_argument("--method", default="device-duet")
    parser.add_argument("--backbone", default="sasrec")
    parser.add_argument("--label-a", default="a")
    parser.add_argument("--label-b", default="b")
    parser.add_argument("--out", type=Path, required=True, help="the JSON to write")
    args = parser.parse_args()
    a, b = load(args.a), load(args.b)
    out = {"method": args.method, "backbone": args.backbone,
           "a": {"label": args.label_a, "report": str(args.a), **side(a, args.backbone, args.method)},
           "b": {"label": args.label_b, "report": str(args.b), **side(b, args.backbone, args.method)},
           "a - b": paired(a, b, args.backbone, args.method)}
    write_json(args.out, out)
    d = out["a - b"]
    print(f"{args.label_a} - {args.label_b} ({args.method}, {len(d['seeds'])} seeds): {d['boot']['mean']:+.4f} "
          f"[{d['boot']['lo']:+.4f}, {d['boot']['hi']:+.4f}]; seeds {np.round(list(d['per_seed'].values()), 4)}")


if __name__ == "__main__":
    main()
