"""How long `make demo` takes a new user: a fresh clone of this checkout's HEAD, timed.

    python benchmarks/demo_time.py --out docs/results/quick/demo_time.json

Clones HEAD into a temporary folder (no .venv, no data, no reports), then times
`make setup` (venv + pip install, the part a new user waits for first) and the rest of
`make demo` (prepare MovieLens, the quick comparison) in one go, as the README's one
command does. Records the date, the load average before and after (the machine is
shared: what else ran, roughly) and copies the demo's report into --report, so the
README quotes the time and the figures of the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 600


def timed(command: list[str], cwd: Path, log: Path) -> float:
    """Run `command` in `cwd`, its output appended to `log`; seconds it took (fails loudly)."""
    started = time.perf_counter()
    with log.open("a") as out:
        subprocess.run(command, cwd=cwd, check=True, stdout=out, stderr=subprocess.STDOUT,
                       env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/results/quick/demo_time.json"))
    parser.add_argument("--report", type=Path, default=Path("docs/results/quick"),
                        help="where the demo's report (results.json/md, plots) is copied")
    parser.add_argument("--other-load", default=None,
                        help="what else ran on the machine, in words, recorded beside the time (the docs quote "
                             "the load averages measured before and after, never this)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="duet-demo-") as tmp:
        clone = Path(tmp) / "duet"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        log = Path(tmp) / "demo.log"
        load_start = os.getloadavg()
        setup = timed(["make", "setup"], clone, log)
        rest = timed(["make", "demo"], clone, log)
        load_end = os.getloadavg()
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                                check=True).stdout.strip()
        args.report.mkdir(parents=True, exist_ok=True)
        for path in (clone / "reports" / "quick").iterdir():
            if path.is_file():
                shutil.copy(path, args.report / path.name)
        printed = log.read_text().splitlines()[-25:]
    result = {"date": datetime.date.today().isoformat(), "commit": commit, "cores": os.cpu_count(),
              "setup_s": setup, "demo_s": rest, "total_s": setup + rest, "target_s": TARGET_S,
              "met": setup + rest <= TARGET_S, "loadavg_start": load_start, "loadavg_end": load_end,
              "other_load": args.other_load, "printed_tail": printed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(args.out)
    print(f"make setup {setup:.0f} s + make demo {rest:.0f} s = {setup + rest:.0f} s "
          f"(target {TARGET_S} s); wrote {args.out}")


if __name__ == "__main__":
    main()
