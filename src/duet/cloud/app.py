"""`create_app(settings)`: the FastAPI app of the parameter service.

The model is loaded in the lifespan handler, never at import, so tests build
their own app (and `duet --help` stays instant).
"""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from duet.cloud.deps import AppState
from duet.cloud.settings import Settings
from duet.cloud.telemetry import MetricsMiddleware

log = logging.getLogger("duet.cloud")


def create_app(settings: Settings) -> FastAPI:
    from duet.cloud.routes import health, metrics, models, parameters

    state = AppState(settings=settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        import torch

        from duet.cloud.batcher import MicroBatcher
        from duet.cloud.generation import GeneratorService

        torch.set_num_threads(settings.threads)
        # Load off the event loop so /healthz keeps answering while weights are verified.
        service = await asyncio.get_running_loop().run_in_executor(None, GeneratorService, settings.run)
        state.batcher = MicroBatcher(
            service.generate, settings.max_batch, settings.max_wait_ms / 1000, settings.min_rows,
            threaded=settings.executor == "thread", on_batch=state.telemetry.observe_batch,
        )
        state.service = service
        # A full garbage collection walks every object torch and FastAPI created at
        # start-up: ~100 ms pauses, measured as the p99 of a loaded service. Freeze
        # them out of the collector's view; later collections see only new objects.
        gc.collect()
        gc.freeze()
        log.info("serving %s (spec %s)", service.version, service.spec.hash)
        try:
            yield
        finally:
            state.stopping = True
            await state.batcher.close()
            gc.unfreeze()

    app = FastAPI(
        title="duet parameter service",
        summary="DUET: the cloud generates each device's dynamic-layer parameters from its real-time window.",
        version=__import__("duet").__version__,
        lifespan=lifespan,
        # Our own Prometheus metrics cover requests; FastAPI's native OpenTelemetry
        # hooks added ~8 us (10%) to the app's time per request (measured in process).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.duet = state
    for module in (parameters, models, health, metrics):
        app.include_router(module.router)

    def openapi() -> dict:
        """The generated schema, plus the loaded vocabulary's size as the item ids' maximum."""
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = copy.deepcopy(get_openapi(title=app.title, version=app.version, summary=app.summary,
                                           routes=app.routes))
        if state.service is not None:
            body = schema["paths"]["/v1/parameters"]["post"]["requestBody"]["content"]["application/json"]
            body["schema"]["properties"]["window"]["items"]["maximum"] = state.service.num_items - 1
            app.openapi_schema = schema  # final once the model is loaded
        return schema

    app.openapi = openapi
    routes = {route.path for module in (parameters, models, health, metrics) for route in module.router.routes}
    routes |= {app.openapi_url, app.docs_url, app.redoc_url}
    app.add_middleware(MetricsMiddleware, telemetry=state.telemetry, routes=routes)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings come from DUET_* variables."""
    return create_app(Settings())
