"""Training and inference throughput (records/s) per backbone, and peak memory.

    python benchmarks/train_speed.py --data data/movielens [--batches 60] [--out docs/train_speed.json]

Measures, on the default MovieLens protocol, in one process:
* `train` records/s of full optimiser steps (forward, backward, clipping, Adam) per backbone,
* `infer` records/s of scoring the validation split,
* peak resident memory during each phase (VmHWM, reset before the phase),
* `sasrec-per-record`: the same SASRec, embedding 32, batch 1024, but fed the way
  the published DUET code feeds it (every record carries its own click sequence
  and gets its own encoder pass). The ratio sasrec / sasrec-per-record is the
  speed-up of sharing one encoder pass per event.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from duet.config import ModelConfig
from duet.data.store import load_dataset
from duet.models.recommender import Recommender
from duet.training.batches import Batch, EventBatcher
from duet.training.evaluate import predict
from duet.training.finetune import reset_peak_rss, rss_bytes


def per_record(batch: Batch) -> Batch:
    """The published pipeline's shape: one history row per record, no sharing."""
    return Batch(history=batch.history[batch.inverse], window=batch.window[batch.inverse], item=batch.item,
                 label=batch.label, inverse=torch.arange(len(batch.item)), records=batch.records)


def measure_training(model: Recommender, batches: list[Batch], warmup: int = 5) -> tuple[float, int]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step(batch: Batch) -> None:
        loss = F.binary_cross_entropy_with_logits(model(batch.history, batch.item, batch.inverse), batch.label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    for batch in batches[:warmup]:
        step(batch)
    reset_peak_rss()
    started = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    seconds = time.perf_counter() - started
    return sum(len(b) for b in batches[warmup:]) / seconds, rss_bytes("VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=60, help="timed training batches per backbone")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.data, splits=("train", "valid"))
    rng = np.random.default_rng(0)
    batches = list(EventBatcher(data["train"], args.batch_size).batches(rng.permutation(data["train"].num_events)))
    timed = batches[: args.batches + 5]
    results = {"machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(),
                           "torch": torch.__version__}, "batch_size": args.batch_size, "backbones": {}}
    variants = [("sasrec", "sasrec", False), ("sasrec-per-record", "sasrec", True), ("gru4rec", "gru4rec", False),
                ("din", "din", False)]
    for name, backbone, flat in variants:
        torch.manual_seed(0)
        model = Recommender(data.num_items, data.history_len, ModelConfig(backbone=backbone, embed_dim=32))
        train_rps, train_peak = measure_training(model, [per_record(b) for b in timed] if flat else timed)
        entry = {"train_records_per_s": train_rps, "train_peak_rss_mib": train_peak / 2**20}
        if not flat:
            reset_peak_rss()
            started = time.perf_counter()
            predict(model, data["valid"])
            seconds = time.perf_counter() - started
            entry.update(infer_records_per_s=len(data["valid"]) / seconds, infer_peak_rss_mib=rss_bytes("VmHWM") / 2**20)
        results["backbones"][name] = entry
        print(f"{name:18s} " + "  ".join(f"{k} {v:,.0f}" for k, v in entry.items()), flush=True)
    ours, published = results["backbones"]["sasrec"], results["backbones"]["sasrec-per-record"]
    results["sasrec_speedup_vs_per_record"] = ours["train_records_per_s"] / published["train_records_per_s"]
    print(f"SASRec training speed-up over the per-record pipeline: {results['sasrec_speedup_vs_per_record']:.1f}x")
    if args.out:
        from duet.atomic import write_json

        write_json(args.out, results)


if __name__ == "__main__":
    main()
