"""What each role installs, and how the device install starts (fresh virtual environments of this checkout).

    python benchmarks/install.py --bundle BUNDLE --out benchmarks/results/install.json

For each role a fresh venv gets `pip install '.[EXTRAS]'` (device: device; cloud service:
serve; trainer: train,export), then reports the distributions installed and the size on disk
of its site-packages without what `python -m venv` puts there itself (pip, setuptools). In
the device venv it also measures, in new processes:

  * start-up: `import duet.device`, loading a (signed) bundle and the first scoring call,
    timed inside the process, and the whole process from exec to exit (5 runs each);
  * memory: serve.py's device script (score 100 candidates 2,000 times, then VmRSS), with
    and without signature verification.

Without --bundle, a throwaway default-architecture run is trained and exported first (as
serve.py does). Sizes are du's (blocks on disk), in MB of 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from serve import bench_device, make_run  # benchmarks/ is on sys.path when this script runs

REPO = Path(__file__).resolve().parents[1]
ROLES = {"device": "device", "service": "serve", "trainer": "train,export"}
INSTALLER = ("pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth")
TARGETS = {"device_mb": 80, "device_distributions": 8, "device_start_s": 1.0, "device_rss_mb": 73}

DISTRIBUTIONS = textwrap.dedent("""
    import importlib.metadata as md, json
    print(json.dumps(sorted({d.metadata["Name"].lower(): d.version for d in md.distributions()}.items())))
""")

START_SCRIPT = textwrap.dedent("""
    import json, sys, time
    started = time.perf_counter()
    import numpy as np
    import duet.device
    imported = time.perf_counter()
    runtime = duet.device.DeviceRuntime(sys.argv[1], "http://127.0.0.1:9", "d", trusted_keys=sys.argv[2])
    logits = runtime.score([1, 2, 3, 4, 5], np.arange(1, 101))
    scored = time.perf_counter()
    print(json.dumps({"import_s": imported - started, "bundle_and_first_score_s": scored - imported,
                      "total_s": scored - started}))
""")


def env() -> dict[str, str]:
    """Without PYTHONPATH: each venv imports its own installed duet."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def du_kb(paths: list[Path]) -> int:
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0
    out = subprocess.run(["du", "-sk", "--total", *existing], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1].split()[0])


def install_role(root: Path, extras: str) -> tuple[Path, dict]:
    """A fresh venv with `pip install '.[extras]'` from a copy of this checkout; its size and contents."""
    source = root / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    started = time.perf_counter()
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    f"{source}[{extras}]"], check=True, env=env())
    seconds = time.perf_counter() - started
    site = next((root / "venv" / "lib").glob("python3*/site-packages"))
    installer = [p for p in site.iterdir() if p.name.split("-")[0] in INSTALLER]
    total_kb, installer_kb = du_kb([site]), du_kb(installer)
    dists = dict(json.loads(subprocess.run([str(python), "-c", DISTRIBUTIONS], capture_output=True, text=True,
                                           check=True, env=env()).stdout))
    for name in ("pip", "setuptools"):
        dists.pop(name, None)
    per_dist = {}
    for name in dists:
        # Top-level folders/files of the distribution, from its RECORD, measured with du.
        top = subprocess.run([str(python), "-c", "import importlib.metadata as md, sys; print('\\n'.join(sorted("
                              "{str(f).split('/')[0] for f in md.distribution(sys.argv[1]).files or []})))", name],
                             capture_output=True, text=True, check=True, env=env()).stdout.split()
        per_dist[name] = round(du_kb([site / t for t in top if t != ".." and not t.startswith("../")]) * 1024 / 1e6, 1)
    return python, {"extras": extras, "install_seconds": seconds, "distributions": dists, "count": len(dists),
                    "site_packages_mb": round((total_kb - installer_kb) * 1024 / 1e6, 1), "per_distribution_mb": per_dist}


def device_start(python: Path, bundle: Path, public_key: Path, runs: int = 5) -> dict:
    rows = []
    for _ in range(runs):
        started = time.perf_counter()
        out = subprocess.run([str(python), "-c", START_SCRIPT, str(bundle), str(public_key)], capture_output=True,
                             text=True, check=True, env=env())
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["process_s"] = time.perf_counter() - started
        rows.append(row)
    return {"runs": rows, "median": {k: float(np.median([r[k] for r in rows])) for k in rows[0]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="an exported bundle (default: train and export a throwaway one)")
    parser.add_argument("--roles", default=",".join(ROLES), help=f"comma-separated subset of {','.join(ROLES)}")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/install.json"))
    args = parser.parse_args()
    from duet.signing import sign_manifest, write_key_pair

    results: dict = {"python": sys.version.split()[0], "targets": TARGETS, "roles": {},
                     "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="duet-install-") as tmp:
        tmp = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            from duet.export import export_bundle

            bundle = tmp / "bundle"
            export_bundle(make_run(tmp / "work"), bundle)
        _, public, key = write_key_pair(tmp / "key")
        signed = tmp / "signed-bundle"
        shutil.copytree(bundle, signed)
        sign_manifest(signed, key)
        for role in args.roles.split(","):
            python, info = install_role(tmp / role, ROLES[role])
            results["roles"][role] = info
            print(f"{role:8s} '.[{info['extras']}]': {info['count']} distributions, {info['site_packages_mb']:,.1f} MB "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(info['per_distribution_mb'].items(), key=lambda kv: -kv[1]))})",
                  flush=True)
            if role == "device":
                start = device_start(python, signed, public)
                memory = {"unsigned": bench_device(bundle, 2000, python, env=env()),
                          "verifying": bench_device(signed, 2000, python, public, env=env())}
                results["device"] = {"start": start, "memory": memory}
                m = start["median"]
                print(f"device start-up (median of 5): import {m['import_s']:.3f} s + bundle and first score "
                      f"{m['bundle_and_first_score_s']:.3f} s = {m['total_s']:.3f} s in process, "
                      f"{m['process_s']:.3f} s exec to exit; RSS after 2,000 scorings "
                      f"{memory['unsigned']['rss_mb']:.1f} MB ({memory['verifying']['rss_mb']:.1f} MB verifying)",
                      flush=True)
            shutil.rmtree(tmp / role)
    results["loadavg_end"] = os.getloadavg()  # the machine is shared: what else ran, roughly
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
