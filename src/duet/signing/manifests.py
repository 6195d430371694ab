"""Signed manifests: `manifest.sig` beside `manifest.json`, over its exact bytes.

The manifest lists the sha256 of every file, so one signature covers the whole
folder; a signed bundle's manifest also lists `trusted_keys`, the public keys
whose answers devices accept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from duet.atomic import write_json
from duet.signing.keys import Keyring, PublicKey, SignatureError, SigningKey

SIGNATURE_FILE = "manifest.sig"
SIGNATURE_FORMAT = "duet-signature/1"
# Domain separation: a signed manifest can never pass as a signed answer, or the reverse.
MANIFEST_DOMAIN = b"duet-manifest/1\n"


def sign_manifest(folder: str | Path, key: SigningKey, trusted: Iterable[PublicKey] = ()) -> dict:
    """Add `trusted_keys` to FOLDER/manifest.json and sign it; returns the manifest.

    The list is `trusted`, in its order, with the signer's key first unless it is
    among them.
    """
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = list(trusted)
    if key.public_key not in listed:
        listed.insert(0, key.public_key)
    manifest["trusted_keys"] = [k.to_json() for k in {k.id: k for k in listed}.values()]
    write_json(folder / "manifest.json", manifest)
    write_signature(folder, key)
    return manifest


def write_signature(folder: str | Path, key: SigningKey) -> None:
    """FOLDER/manifest.sig: `key`'s signature over FOLDER/manifest.json as it is on disk."""
    folder = Path(folder)
    algorithm, kid, signature = key.header(MANIFEST_DOMAIN + (folder / "manifest.json").read_bytes()).split()
    write_json(folder / SIGNATURE_FILE, {"format": SIGNATURE_FORMAT, "algorithm": algorithm, "key_id": kid,
                                         "signature": signature})


def verify_manifest(folder: str | Path, body: bytes, keys: Keyring) -> str:
    """Check FOLDER/manifest.sig against the manifest bytes `body`; return the signer's key id."""
    file = Path(folder) / SIGNATURE_FILE
    if not file.is_file():
        raise SignatureError(f"{folder}: unsigned (no {SIGNATURE_FILE}), and a trusted key is configured")
    try:
        sig = json.loads(file.read_text())
        header = f"{sig['algorithm']} {sig['key_id']} {sig['signature']}" if sig.get("format") == SIGNATURE_FORMAT else ""
    except (ValueError, KeyError, TypeError, AttributeError):
        header = ""
    if not header:
        raise SignatureError(f"{file}: not a {SIGNATURE_FORMAT} file")
    return keys.verify(MANIFEST_DOMAIN + body, header, str(file))


def listed_keys(manifest: dict, where: str) -> list[PublicKey]:
    """The `trusted_keys` a (verified) manifest lists."""
    entries = manifest.get("trusted_keys", [])
    if not isinstance(entries, list):
        raise SignatureError(f"{where}: trusted_keys is not a list")
    return [PublicKey.from_json(entry, f"{where}: trusted_keys[{i}]") for i, entry in enumerate(entries)]
