"""Run the service under uvicorn (uvloop + httptools when installed)."""

from __future__ import annotations

import functools
import logging
import os

from duet.cloud.logs import configure_logging
from duet.cloud.settings import Settings

log = logging.getLogger("duet.cloud")


def serve(settings: Settings) -> None:
    import uvicorn

    from duet.cloud.connections import ConnectionGuard, GuardedHTTP, connection_cap

    configure_logging(settings.log_level)
    cap, soft_limit = connection_cap(settings.max_connections)
    if soft_limit is not None:
        log.warning("--max-connections %d lowered to %d per worker: the open-file limit (ulimit -n) is %d",
                    settings.max_connections, cap, soft_limit)
    # uvicorn's HTTP protocol plus a request-head deadline and a connection cap (each worker
    # process gets its own copy of the guard).
    http = functools.partial(GuardedHTTP, guard=ConnectionGuard(settings.header_timeout_s, cap))
    # On SIGTERM/SIGINT uvicorn stops accepting, lets in-flight requests finish for up to
    # graceful_timeout_s, then runs the lifespan shutdown (which drains the batcher).
    options = dict(host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
                   loop="auto", http=http, timeout_graceful_shutdown=settings.graceful_timeout_s)
    if settings.workers == 1:
        from duet.cloud.app import create_app

        uvicorn.run(create_app(settings), **options)
        return
    # Worker processes rebuild the app from the environment (each loads its own model copy);
    # uvicorn's supervisor restarts a worker that dies.
    os.environ.update(settings.to_env())
    uvicorn.run("duet.cloud.app:app_from_env", factory=True, workers=settings.workers, **options)
