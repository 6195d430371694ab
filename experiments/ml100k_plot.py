"""The paper's MovieLens-100K table as a picture: each cell's overall test AUC from the paper, the
third-party reproduction and duet (mean over seeds, a bar for ± one std), one row per cell.

    python experiments/ml100k_plot.py [--results docs/results/ml-100k/results.json]
        [--published docs/results/ml-100k/published.json] [--out docs/results/ml-100k/table.png]

Reads only committed JSON (what `bash experiments/ml100k_table.sh` writes, and the published
figures), so anyone can redraw it; the PNG is written to a temporary file, then renamed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

CELLS = (("din", "DIN"), ("sasrec", "SASRec"), ("gru4rec", "GRU4Rec"))
METHODS = (("base", "base"), ("finetune", "fine-tune"), ("duet", "DUET"))
SOURCES = (("paper", "paper", "s", "tab:gray"), ("reproduction", "reproduction", "D", "tab:orange"))


def cells(results: dict, published: dict) -> list[dict]:
    """One entry per (backbone, method) duet ran: its seeds' AUC mean and std, and the published ones."""
    rows = []
    for backbone, name in CELLS:
        runs = list(results["runs"].get(backbone, {}).values())
        if not runs:
            continue
        for method, label in METHODS:
            aucs = [run[method]["test"]["auc"] for run in runs]
            rows.append({"label": f"{name} {label}", "mean": statistics.fmean(aucs),
                         "std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                         **{key: published[key][backbone].get(method) for key, *_ in SOURCES}})
    return rows


def plot(rows: list[dict], seeds: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.42 * len(rows) + 1.6))
    ys = list(range(len(rows)))[::-1]
    for key, label, marker, color in SOURCES:
        points = [(row[key], y) for row, y in zip(rows, ys, strict=True) if row[key] is not None]
        ax.scatter([x for x, _ in points], [y for _, y in points], marker=marker, color=color, label=label, zorder=3)
    ax.errorbar([row["mean"] for row in rows], ys, xerr=[row["std"] for row in rows], fmt="o", color="tab:blue",
                capsize=3, label=f"duet ({seeds} seeds, ± std)", zorder=4)
    ax.set_yticks(ys, [row["label"] for row in rows])
    ax.set_xlabel("overall test AUC, MovieLens-100K (leave-one-out, 99 negatives)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("docs/results/ml-100k/results.json"))
    parser.add_argument("--published", type=Path, default=Path("docs/results/ml-100k/published.json"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/ml-100k/table.png"))
    args = parser.parse_args(argv)
    for path in (args.results, args.published):
        if not path.is_file():
            parser.error(f"{path}: no such file (run `bash experiments/ml100k_table.sh` first)")
    results, published = json.loads(args.results.read_text()), json.loads(args.published.read_text())
    rows = cells(results, published)
    if not rows:
        parser.error(f"{args.results}: no DIN, SASRec or GRU4Rec runs in it")
    plot(rows, len(next(iter(results["runs"].values()))), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
