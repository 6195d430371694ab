"""Where do models lose to the oracle on synthetic-shift? Test uauc by clicks since the
user's last profile switch.

    python experiments/shift_diagnosis.py --data data/shift --runs reports/shift/runs/sasrec/seed0 \
        --out docs/results/shift_diagnosis

If a model loses mostly right after a switch, it is slow to notice the new taste
(what the window should fix); if it loses everywhere, it has not learnt the click
model itself (what no window can fix). The oracle and the Bayes observer of the
clicks (both from the generator's truth) are binned the same way. Reads each run's
saved test logits (scores_test.safetensors); regenerates the truth from the
dataset manifest's generator settings and checks it rebuilds the same records.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from duet.atomic import write_json
from duet.config import ProtocolConfig
from duet.metrics import per_group_auc
from duet.tasks.recommendation.data.prepare import build
from duet.tasks.recommendation.data.store import load_dataset
from duet.tasks.recommendation.data.synthetic_shift import ShiftConfig, generate

BINS = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 10**9))


def since_switch(profile: np.ndarray, user: np.ndarray) -> np.ndarray:
    """Clicks since the profile last changed, per interaction row (rows grouped by user, in time order)."""
    out = np.zeros(len(profile), np.int64)
    for row in range(1, len(profile)):
        if user[row] == user[row - 1]:
            out[row] = 0 if profile[row] != profile[row - 1] else out[row - 1] + 1
        else:
            out[row] = 10**6  # a user's first click: no switch seen
    out[0] = 10**6
    return out


LABELS = tuple(f"{lo}" if lo == hi else f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}" for lo, hi in BINS)


def binned(label: np.ndarray, scores: np.ndarray, user: np.ndarray, bin_of_record: np.ndarray) -> dict[str, float]:
    out = {}
    for index, name in enumerate(LABELS):
        mask = bin_of_record == index
        _, aucs, _ = per_group_auc(label[mask], scores[mask], user[mask])
        if len(aucs):
            out[name] = float(aucs.mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=Path, required=True, help="a compare report's runs/<backbone>/seed<k>")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = load_dataset(args.data, splits=("test",))
    source = {k: v for k, v in data.manifest["source"].items() if k != "kind"}
    inter, truth = generate(ShiftConfig(**source))
    built = build(inter, ProtocolConfig(**data.manifest["protocol"]))
    test = data["test"]
    if not np.array_equal(built.splits["test"].line, test.line):
        raise SystemExit("the regenerated records differ from the dataset's")
    row = built.target_row["test"][test.event]
    item = built.item_raw[test.item]
    since = since_switch(truth.profile, inter.user)[row]
    record_bin = np.searchsorted(np.array([hi for _, hi in BINS]), since, side="left")
    share = {name: float(np.mean(record_bin[test.label == 1] == i)) for i, name in enumerate(LABELS)}
    rows = {"oracle": binned(test.label, truth.click_logits(truth.profile[row], item), test.user, record_bin),
            "observer": binned(test.label, truth.observer_logits(row, item), test.user, record_bin)}
    for scores in sorted(args.runs.rglob("scores_test*.safetensors")):
        saved = load_file(str(scores))
        order = np.argsort(saved["line"])
        logits = saved["logits"][order][np.searchsorted(saved["line"][order], test.line)]
        name = str(scores.parent.relative_to(args.runs)) + ("/global-head" if "global" in scores.name else "")
        rows[name] = binned(test.label, logits, test.user, record_bin)
    results = {"data": str(args.data), "runs": str(args.runs), "share_of_test_events": share, "uauc": rows}
    write_json(args.out.with_suffix(".json"), results)
    print("clicks since switch: " + "  ".join(f"{k} ({v:.0%})" for k, v in share.items()))
    for name, values in rows.items():
        print(f"{name:>45}  " + "  ".join(f"{values.get(k, float('nan')):.4f}" for k in share))


if __name__ == "__main__":
    main()
