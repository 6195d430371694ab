"""`create_app(settings)`: the FastAPI app of the parameter service.

The model is loaded in the lifespan handler, never at import, so tests build
their own app (and `duet --help` stays instant).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from duet.cloud.deps import AppState
from duet.cloud.docs import install_docs
from duet.cloud.errors import install_handlers
from duet.cloud.guard import Guard
from duet.cloud.ratelimit import rate_limits
from duet.cloud.schemas import ErrorResponse
from duet.cloud.settings import Settings
from duet.cloud.telemetry import MetricsMiddleware

log = logging.getLogger("duet.cloud")

PROBES = ("/healthz", "/readyz")


def create_app(settings: Settings) -> FastAPI:
    from duet.cloud.routes import health, metrics, models, parameters
    from duet.cloud.signer import AnswerSigner
    from duet.signing import SigningKey

    key = None if settings.sign_key is None else SigningKey.from_file(settings.sign_key)
    state = AppState(settings=settings, signer=None if key is None else AnswerSigner(key))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        import torch

        from duet.cloud.lifecycle import load_served, watch

        torch.set_num_threads(settings.threads)
        # Load off the event loop so /healthz keeps answering while weights are verified.
        state.model = await asyncio.get_running_loop().run_in_executor(None, load_served, settings, state.telemetry)
        state.telemetry.queue_depth.set_function(lambda: 0 if state.model is None else state.model.pending)
        # A full garbage collection walks every object torch and FastAPI created at
        # start-up: ~100 ms pauses, measured as the p99 of a loaded service. Freeze
        # them out of the collector's view; later collections see only new objects.
        gc.collect()
        gc.freeze()
        log.info("serving %s (spec %s)", state.model.service.version, state.model.service.spec_hash)
        if settings.debug_delay_ms:
            log.warning("DUET_DEBUG_DELAY_MS=%g: every answer is held back on purpose (tests only)",
                        settings.debug_delay_ms)
        watcher = None
        if settings.watch_interval_s > 0:
            watcher = asyncio.create_task(watch(state, on_swap=lambda: setattr(app, "openapi_schema", None)))
        try:
            yield
        finally:
            # uvicorn has already waited (up to graceful_timeout_s) for in-flight requests.
            state.stopping = True
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await state.model.close()
            gc.unfreeze()

    app = FastAPI(
        title="duet parameter service",
        summary="DUET: the cloud generates each device's dynamic-layer parameters from its real-time window.",
        version=__import__("duet").__version__,
        lifespan=lifespan,
        # Our own Prometheus metrics cover requests; FastAPI's native OpenTelemetry
        # hooks added ~8 us (10%) to the app's time per request (measured in process).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        docs_url=None, redoc_url=None,  # served by install_docs from bundled assets, not a CDN
    )
    app.state.duet = state
    for module in (parameters, models, health, metrics):
        app.include_router(module.router)
    install_handlers(app)
    docs = install_docs(app)

    open_paths = {*PROBES, app.openapi_url, *docs}
    guard_options = dict(tokens=settings.auth_tokens(), open_paths=open_paths,
                         max_body_bytes=settings.max_body_bytes, request_timeout=settings.request_timeout_s,
                         limiter=rate_limits(settings.rate_limit, settings.rate_burst, settings.limits_store,
                                             settings.limits_fail, state.telemetry))
    auth = bool(guard_options["tokens"])

    def openapi() -> dict:
        """The generated schema, plus what only the loaded model and the settings know."""
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = copy.deepcopy(get_openapi(title=app.title, version=app.version, summary=app.summary,
                                           routes=app.routes))
        error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
        schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
            "ErrorResponse", ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}"))
        for name, definition in ErrorResponse.model_json_schema(
                ref_template="#/components/schemas/{model}").get("$defs", {}).items():
            schema["components"]["schemas"].setdefault(name, definition)
        schema["components"]["schemas"]["ErrorResponse"].pop("$defs", None)
        if auth:
            schema["components"]["securitySchemes"] = {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "one of the service's tokens (DUET_TOKENS / --tokens-file)"}}
        for path, operations in schema["paths"].items():
            if path in open_paths:
                continue
            for operation in operations.values():
                responses = operation["responses"]
                if auth:
                    operation["security"] = [{"bearer": []}]
                    responses["401"] = {"description": "missing or invalid bearer token",
                                        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                                        "content": {"application/json": {"schema": error_ref}}}
                if settings.rate_limit > 0:
                    responses["429"] = {"description": "this token's (or client's) rate limit is exhausted",
                                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                                        "content": {"application/json": {"schema": error_ref}}}
        if state.model is not None:
            # The served run's own request body: its raw field and bounds come from its SampleSpec.
            body = schema["paths"]["/v1/parameters"]["post"]["requestBody"]["content"]["application/json"]
            body["schema"] = state.model.request.model_json_schema()
            app.openapi_schema = schema  # final until a reload swaps the model
        return schema

    app.openapi = openapi
    routes = {route.path for module in (parameters, models, health, metrics) for route in module.router.routes}
    routes |= {app.openapi_url, *docs}
    app.add_middleware(Guard, **guard_options)
    app.add_middleware(MetricsMiddleware, telemetry=state.telemetry, routes=routes)  # outermost: counts 401/413/429
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings come from DUET_* variables."""
    from duet.cloud.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)
