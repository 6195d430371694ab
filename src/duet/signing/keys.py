"""Ed25519 keys (PyNaCl, i.e. libsodium), their files, and a keyring that checks signatures.

Key files are text. A private key file (mode 0600) holds the 32-byte RFC 8032
seed in base64 after the tag `ed25519-private`; a public key file holds one or
more `ed25519 <base64>` lines (several = a keyring, for rotation). Lines that
start with `#` are comments. A key is named by its key id, the first 16 hex of
the sha256 of its 32 public bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings
import nacl.exceptions

from duet.atomic import write_bytes
from duet.errors import ArtifactError, DuetError

ALGORITHM = "ed25519"
PUBLIC_TAG, PRIVATE_TAG = "ed25519", "ed25519-private"


class SignatureError(ArtifactError):
    """Missing, malformed or invalid signature, or one by a key that is not trusted."""


def b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{what}: not base64") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key (32 bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != nacl.bindings.crypto_sign_PUBLICKEYBYTES:
            raise SignatureError(f"an Ed25519 public key has 32 bytes, got {len(self.raw)}")

    @property
    def id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]

    @property
    def text(self) -> str:
        return b64encode(self.raw)

    def to_json(self) -> dict[str, str]:
        return {"algorithm": ALGORITHM, "key_id": self.id, "public_key": self.text}

    @classmethod
    def from_json(cls, data: object, where: str) -> PublicKey:
        if not isinstance(data, dict) or data.get("algorithm") != ALGORITHM or not isinstance(data.get("public_key"), str):
            raise SignatureError(f"{where}: not an {ALGORITHM} public key entry")
        key = cls(b64decode(data["public_key"], where))
        if data.get("key_id") != key.id:
            raise SignatureError(f"{where}: key_id {data.get('key_id')!r} is not the public key's ({key.id})")
        return key

    def verify(self, signed: bytes, signature: bytes) -> bool:
        if len(signature) != nacl.bindings.crypto_sign_BYTES:
            return False
        try:
            nacl.bindings.crypto_sign_open(signature + signed, self.raw)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
            return False
        return True


class SigningKey:
    """An Ed25519 private key; `sign(data)` -> 64-byte signature."""

    def __init__(self, seed: bytes):
        public, self._secret = nacl.bindings.crypto_sign_seed_keypair(seed)
        self._seed = seed
        self.public_key = PublicKey(public)

    def __repr__(self) -> str:  # never shows the seed
        return f"SigningKey(id={self.public_key.id})"

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(nacl.bindings.crypto_sign_SEEDBYTES))

    @classmethod
    def from_file(cls, path: str | Path) -> SigningKey:
        path = Path(path)
        lines = _key_lines(path)
        if [tag for tag, _ in lines] != [PRIVATE_TAG]:
            hint = " (that is a public key: give the private .key file)" if lines and lines[0][0] == PUBLIC_TAG else ""
            raise DuetError(f"{path}: not a duet private key (one `{PRIVATE_TAG} <base64>` line){hint}")
        try:
            seed = b64decode(lines[0][1], str(path))
        except SignatureError as exc:
            raise DuetError(str(exc)) from None
        if len(seed) != nacl.bindings.crypto_sign_SEEDBYTES:
            raise DuetError(f"{path}: an Ed25519 private key has a 32-byte seed, got {len(seed)} bytes")
        return cls(seed)

    def sign(self, data: bytes) -> bytes:
        return nacl.bindings.crypto_sign(data, self._secret)[: nacl.bindings.crypto_sign_BYTES]

    def header(self, data: bytes) -> str:
        """`ed25519 <key id> <base64 signature>`: how a signature travels (in a header or a file)."""
        return f"{ALGORITHM} {self.public_key.id} {b64encode(self.sign(data))}"

    def private_text(self) -> str:
        return f"{PRIVATE_TAG} {b64encode(self._seed)}"


class Keyring:
    """The public keys a verifier trusts, by key id."""

    def __init__(self, keys: list[PublicKey]):
        self.keys = {key.id: key for key in keys}
        if not self.keys:
            raise SignatureError("a keyring needs at least one public key")

    def __repr__(self) -> str:
        return f"Keyring({', '.join(self.keys)})"

    @classmethod
    def from_file(cls, path: str | Path) -> Keyring:
        """Every `ed25519 <base64>` line of a public key file."""
        path = Path(path)
        lines = _key_lines(path)
        if any(tag == PRIVATE_TAG for tag, _ in lines):
            raise DuetError(f"{path}: is a private key; a device is given the public .pub file")
        if not lines or any(tag != PUBLIC_TAG for tag, _ in lines):
            raise DuetError(f"{path}: not a duet public key file (`{PUBLIC_TAG} <base64>` lines)")
        try:
            return cls([PublicKey(b64decode(text, str(path))) for _, text in lines])
        except SignatureError as exc:
            raise DuetError(f"{path}: {exc}") from None

    @classmethod
    def of(cls, keys: Keyring | str | Path | None) -> Keyring | None:
        """A keyring, or one read from a public key file; None stays None (no signatures checked)."""
        return keys if keys is None or isinstance(keys, Keyring) else cls.from_file(keys)

    def union(self, keys: list[PublicKey]) -> Keyring:
        return Keyring([*self.keys.values(), *keys])

    def verify(self, signed: bytes, header: str | None, what: str) -> str:
        """Check `ed25519 <key id> <base64 signature>` over `signed`; the signer's key id, else SignatureError."""
        if not header:
            raise SignatureError(f"{what}: not signed, and a trusted key is configured")
        parts = header.split()
        if len(parts) != 3 or parts[0] != ALGORITHM:
            raise SignatureError(f"{what}: malformed signature (expected `{ALGORITHM} <key id> <base64>`)")
        kid, signature = parts[1], b64decode(parts[2], f"{what}: signature")
        key = self.keys.get(kid)
        if key is None:
            raise SignatureError(f"{what}: signed by key {kid}, which is not trusted (trusted: {', '.join(self.keys)})")
        if not key.verify(signed, signature):
            raise SignatureError(f"{what}: signature by key {kid} does not verify (altered after signing)")
        return kid


def _key_lines(path: Path) -> list[tuple[str, str]]:
    """(tag, base64) of each non-comment line of a key file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DuetError(f"{path}: no such key file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DuetError(f"{path}: unreadable key file ({getattr(exc, 'strerror', None) or exc})") from None
    lines = []
    for line in text.splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            lines.append((parts[0], parts[1] if len(parts) > 1 else ""))
    return lines


def write_key_pair(prefix: str | Path, overwrite: bool = False) -> tuple[Path, Path, SigningKey]:
    """PREFIX.key (private, mode 0600) and PREFIX.pub (public); refuses to replace a key unless told to."""
    prefix = Path(prefix)
    private, public = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for path in (private, public):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists (pass --overwrite to replace the key)")
    key = SigningKey.generate()
    kid = key.public_key.id
    write_bytes(private, (f"# duet Ed25519 signing key {kid}. Secret: whoever holds it can sign bundles and "
                          f"answers.\n{key.private_text()}\n").encode(), mode=0o600)
    write_bytes(public, f"# duet Ed25519 public key {kid}\n{PUBLIC_TAG} {key.public_key.text}\n".encode())
    return private, public, key


def warn_if_readable(path: str | Path) -> str | None:
    """A warning when a private key file is readable by group or others (None when it is not)."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{path}: private key readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
    return None
