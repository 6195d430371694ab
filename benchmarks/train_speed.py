"""Training and inference throughput (records/s) per backbone, and peak memory; before/after in one run.

    python benchmarks/train_speed.py --data data/movielens [--batches 60] [--out docs/train_speed.json]
    python benchmarks/train_speed.py --data data/movielens --baseline-src /tmp/old/src --rounds 2 --out F

Measures, on a prepared dataset, in one process per (source tree, variant):
* `train` records/s of full optimiser steps (forward, backward, clipping, Adam) per backbone,
* `infer` records/s of scoring the validation split (`predict`, as evaluation does),
* peak resident memory during each phase (VmHWM, reset before the phase),
* `sasrec-per-record`: the same SASRec, embedding 32, batch 1024, but fed the way
  the published DUET code feeds it (every record carries its own click sequence
  and gets its own encoder pass). The ratio sasrec / sasrec-per-record is the
  speed-up of sharing one encoder pass per event.
* `sasrec-duet`, `gru4rec-duet`, `din-duet`: DUET stage 2 on that backbone (generator + static
  part trained jointly, the generated head per event): its speed against the backbone alone is
  the cost of generation.

On a shared machine the wall-clock rates swing with the other jobs; with `--threads 1`
the rates per CPU-second of the process (`*_per_cpu_s`) are the steadier measure of the
code, and the before/after ratios use them.

`--baseline-src DIR` also times the same variants with the duet package found in DIR
(e.g. `git archive main src | tar -x -C /tmp/old`), alternating old and new process by
process for `--rounds` rounds, so both see the same machine load; the reported value
of each side is its best round, and `speedup` is new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("sasrec", "sasrec-per-record", "sasrec-duet", "gru4rec", "gru4rec-duet", "din", "din-duet")
SRC = Path(__file__).resolve().parents[1] / "src"


def measure(args: argparse.Namespace, variant: str) -> dict:
    """One variant in this process, with whatever `duet` is on the path."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from duet.config import GeneratorConfig, ModelConfig
    from duet.duet_model import DuetModel
    from duet.memory import reset_peak_rss, rss_bytes
    from duet.tasks.recommendation.batches import Batch, EventBatcher, with_sampled_negatives
    from duet.tasks.recommendation.data.store import load_dataset
    from duet.tasks.recommendation.evaluate import predict, score_batch
    from duet.tasks.recommendation.models.recommender import Recommender

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.data, splits=("train", "valid"))
    rng = np.random.default_rng(0)
    batches = list(EventBatcher(data["train"], args.batch_size).batches(rng.permutation(data["train"].num_events)))
    timed = batches[: args.batches + 5]
    torch.manual_seed(0)
    if args.sampled_negatives:
        timed = [with_sampled_negatives(b, args.sampled_negatives, data.num_items) for b in timed]
    backbone = variant.split("-")[0]
    model: torch.nn.Module = Recommender(data.num_items, data.history_len,
                                         ModelConfig(backbone=backbone, embed_dim=args.embed_dim))
    if variant.endswith("-duet"):
        model = DuetModel(model, data.window_len, GeneratorConfig())
    if variant.endswith("-per-record"):  # the published pipeline's shape: one history row per record
        timed = [Batch(history=b.history[b.inverse], window=b.window[b.inverse], item=b.item, label=b.label,
                       inverse=torch.arange(len(b.item)), records=b.records) for b in timed]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step(batch: Batch) -> None:
        loss = F.binary_cross_entropy_with_logits(score_batch(model, batch), batch.label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    for batch in timed[:5]:
        step(batch)
    reset_peak_rss()
    started, cpu = time.perf_counter(), time.process_time()
    for batch in timed[5:]:
        step(batch)
    records = sum(len(b.item) for b in timed[5:])
    entry = {"train_records_per_s": records / (time.perf_counter() - started),
             "train_records_per_cpu_s": records / (time.process_time() - cpu),
             "train_peak_rss_mib": rss_bytes("VmHWM") / 2**20}
    if not variant.endswith("-per-record"):
        predict(model, data["valid"])  # warm-up
        reset_peak_rss()
        started, cpu = time.perf_counter(), time.process_time()
        predict(model, data["valid"])
        entry.update(infer_records_per_s=len(data["valid"]) / (time.perf_counter() - started),
                     infer_records_per_cpu_s=len(data["valid"]) / (time.process_time() - cpu),
                     infer_peak_rss_mib=rss_bytes("VmHWM") / 2**20)
    return entry


def in_subprocess(args: argparse.Namespace, variant: str, src: Path) -> dict:
    """`measure` in a fresh process whose `duet` comes from `src` (its own imports, its own peak memory)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--data", str(args.data), "--batches", str(args.batches),
                   "--batch-size", str(args.batch_size), "--sampled-negatives", str(args.sampled_negatives),
                   "--embed-dim", str(args.embed_dim), "--variants", variant, "--single-out", out.name]
        if args.threads:
            command += ["--threads", str(args.threads)]
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(src)})
        return json.loads(Path(out.name).read_text())


def other_load() -> float:
    """1-minute load average: what else was running (the machine is shared)."""
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=60, help="timed training batches per variant")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--sampled-negatives", type=int, default=0,
                        help="extra uniform negatives per event, as `duet train` adds (default 0: the file's records)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--embed-dim", type=int, default=32, help="item embedding size of every variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--baseline-src", type=Path, default=None, help="also time the duet package in this folder")
    parser.add_argument("--rounds", type=int, default=1, help="with --baseline-src: old/new alternations per variant")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--single-out", type=Path, default=None, help=argparse.SUPPRESS)  # one variant, in a child
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if args.single_out:
        (variant,) = variants
        args.single_out.write_text(json.dumps(measure(args, variant)))
        return
    import torch

    results: dict = {"machine": {"cpus": os.cpu_count(), "threads": args.threads or torch.get_num_threads(),
                                 "python": platform.python_version(), "torch": torch.__version__},
                     "data": str(args.data), "batch_size": args.batch_size,
                     "sampled_negatives": args.sampled_negatives, "embed_dim": args.embed_dim, "backbones": {}}
    sides = {"new": SRC} if args.baseline_src is None else {"old": args.baseline_src.resolve(), "new": SRC}
    for variant in variants:
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, src in sides.items():
                load = other_load()
                runs[side].append({**in_subprocess(args, variant, src), "load_before": load})
        best = {side: max(r, key=lambda e: e["train_records_per_cpu_s"]) for side, r in runs.items()}
        entry = {**best["new"], "rounds": runs}
        if "old" in best:
            entry["old"] = best["old"]
            entry["speedup"] = {k: best["new"][k] / best["old"][k] for k in best["new"] if k.endswith("_per_cpu_s")}
        results["backbones"][variant] = entry
        line = "  ".join(f"{k} {v:,.0f}" for k, v in best["new"].items() if k != "load_before")
        if "speedup" in entry:
            line += "  speedup " + "  ".join(f"{k.split('_')[0]} {v:.2f}x" for k, v in entry["speedup"].items())
        print(f"{variant:18s} {line}", flush=True)
    found = results["backbones"]
    ratios = {"sasrec_vs_per_record": ("sasrec", "sasrec-per-record", "SASRec / per-record pipeline"),
              "duet_vs_base": ("sasrec-duet", "sasrec", "DUET stage 2 / base training speed"),
              "gru4rec_duet_vs_base": ("gru4rec-duet", "gru4rec", "GRU4Rec: DUET stage 2 / base training speed"),
              "din_duet_vs_base": ("din-duet", "din", "DIN: DUET stage 2 / base training speed")}
    for side in [s for s in ("old", "new") if s in sides]:
        for key, (top, bottom, words) in ratios.items():
            if {top, bottom} <= set(found):
                speed = [(found[v] if side == "new" else found[v]["old"])["train_records_per_cpu_s"] for v in (top, bottom)]
                results[f"{side}_{key}"] = speed[0] / speed[1]
                print(f"{side}: {words} {results[f'{side}_{key}']:.2f}")
    if args.out:
        sys.path.insert(0, str(SRC))
        from duet.atomic import write_json

        write_json(args.out, results)


if __name__ == "__main__":
    main()
