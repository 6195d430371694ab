"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from duet.cloud.deps import StateDep
from duet.cloud.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="Readiness: the model is loaded",
            responses={503: {"model": Health, "description": "model not loaded yet, or shutting down"}})
async def readyz(state: StateDep) -> Health | JSONResponse:
    if state.ready:
        return Health(status="ok")
    return JSONResponse({"status": "stopping" if state.stopping else "loading"}, status_code=503)
