"""How new a bundle is: a monotonic `bundle_sequence` and an optional `expires` in its manifest.

A signature says who made a bundle, not whether it is the newest: an older,
genuinely signed bundle replayed to a device (rollback) verifies. TUF answers
with a version number that only grows and a timestamp that runs out; a bundle
manifest carries both (signed with the rest of it), `duet export` writes them
and the device refuses a sequence below the newest it accepted, or a bundle
past its expiry (duet.device.rollback).

Standard library only: the torch-free device imports this.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from duet.errors import ArtifactError

SEQUENCE_KEY = "bundle_sequence"
EXPIRES_KEY = "expires"


def default_sequence() -> int:
    """Milliseconds since the epoch: grows with every export without anyone keeping a counter."""
    return time.time_ns() // 1_000_000


def release_fields(sequence: int | None = None, expires_in_days: float | None = None,
                   now: datetime | None = None) -> dict:
    """The manifest entries of a new bundle: its sequence (default: export time in ms) and expiry."""
    if sequence is not None and sequence < 0:
        raise ValueError(f"a bundle sequence is a non-negative integer, got {sequence}")
    if expires_in_days is not None and not expires_in_days > 0:
        raise ValueError(f"--expires-in must be a positive number of days, got {expires_in_days:g}")
    fields: dict = {SEQUENCE_KEY: default_sequence() if sequence is None else int(sequence)}
    if expires_in_days is not None:
        at = (now or datetime.now(UTC)) + timedelta(days=expires_in_days)
        fields[EXPIRES_KEY] = at.isoformat(timespec="seconds")
    return fields


def manifest_sequence(manifest: dict, where: str) -> int:
    """The bundle's sequence; 0 for a bundle exported before sequences existed."""
    value = manifest.get(SEQUENCE_KEY, 0)
    if type(value) is not int or value < 0:
        raise ArtifactError(f"{where}: {SEQUENCE_KEY} is not a non-negative integer ({value!r})")
    return value


def manifest_expiry(manifest: dict, where: str) -> datetime | None:
    """When the bundle stops being valid (timezone-aware), or None when it never does."""
    value = manifest.get(EXPIRES_KEY)
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ArtifactError(f"{where}: {EXPIRES_KEY} is not an ISO 8601 time ({value!r})") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)
