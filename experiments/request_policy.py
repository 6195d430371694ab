"""How often must a device ask the cloud? uauc against the share of requests, per policy.

    python experiments/request_policy.py --run reports/shift/runs/sasrec/seed0/duet/frozen-rankfull-dropout0.3 \
        --out docs/results/request_policy

Each device replays its events in time order; before each event the policy
(`duet.device.policy`, the code the device runtime runs) decides whether to ask
for parameters for the current window or to keep those made for an earlier one.
A device enters the period holding the parameters made for its last window of
the period before (it asked then), so a policy can go a whole period without
asking. The events are then scored offline with the run's torch model, each with
the window its parameters were generated for: `duet simulate` shows that the device
path reproduces this (fp32, `always`), and `--check` replays two settings through
the real service and device runtimes to confirm it for stale parameters too.

Sweeps `every` over k and `drift` over thresholds on the validation and the test
split. The setting reported for each policy is the one with the fewest requests
whose *validation* uauc is within --tolerance of `always` (test is read, not
chosen on). Writes OUT.json and OUT.png (test uauc against the fraction of
`always`'s requests).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from duet.atomic import save_png, write_json
from duet.checkpoint import load_run
from duet.device.policy import RequestPolicy
from duet.metrics import compute_metrics
from duet.tasks.recommendation.data.store import PAD, Split, load_dataset
from duet.tasks.recommendation.evaluate import predict
from duet.tasks.recommendation.report.cold import event_user_line

EVERY = (2, 3, 5, 10, 20, 50, 1000)
FLOOR = 0.003
DRIFT = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def device_timelines(split: Split) -> list[np.ndarray]:
    """Each device's events in time order (by their first record's line)."""
    user, first = event_user_line(split)
    order = np.lexsort((first, user))
    cuts = np.flatnonzero(np.diff(user[order])) + 1
    return np.split(order, cuts)


def last_windows(split: Split) -> dict[int, np.ndarray]:
    """Each device's window at its last event of `split`."""
    return {int(split.user[split.event == events[-1]][0]): split.window[events[-1]] for events in device_timelines(split)}


def schedule(split: Split, policy: RequestPolicy, embedding: np.ndarray,
             start: dict[int, np.ndarray]) -> tuple[np.ndarray, int, int]:
    """(E, W) the window each event's parameters were generated for, requests, events that could ask.

    `start`: the window each device's parameters were made for when the period begins
    (its last window of the period before, where it asked; a device not in it starts
    with none and asks at once)."""
    used = split.window.copy()
    requests = eligible = 0
    event_user, _ = event_user_line(split)
    for events in device_timelines(split):
        last = start.get(int(event_user[events[0]]))
        for event in events:
            window = split.window[event]
            if not (window != PAD).any():  # nothing observed: the global head, no request
                last = None
                continue
            eligible += 1
            last_ids = None if last is None else last[last != PAD]
            if policy.due(last_ids, window[window != PAD], lambda ids: embedding[np.asarray(ids, dtype=np.int64)]):
                last, requests = window, requests + 1
            else:
                used[event] = last
    return used, requests, eligible


def evaluate_policy(model: torch.nn.Module, split: Split, policy: RequestPolicy, embedding: np.ndarray,
                    start: dict[int, np.ndarray]) -> dict:
    used, requests, eligible = schedule(split, policy, embedding, start)
    stale = Split(**{**split.__dict__, "window": used})
    metrics = compute_metrics(split.label, predict(model, stale), split.user)
    return {"policy": policy.name, "kind": policy.kind, "requests": requests,
            "fraction": requests / max(eligible, 1), "uauc": metrics["uauc"], "auc": metrics["auc"]}


def sweep(model: torch.nn.Module, split: Split, embedding: np.ndarray, start: dict[int, np.ndarray],
          recent: int | None) -> list[dict]:
    policies = [RequestPolicy()] + [RequestPolicy("every", k=k) for k in EVERY] + \
               [RequestPolicy("drift", threshold=t, recent=recent) for t in DRIFT]
    return [evaluate_policy(model, split, p, embedding, start) for p in policies]


def chosen(valid: list[dict], test: list[dict], tolerance: float) -> dict[str, dict]:
    """Per policy kind, the fewest-request setting within `tolerance` of always on validation."""
    always = valid[0]["uauc"]
    out = {}
    for kind in ("every", "drift"):
        ok = [(v["fraction"], i) for i, v in enumerate(valid) if v["kind"] == kind and v["uauc"] >= always - tolerance]
        if ok:
            index = min(ok)[1]
            out[kind] = {"setting": valid[index]["policy"], "valid": valid[index], "test": test[index]}
    return out


def choose_variant(sweeps: dict[str, dict], tolerance: float) -> dict:
    """Across sweeps of the same run with different drift variants (whole window, newest N
    items), per policy kind the fewest-request setting within `tolerance` of always on
    *validation*, by the rule each sweep applied alone; test is carried along, not read."""
    valid = [dict(row, variant=name) for name, sweep in sweeps.items() for row in sweep["valid"]]
    test = [dict(row, variant=name) for name, sweep in sweeps.items() for row in sweep["test"]]
    always = [row["uauc"] for row in valid if row["policy"] == "always"]
    if max(always) - min(always) > 1e-12:
        raise SystemExit("the sweeps are not of the same run: their 'always' validation uauc differ")
    return {kind: {**entry, "variant": entry["valid"]["variant"]} for kind, entry in chosen(valid, test, tolerance).items()}


def plot(test: list[dict], global_uauc: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    always = test[0]["uauc"]
    for kind, marker in (("every", "o"), ("drift", "s")):
        # log axis: a setting that never asked in the period is drawn at FLOOR
        points = sorted((max(r["fraction"], FLOOR), r["uauc"]) for r in test if r["kind"] == kind)
        ax.plot(*zip(*points, strict=True), marker=marker, label=kind)
    ax.axhline(always, color="k", lw=0.8, label=f"always ({always:.4f})")
    ax.axhspan(always - 0.001, always, color="k", alpha=0.1, label="within 0.001 of always")
    ax.axhline(global_uauc, color="grey", ls="--", lw=0.8, label=f"global head, no request ({global_uauc:.4f})")
    ax.axvline(0.1, color="tab:red", ls=":", lw=0.8, label="10% of the requests")
    ax.set_xscale("log")
    ax.set_xlabel(f"requests / requests of always (no request in the period: drawn at {FLOOR:g})")
    ax.set_ylabel("test uauc")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def check_with_service(run: Path, devices: int, results: dict) -> list[dict]:
    """`duet simulate` (real service + device runtimes) for the chosen settings, on the first devices."""
    from duet.simulate import simulate

    checks = []
    for kind, entry in results["chosen"].items():
        name = entry["setting"]
        policy = RequestPolicy(kind, k=int(name.split("-")[1]) if kind == "every" else 1,
                               threshold=float(name.split("-")[1]) if kind == "drift" else 0.1,
                               recent=results["recent"] if kind == "drift" else None)
        sim = simulate(run, devices=devices, policy=policy)
        checks.append({"policy": name, "devices": sim["devices"], "requests": sim["requests"],
                       "fraction": sim["request_fraction"], "device_uauc": sim["metrics"]["device"]["uauc"],
                       "bytes_per_device": sim["bytes_per_device"]})
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a DUET run")
    parser.add_argument("--choose", nargs="+", type=Path, metavar="SWEEP.json",
                        help="instead of sweeping: choose the drift variant across these sweeps of one run on "
                             "validation (writes OUT.json)")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.png")
    parser.add_argument("--tolerance", type=float, default=0.001)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--recent", type=int, help="drift over the window's newest items only")
    parser.add_argument("--check", type=int, default=0, help="also replay the chosen settings through the "
                                                             "service for this many devices")
    args = parser.parse_args()
    if args.choose:
        sweeps = {path.stem: json.loads(path.read_text()) for path in args.choose}
        picked = choose_variant(sweeps, args.tolerance)
        write_json(args.out.with_suffix(".json"), {"sweeps": [str(p) for p in args.choose],
                                                   "tolerance": args.tolerance, "chosen": picked})
        for kind, entry in picked.items():
            print(f"chosen on valid, {kind}: {entry['variant']} {entry['setting']} "
                  f"(valid fraction {entry['valid']['fraction']:.3f}, uauc {entry['valid']['uauc']:.4f})")
        return
    if args.run is None:
        parser.error("--run is required unless --choose is given")
    torch.set_num_threads(args.threads)
    config, model, _ = load_run(args.run)
    data = load_dataset(config.data)
    embedding = model.device_model.item_embedding.weight.detach().numpy()  # what the bundle ships
    # A device enters each period holding parameters for its last window of the period before.
    valid = sweep(model, data["valid"], embedding, last_windows(data["train"]), args.recent)
    test = sweep(model, data["test"], embedding, last_windows(data["valid"]), args.recent)
    global_uauc = compute_metrics(data["test"].label, predict(model.device_model, data["test"]), data["test"].user)["uauc"]
    results = {"run": str(args.run), "tolerance": args.tolerance, "recent": args.recent, "global_head_test_uauc": global_uauc,
               "valid": valid, "test": test, "chosen": chosen(valid, test, args.tolerance)}
    if args.check:
        results["service_check"] = check_with_service(args.run, args.check, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), results)
    plot(test, global_uauc, args.out.with_suffix(".png"))
    print(f"always: valid {valid[0]['uauc']:.4f}, test {test[0]['uauc']:.4f}; global head test {global_uauc:.4f}")
    for row_v, row_t in zip(valid, test, strict=True):
        print(f"{row_t['policy']:>12}  fraction {row_t['fraction']:.3f}  valid {row_v['uauc']:.4f}  test {row_t['uauc']:.4f}")
    for kind, entry in results["chosen"].items():
        print(f"chosen on valid, {kind}: {entry['setting']} -> test fraction {entry['test']['fraction']:.3f}, "
              f"uauc {entry['test']['uauc']:.4f} ({entry['test']['uauc'] - test[0]['uauc']:+.4f} vs always)")
    for check in results.get("service_check", []):
        print(f"service check {check}")


if __name__ == "__main__":
    main()
