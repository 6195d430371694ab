"""Loading a model version, and hot reload: swap in a new run without dropping a request.

The service watches its `--run` path. Point it at a symlink and re-point the
symlink atomically to publish a new version:

    ln -sfn runs/v2 current.tmp && mv -T current.tmp current

(or replace the run directory itself atomically). Every `watch_interval_s`
each worker compares the path's target and the inode, size and mtime of its
`manifest.json` with what it loaded. On a change it loads and verifies the new
run in a thread while the old version keeps answering, then swaps the two in
one assignment; requests already holding the old version finish on it (its
micro-batcher drains, then closes). The new run may be of another task: its
request body and OpenAPI schema are built from it and swapped with it. A run
that fails to load (tampered, unfinished, wrong kind) is logged in one line and
the old version stays.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable
from pathlib import Path

from duet.cloud.deps import AppState, Served
from duet.cloud.settings import Settings
from duet.cloud.telemetry import Telemetry

log = logging.getLogger("duet.cloud")


def run_signature(run: Path) -> tuple | None:
    """(real path, manifest inode, size, mtime): changes whenever a different finished run is there."""
    try:
        real = os.path.realpath(run)
        st = os.stat(os.path.join(real, "manifest.json"))
    except OSError:
        return None
    return (real, st.st_ino, st.st_size, st.st_mtime_ns)


def load_served(settings: Settings, telemetry: Telemetry) -> Served:
    """Resolve the run path once, then verify and load that run (blocking: call it off the loop)."""
    from duet.cloud.batcher import MicroBatcher
    from duet.cloud.generation import GeneratorService
    from duet.cloud.schemas import request_model
    from duet.errors import ArtifactError

    signature = run_signature(settings.run)
    if signature is None:
        raise ArtifactError(f"{settings.run}: not a finished duet run (no manifest.json)")
    # Load from the resolved path: a symlink re-pointed meanwhile cannot mix two runs.
    service = GeneratorService(signature[0], device=settings.device)

    def batcher(forward: Callable[..., object]) -> MicroBatcher:
        return MicroBatcher(
            forward, settings.max_batch, settings.max_wait_ms / 1000, settings.min_rows,
            threaded=settings.executor == "thread", on_batch=telemetry.observe_batch,
            max_queue=settings.max_queue, delay=settings.debug_delay_ms / 1000,
        )

    max_window = settings.max_window or 10 * service.window_len
    # Everything that depends on the run's task (its sample, the request body) is built from
    # the run itself, so a reload to a run of another task swaps all of it at once.
    return Served(service=service, batcher=batcher(service.generate),
                  embedding_batcher=batcher(service.generate_features),
                  request=request_model(service.sample, service.feature_dim, service.window_len, max_window),
                  max_window=max_window, signature=signature)


async def watch(state: AppState, on_swap: Callable[[], None]) -> None:
    """Poll the run path and swap in each new version (runs until cancelled)."""
    from duet.checkpoint import model_version

    settings, loop = state.settings, asyncio.get_running_loop()
    failed: tuple | None = None
    closing: set[asyncio.Task] = set()
    while True:
        await asyncio.sleep(settings.watch_interval_s)
        signature = run_signature(settings.run)
        if signature is None or signature == state.model.signature or signature == failed:
            continue
        try:
            if model_version(signature[0]) == state.model.service.version:
                # Same manifest bytes (touched, or copied back): nothing to load.
                state.model = Served(**{**state.model.__dict__, "signature": signature})
                continue
            served = await loop.run_in_executor(None, load_served, settings, state.telemetry)
        except Exception as exc:  # a bad new run must never take the service down
            failed = signature
            state.telemetry.reloads.labels("failed").inc()
            log.error("reload of %s failed; still serving %s: %s", settings.run, state.model.service.version,
                      str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        old, state.model = state.model, served
        state.telemetry.reloads.labels("ok").inc()
        on_swap()
        gc.freeze()  # keep the new model's objects out of full collections, as at start-up
        log.warning("now serving %s (was %s)", served.service.version, old.service.version)
        task = asyncio.create_task(old.close())  # the old version answers what it holds
        closing.add(task)
        task.add_done_callback(closing.discard)
