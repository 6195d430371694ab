"""MovieLens-100K as RecBole ships it, read from the pinned `recbole` wheel (never imported).

RecBole 1.2.1's wheel on the package index carries `recbole/dataset_example/ml-100k/ml-100k.inter`
(100,000 ratings, 943 users, 1,682 items): the paper's own data set, with no download beyond
the package client. `duet prepare --source ml-100k` fetches the wheel once with
`pip download --no-deps` into a cache folder, checks its sha256 and reads the `.inter`
member straight from the zip: recbole is never installed or imported (its import fails with
current NumPy).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from duet.atomic import sha256_file
from duet.errors import DuetError

WHEEL = "recbole-1.2.1-py3-none-any.whl"
REQUIREMENT = "recbole==1.2.1"
# sha256 of the wheel on the package index (checked on 2026-12-04, pip download --no-deps recbole==1.2.1)
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


def cache_dir() -> Path:
    """Where fetched wheels are kept: $DUET_CACHE, else $XDG_CACHE_HOME/duet, else ~/.cache/duet."""
    if os.environ.get("DUET_CACHE"):
        return Path(os.environ["DUET_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "duet"


def pip_download(requirement: str, dest: Path) -> None:
    """`pip download --no-deps requirement` into `dest` with this interpreter's pip; one line on failure."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               "--dest", str(dest), requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DuetError(f"could not run pip to download {requirement} ({exc}); download {WHEEL} by hand and "
                        "pass it with --path") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with code {done.returncode}"
        raise DuetError(f"could not download {requirement} with pip ({reason}); download {WHEEL} by hand "
                        "and pass it with --path")


def fetch_wheel(cache: Path | None = None) -> Path:
    """The pinned recbole wheel in the cache, downloaded first if missing; its sha256 checked."""
    cache = cache or cache_dir()
    wheel = cache / WHEEL
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # into a temporary folder beside the cache, then renamed: an interrupted download leaves nothing
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
            pip_download(REQUIREMENT, Path(tmp))
            got = Path(tmp) / WHEEL
            if not got.exists():
                raise DuetError(f"pip download {REQUIREMENT} gave no {WHEEL} (got: "
                                f"{', '.join(p.name for p in Path(tmp).iterdir()) or 'nothing'})")
            check_wheel(got)
            os.replace(got, wheel)
    check_wheel(wheel)
    return wheel


def check_wheel(wheel: Path) -> None:
    """Refuse a wheel whose bytes are not the pinned release's."""
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        raise DuetError(f"{wheel}: sha256 {digest[:16]}... is not {REQUIREMENT}'s ({WHEEL_SHA256[:16]}...); "
                        "delete it and run again")


def read_member(wheel: Path, member: str = ML100K_MEMBER) -> bytes:
    """The bytes of one file inside the wheel (a zip), read without extracting or importing anything."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except KeyError:
        raise DuetError(f"{wheel}: no {member} inside") from None
    except zipfile.BadZipFile:
        raise DuetError(f"{wheel}: not a zip file (a wheel is one)") from None
