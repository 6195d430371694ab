"""Run the service under uvicorn (uvloop + httptools when installed)."""

from __future__ import annotations

import os

from duet.cloud.settings import Settings


def serve(settings: Settings) -> None:
    import uvicorn

    options = dict(host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
                   loop="auto", http="auto", timeout_graceful_shutdown=5)
    if settings.workers == 1:
        from duet.cloud.app import create_app

        uvicorn.run(create_app(settings), **options)
        return
    # Worker processes rebuild the app from the environment (each loads its own model copy).
    os.environ.update(settings.to_env())
    uvicorn.run("duet.cloud.app:app_from_env", factory=True, workers=settings.workers, **options)
