"""Bulk generation speed: devices/s of the generator alone (folded vs frozen decoders, in one process)
and of `duet generate --windows` end to end (reading, generating, writing fp32/fp16 to a folder).

    python benchmarks/bulk_generate.py --run RUN --devices 1000000 --out-dirs /tmp,/dev/shm \
        --json benchmarks/results/bulk_generate.json

Windows are random windows of the run's samples (its task's SampleSpec: token ids in the run's range
with random lengths, or float samples), so any task's run can be measured. One torch thread (on a
shared machine more threads were slower, see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch


def random_windows(sample, window_len: int, devices: int, seed: int = 0) -> np.ndarray:
    """`devices` windows of the run's samples as a windows file holds them: token ids left-aligned and
    0-padded (N, W) with 1..W of them, or float samples (N, W, *shape)."""
    rng = np.random.default_rng(seed)
    if not sample.is_token:
        return rng.random((devices, window_len, *sample.shape), dtype=np.float32)
    windows = rng.integers(sample.low, sample.high + 1, (devices, window_len))
    lengths = rng.integers(1, window_len + 1, devices)
    windows[np.arange(window_len)[None, :] >= lengths[:, None]] = 0
    return windows


def generator_alone(run: Path, windows: np.ndarray, chunk: int, rounds: int) -> dict:
    """devices/s of the forward alone, folded and frozen alternating, best of `rounds` each."""
    from duet.checkpoint import load_run
    from duet.cloud.generation import FlatGenerator

    best = {"folded": 0.0, "frozen": 0.0}
    generators = {name: FlatGenerator(load_run(run)[1], fold=name == "folded").eval() for name in best}
    assert generators["folded"].folded
    rows = torch.from_numpy(windows)
    # Token windows: padding is 0; float windows: every position holds a sample.
    mask = rows != 0 if rows.ndim == 2 else torch.ones(rows.shape[:2], dtype=torch.bool)
    for _ in range(rounds):
        for name, generator in generators.items():
            started = time.perf_counter()
            with torch.inference_mode():
                for lo in range(0, len(rows), chunk):
                    generator(rows[lo:lo + chunk], mask[lo:lo + chunk])
            best[name] = max(best[name], len(rows) / (time.perf_counter() - started))
    return {"devices_per_s": best, "chunk": chunk, "devices": len(rows), "speedup": best["folded"] / best["frozen"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a DUET run")
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--out-dirs", default="/tmp", help="comma-separated folders to write the output into")
    parser.add_argument("--alone-devices", type=int, default=200_000, help="windows for the forward-alone timing")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from duet.atomic import write_json
    from duet.checkpoint import load_config
    from duet.cloud.bulk import generate_bulk
    from duet.task import task_of_run

    config = load_config(args.run)
    windows = random_windows(task_of_run(config).sample(config), config.window_len, args.devices)
    results: dict = {"load_before": os.getloadavg()[0], "threads": 1,
                     "alone": generator_alone(args.run, windows[: args.alone_devices], 1024, args.rounds)}
    print("forward alone:", results["alone"], flush=True)
    folder = Path(args.out_dirs.split(",")[0])
    source = folder / "bulk-bench-windows.npy"
    np.save(source, windows)
    results["end_to_end"] = []
    for out_dir in args.out_dirs.split(","):
        for dtype in ("fp32", "fp16"):
            out = Path(out_dir) / "bulk-bench-heads.safetensors"
            load = os.getloadavg()[0]
            summary = generate_bulk(args.run, source, out, dtype=dtype, overwrite=True)
            out.unlink()
            entry = {"dir": out_dir, "dtype": dtype, "load_before": load,
                     **{k: summary[k] for k in ("devices", "seconds", "devices_per_s", "generate_seconds", "bytes")}}
            results["end_to_end"].append(entry)
            print(entry, flush=True)
    source.unlink()
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
