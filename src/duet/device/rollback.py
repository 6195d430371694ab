"""Rollback and replay protection on the device: never an older bundle, never another version's answer.

`BundleHistory` remembers the newest bundle the device accepted (its sequence,
version and manifest digest) and refuses a bundle whose sequence is lower, one
that reuses the sequence for different contents, or one past its `expires`.
Given a state file, the memory survives restarts: it is rewritten atomically
(temp file, fsync, rename: duet.atomic) after each acceptance, so a crash
leaves the old record or the new one, never a torn file. Without one it lasts
as long as the process.

`check_answer_version`: an answer must be for the bundle's own model version.
With signatures, an answer is bound to its version and to the digest of the
request (which names the version), so an old answer replayed to a device with
a newer bundle fails its signature; this check refuses it with or without keys.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from duet.atomic import write_json
from duet.device.client import UntrustedAnswer
from duet.errors import ArtifactError
from duet.freshness import SEQUENCE_KEY, manifest_expiry, manifest_sequence


class Released(Protocol):
    """What these checks read of a verified bundle (any task's bundle class has it)."""

    path: Path
    manifest: dict

    @property
    def version(self) -> str: ...


class BundleHistory:
    """The newest bundle accepted so far; `admit(bundle)` accepts a newer one or raises ArtifactError.

    The state file is written before the memory changes: a write that fails (a full disk, a
    read-only file system) refuses the bundle in one line and leaves both as they were, so the
    file never holds an older sequence than the bundle the device runs.
    """

    def __init__(self, state_file: str | Path | None = None):
        self.state_file = None if state_file is None else Path(state_file)
        self.newest: dict | None = self._read()

    def _read(self) -> dict | None:
        if self.state_file is None or not self.state_file.exists():
            return None
        try:
            state = json.loads(self.state_file.read_text())
            problem = _state_problem(state)
        except (OSError, ValueError) as exc:
            problem = getattr(exc, "strerror", None) or "not JSON"
        if problem is not None:
            raise ArtifactError(f"{self.state_file}: unreadable bundle state ({problem}; delete it to trust the "
                                "next bundle as the newest)")
        return state

    def admit(self, bundle: Released, now: datetime | None = None) -> None:
        """Refuse an older, re-sequenced or expired bundle (one line); else remember it as the newest."""
        where = str(bundle.path / "manifest.json")
        sequence = manifest_sequence(bundle.manifest, where)
        expires = manifest_expiry(bundle.manifest, where)
        now = now or datetime.now(UTC)
        if expires is not None and now >= expires:
            raise ArtifactError(f"{bundle.path}: bundle expired at {expires.isoformat()} (refused; "
                                "the device keeps its current bundle)")
        try:
            digest = hashlib.sha256((bundle.path / "manifest.json").read_bytes()).hexdigest()
        except OSError as exc:
            raise ArtifactError(f"{where}: unreadable ({exc.strerror})") from None
        if self.newest is not None:
            newest = int(self.newest[SEQUENCE_KEY])
            if sequence < newest:
                raise ArtifactError(f"{bundle.path}: bundle sequence {sequence} is older than the newest accepted "
                                    f"({newest}, version {self.newest.get('model_version')}): rollback refused")
            if sequence == newest and digest != self.newest["manifest_sha256"]:
                raise ArtifactError(f"{bundle.path}: bundle sequence {sequence} was already accepted for another "
                                    "manifest: refused")
            if sequence == newest:
                return  # the same bundle again (a restart): nothing to record
        record = {SEQUENCE_KEY: sequence, "model_version": bundle.version, "manifest_sha256": digest,
                  "accepted_at": now.isoformat(timespec="seconds")}
        if self.state_file is not None:
            try:
                write_json(self.state_file, record)  # temp file, fsync, rename: the old record or the new one
            except OSError as exc:
                raise ArtifactError(f"{self.state_file}: cannot record bundle sequence {sequence} "
                                    f"({exc.strerror or exc}): bundle refused, the device keeps its current "
                                    "bundle") from None
        self.newest = record


def _state_problem(state: object) -> str | None:
    """What is wrong with a state file's contents, or None."""
    if not isinstance(state, dict):
        return "not a JSON object"
    sequence = state.get(SEQUENCE_KEY)
    if type(sequence) is not int or sequence < 0:
        return f"{SEQUENCE_KEY} is not a non-negative integer ({sequence!r})"
    digest = state.get("manifest_sha256")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        return "manifest_sha256 is not a sha256 hex digest"
    return None


def check_answer_version(version: str, bundle: Released, url: str) -> None:
    """An answer made by another model version than the bundle's is refused (replayed or stale)."""
    if version != bundle.version:
        raise UntrustedAnswer(f"{url}: answer for model version {version!r}, the bundle's is "
                              f"{bundle.version!r} (replayed or stale answer refused)")
