"""Per-app state and the dependency aliases that keep handlers short."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from duet.cloud.batcher import MicroBatcher
from duet.cloud.errors import APIError
from duet.cloud.generation import GeneratorService
from duet.cloud.schemas import ParametersRequest
from duet.cloud.settings import Settings
from duet.cloud.signer import AnswerSigner
from duet.cloud.telemetry import Telemetry


@dataclass(frozen=True)
class Served:
    """One loaded model version with its own micro-batchers, swapped as one on a reload.

    `batcher` batches the run's raw input (its samples, with their mask), `embedding_batcher`
    what privacy-mode devices send (the window's features). `request` is the request body of
    this run (built from its SampleSpec): a reload to a run of another task swaps it too.

    A request takes `state.model` once and uses that object to the end, so its
    answer always comes from the version its header names, even across a swap.
    """

    service: GeneratorService
    batcher: MicroBatcher
    embedding_batcher: MicroBatcher
    request: type[ParametersRequest]
    max_window: int  # longest window accepted (settings.max_window, default 10 x W)
    signature: tuple  # what the run path looked like when this was loaded (see lifecycle.run_signature)

    @property
    def pending(self) -> int:
        """Windows waiting for a forward, both inputs together."""
        return self.batcher.pending + self.embedding_batcher.pending

    async def close(self) -> None:
        """Answer what is pending, then stop both batchers."""
        await self.batcher.close()
        await self.embedding_batcher.close()


@dataclass
class AppState:
    settings: Settings
    telemetry: Telemetry = field(default_factory=Telemetry)
    signer: AnswerSigner | None = None  # signs every parameter answer (settings.sign_key)
    model: Served | None = None
    stopping: bool = False

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.stopping

    @property
    def service(self) -> GeneratorService | None:
        return None if self.model is None else self.model.service


def not_ready() -> APIError:
    """A fresh exception each time (a raised instance keeps growing its traceback)."""
    return APIError(503, "not_ready", "model not loaded yet, or shutting down", headers={"Retry-After": "1"})


async def get_state(request: Request) -> AppState:
    return request.app.state.duet  # async: a sync dependency would run in a worker thread


async def get_ready_state(request: Request) -> AppState:
    state: AppState = request.app.state.duet
    if not state.ready:
        raise not_ready()
    return state


StateDep = Annotated[AppState, Depends(get_state)]
ReadyDep = Annotated[AppState, Depends(get_ready_state)]
