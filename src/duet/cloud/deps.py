"""Per-app state and the dependency aliases that keep handlers short."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from duet.cloud.batcher import MicroBatcher
from duet.cloud.generation import GeneratorService
from duet.cloud.settings import Settings
from duet.cloud.telemetry import Telemetry


@dataclass
class AppState:
    settings: Settings
    telemetry: Telemetry = field(default_factory=Telemetry)
    service: GeneratorService | None = None
    batcher: MicroBatcher | None = None
    stopping: bool = False

    @property
    def ready(self) -> bool:
        return self.service is not None and not self.stopping


async def get_state(request: Request) -> AppState:
    return request.app.state.duet  # async: a sync dependency would run in a worker thread


async def get_ready_state(request: Request) -> AppState:
    state: AppState = request.app.state.duet
    if not state.ready:
        raise HTTPException(503, "model not loaded", headers={"Retry-After": "1"})
    return state


StateDep = Annotated[AppState, Depends(get_state)]
ReadyDep = Annotated[AppState, Depends(get_ready_state)]
