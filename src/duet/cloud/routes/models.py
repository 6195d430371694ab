"""What the service serves: versions, head layout, dtypes, window length."""

from __future__ import annotations

from fastapi import APIRouter

from duet.cloud.deps import ReadyDep
from duet.cloud.schemas import ErrorResponse, ModelsResponse

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelsResponse, summary="Served model versions and their head layout",
            responses={503: {"model": ErrorResponse, "description": "model not loaded yet, or shutting down"}})
async def models(state: ReadyDep) -> ModelsResponse:
    served, signer = state.model, state.signer
    return ModelsResponse.model_validate({"models": [{**served.service.info(), "max_window": served.max_window,
                                                      "signing_key": signer and signer.key.public_key.id}]})
