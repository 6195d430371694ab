"""In-process micro-batching: concurrent requests share one generator forward.

A request's window (arrays: its samples, or its features, each with their mask)
joins the pending list; a forward starts when `max_batch`
windows are pending or the oldest has waited `max_wait` seconds, whichever is
first, and never while another forward is running (those requests simply
form the next batch). The decision is taken one event-loop iteration after a
submit, so requests that arrived together batch together even with
`max_wait = 0`. Each forward is padded to `min_rows` rows so that an answer
does not depend on how many others shared its forward.

The queue in front of the forward is bounded: with `max_queue` windows already
waiting, `submit` raises `QueueFull` at once (the service answers 503 with
Retry-After) instead of letting latency grow without limit. A waiting request
that is cancelled (its deadline passed, its client went away) leaves the queue
and never reaches a forward.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class QueueFull(Exception):
    """`max_queue` windows are already waiting for a forward."""


class MicroBatcher:
    def __init__(self, forward: Callable[..., np.ndarray], max_batch: int, max_wait: float,
                 min_rows: int = 1, threaded: bool = False,
                 on_batch: Callable[[int, float], None] | None = None,
                 max_queue: int | None = None, delay: float = 0.0):
        """forward(*parts): each part stacked over requests, (E, ...) -> (E, ...), row i answers request i.
        on_batch(size, seconds) after each forward.

        delay: seconds every forward's answers are held back (without blocking the
        loop), for tests that need requests to stay in flight; 0 in production.
        """
        self.forward, self.max_batch, self.max_wait, self.min_rows = forward, max_batch, max_wait, min_rows
        self.on_batch, self.max_queue, self.delay = on_batch, max_queue, delay
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="duet-generate") if threaded else None
        self._pending: list[tuple[tuple[np.ndarray, ...], asyncio.Future, float]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False
        self._tick_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, *parts: np.ndarray) -> np.ndarray:
        """parts (e.g. a window (W,), or features (W, D) and mask (W,)) -> this request's row of the output.

        Every request of one batcher gives parts of the same shapes."""
        if self.max_queue is not None and len(self._pending) >= self.max_queue:
            # Requests that gave up (deadline, disconnect) do not hold places in the queue.
            self._pending = [item for item in self._pending if not item[1].cancelled()]
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} windows already waiting")
        loop = self._loop = self._loop or asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((parts, future, loop.time()))
        if not self._tick_scheduled:
            # After the requests already scheduled in this loop iteration have submitted too.
            self._tick_scheduled = True
            loop.call_soon(self._tick)
        return await future

    def _tick(self) -> None:
        self._tick_scheduled = False
        self._maybe_start()

    def _maybe_start(self) -> None:
        if self._busy or not self._pending:
            return
        due = self._pending[0][2] + self.max_wait
        if len(self._pending) >= self.max_batch or self._loop.time() >= due:
            self._start()
        elif self._timer is None:
            self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._maybe_start()

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        batch = [item for item in batch if not item[1].cancelled()]  # clients that went away
        if not batch:
            self._maybe_start()
            return
        stacked = [np.stack(part) for part in zip(*(parts for parts, _, _ in batch), strict=True)]  # each (E, ...)
        if len(batch) < self.min_rows:
            stacked = [np.concatenate([rows, np.zeros((self.min_rows - len(rows), *rows.shape[1:]), rows.dtype)])
                       for rows in stacked]
        self._busy = True
        started = time.perf_counter()
        if self._executor is None:
            try:
                out = self.forward(*stacked)
            except Exception as exc:  # every waiting request gets the error, the service goes on
                self._finish(batch, None, exc, started)
            else:
                self._finish(batch, out, None, started)
            return
        task = self._loop.run_in_executor(self._executor, self.forward, *stacked)
        task.add_done_callback(lambda done: self._finish(batch, None if done.exception() else done.result(),
                                                         done.exception(), started))

    def _finish(self, batch: list, out: np.ndarray | None, error: BaseException | None, started: float) -> None:
        if self.delay > 0:  # still busy meanwhile: later requests queue up, as behind a slow forward
            self._loop.call_later(self.delay, self._answer, batch, out, error, started)
        else:
            self._answer(batch, out, error, started)

    def _answer(self, batch: list, out: np.ndarray | None, error: BaseException | None, started: float) -> None:
        self._busy = False
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - started)
        for i, (_, future, _) in enumerate(batch):
            if future.cancelled():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(out[i])
        # Let requests parsed meanwhile join before deciding on the next forward.
        self._loop.call_soon(self._maybe_start)

    @property
    def pending(self) -> int:
        """Windows waiting for a forward."""
        return len(self._pending)

    async def close(self) -> None:
        """Answer what is pending, then stop the executor."""
        while self._pending or self._busy:
            if not self._busy:
                self._start()
            await asyncio.sleep(0.001)
        if self._timer is not None:
            self._timer.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
