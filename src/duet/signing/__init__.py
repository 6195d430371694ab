"""Ed25519 signatures, so that a device can tell that the cloud made an artifact.

A sha256 in a manifest catches corruption; whoever can rewrite the files can
rewrite the manifest too. A signature by the cloud's private key cannot be
redone without that key. Signed: a bundle's `manifest.json` (`manifests`) and
every parameter answer (`answers`). Keys and their files: `keys`. PyNaCl
(libsodium) does the cryptography; standard library, PyNaCl and duet.atomic
only, so the torch-free device runtime imports this package.
"""

from duet.signing.answers import SIGNATURE_HEADER, answer_message, sign_answers, verify_answer
from duet.signing.keys import (
    Keyring,
    PublicKey,
    SignatureError,
    SigningKey,
    warn_if_readable,
    write_key_pair,
)
from duet.signing.manifests import (
    MANIFEST_DOMAIN,
    SIGNATURE_FILE,
    listed_keys,
    sign_manifest,
    verify_manifest,
    write_signature,
)

__all__ = ["MANIFEST_DOMAIN", "SIGNATURE_FILE", "SIGNATURE_HEADER", "Keyring", "PublicKey", "SignatureError",
           "SigningKey", "answer_message", "listed_keys", "sign_answers", "sign_manifest", "verify_answer",
           "verify_manifest", "warn_if_readable", "write_key_pair", "write_signature"]
