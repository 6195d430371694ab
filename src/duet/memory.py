"""Peak resident memory of this process, for the per-device cost of adaptation baselines
(fine-tuning, TENT, batch-norm statistics) in every task. Linux /proc only; elsewhere
the peak cannot be reset and callers report 0."""

from __future__ import annotations

from pathlib import Path


def rss_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes (Linux); 0 where /proc has no such field."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
