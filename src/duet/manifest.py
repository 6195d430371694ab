"""JSON manifests with the sha256 of every file: one reader for datasets, runs and bundles.

Standard library only, so the torch-free device runtime can use it too.
"""

from __future__ import annotations

import json
from pathlib import Path

from duet.atomic import sha256_file
from duet.errors import ArtifactError


def read_manifest(folder: str | Path, expected_format: str, what: str) -> dict:
    """Parse FOLDER/manifest.json and check its format; `what` completes "not a duet ..." errors."""
    folder = Path(folder)
    file = folder / "manifest.json"
    if not file.is_file():
        raise ArtifactError(f"{folder}: not a {what} (no manifest.json)")
    return parse_manifest(file.read_bytes(), file, expected_format)


def read_any_manifest(folder: str | Path, what: str, keys: tuple[str, ...]) -> dict:
    """FOLDER/manifest.json of any format, with `keys` present (each task's datasets have their own format)."""
    folder = Path(folder)
    file = folder / "manifest.json"
    if not file.is_file():
        raise ArtifactError(f"{folder}: not a {what} (no manifest.json)")
    try:
        manifest = json.loads(file.read_bytes())
    except ValueError as exc:
        raise ArtifactError(f"{file}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
    missing = [key for key in keys if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise ArtifactError(f"{file}: missing {', '.join(missing)} (written by an older duet? redo it)")
    return manifest


def parse_manifest(body: bytes, file: Path, expected_format: str) -> dict:
    """A manifest from bytes already read: a signature is checked over exactly the bytes parsed."""
    try:
        manifest = json.loads(body)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        line = f":{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ArtifactError(f"{file}{line}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{file}: format {found!r}, expected {expected_format!r}")
    return manifest


def verify_file(folder: str | Path, name: str, manifest: dict) -> Path:
    """FOLDER/NAME, after checking it is listed in the manifest and matches its sha256."""
    folder = Path(folder)
    file = folder / name
    digest = manifest.get("files", {}).get(name)
    if digest is None:
        raise ArtifactError(f"{folder / 'manifest.json'}: no entry for {name}")
    if not file.is_file():
        raise ArtifactError(f"{file}: missing (listed in manifest.json)")
    if sha256_file(file) != digest:
        raise ArtifactError(f"{file}: sha256 does not match manifest.json (modified or truncated)")
    return file


def verify_all(folder: str | Path, manifest: dict) -> None:
    for name in manifest.get("files", {}):
        verify_file(folder, name, manifest)
