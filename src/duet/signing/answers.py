"""Signed parameter answers: one Ed25519 signature per micro-batch, a Merkle path per answer.

An answer's message is its model version, spec hash, body sha256 and the sha256
of the request that asked for it (`answer_message`). The service signs the
answers it finishes together at once: their messages are the leaves of a
Merkle tree over SHA-256 (RFC 6962's 0x00 leaf and 0x01 node prefixes, so a
node never passes for a leaf), the key signs `duet-answers/1\\n` + the root,
and each answer carries that signature and the path from its leaf to the root:

    X-Duet-Signature: ed25519 <key id> <base64 signature> [<base64 path>]

A path is a run of 33-byte steps: a side byte (0: the sibling hash is on the
left, 1: on the right) and the sibling's 32 bytes. A lone answer has no path
(the root is its leaf). A verifier recomputes the root from its own message and
the path, then checks the signature. At concurrency 64 about 23 answers share
a signature: Ed25519 signing costs ~20 us, a path a few hashes.
"""

from __future__ import annotations

import hashlib

from duet.signing.keys import Keyring, SignatureError, SigningKey, b64decode, b64encode

SIGNATURE_HEADER = "X-Duet-Signature"
ANSWER_DOMAIN, ROOT_DOMAIN = b"duet-answer/1\n", b"duet-answers/1\n"
LEFT, RIGHT = 0, 1  # side of the sibling in a path step
STEP = 33
MAX_STEPS = 32  # a tree of up to 2**32 answers; longer paths are refused unread


def answer_message(version: str, spec_hash: str, content_sha256: str, request_sha256: str) -> bytes:
    """What an answer's signature covers: model version, spec hash, body and request digests."""
    return b"".join((ANSWER_DOMAIN, version.encode(), b"\n", spec_hash.encode(), b"\n", content_sha256.encode(),
                     b"\n", request_sha256.encode()))


def _leaf(message: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + message).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def sign_answers(key: SigningKey, messages: list[bytes]) -> list[str]:
    """The `X-Duet-Signature` of each message, all under one signature of their Merkle root."""
    paths = [bytearray() for _ in messages]
    level = [(_leaf(m), [i]) for i, m in enumerate(messages)]  # (hash, the leaves below it)
    while len(level) > 1:
        up = []
        for (left, below_left), (right, below_right) in zip(level[0::2], level[1::2], strict=False):
            for i in below_left:
                paths[i] += bytes([RIGHT]) + right
            for i in below_right:
                paths[i] += bytes([LEFT]) + left
            up.append((_node(left, right), below_left + below_right))
        if len(level) % 2:
            up.append(level[-1])  # the odd one out moves up a level as it is
        level = up
    signature = key.header(ROOT_DOMAIN + level[0][0])
    return [f"{signature} {b64encode(bytes(path))}" if path else signature for path in paths]


def merkle_root(message: bytes, path: bytes, what: str) -> bytes:
    """The root that `path` leads to from `message`'s leaf."""
    if len(path) % STEP or len(path) > MAX_STEPS * STEP:
        raise SignatureError(f"{what}: malformed signature path")
    node = _leaf(message)
    for start in range(0, len(path), STEP):
        side, sibling = path[start], path[start + 1 : start + STEP]
        if side not in (LEFT, RIGHT):
            raise SignatureError(f"{what}: malformed signature path")
        node = _node(sibling, node) if side == LEFT else _node(node, sibling)
    return node


def verify_answer(keys: Keyring, message: bytes, header: str | None, what: str) -> str:
    """Check an answer's `X-Duet-Signature` against its message; the signer's key id, else SignatureError."""
    parts = header.split() if header else []
    path = b64decode(parts.pop(), f"{what}: signature path") if len(parts) == 4 else b""
    root = merkle_root(message, path, what)
    return keys.verify(ROOT_DOMAIN + root, " ".join(parts) or header, what)
