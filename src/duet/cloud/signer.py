"""Signs parameter answers in batches: the answers finished in one event-loop turn share one signature.

The micro-batcher resolves a whole generator batch at once, so its requests
reach `header()` in the same turn; the first schedules one flush for the end
of that turn, which signs all of them (duet.signing.answers: one Ed25519
signature over their Merkle root, a path each). A lone request is signed
alone, one loop turn later.
"""

from __future__ import annotations

import asyncio

from duet.signing import SigningKey, sign_answers


class AnswerSigner:
    def __init__(self, key: SigningKey):
        self.key = key
        self._pending: list[tuple[bytes, asyncio.Future]] = []

    async def header(self, message: bytes) -> str:
        """The `X-Duet-Signature` of one answer's message."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((message, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            headers = sign_answers(self.key, [message for message, _ in pending])
        except Exception as exc:  # never leave a request waiting
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), header in zip(pending, headers, strict=True):
            if not future.done():  # a request cancelled meanwhile (deadline) is skipped
                future.set_result(header)
