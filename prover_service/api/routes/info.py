"""GET /v1/info: the Prover's key, protocol version, tasks with spec hashes, device."""

from __future__ import annotations

from fastapi import APIRouter

from prover_service.api.deps import ServiceDep
from prover_service.api.schemas import READ_ERRORS, InfoOut

router = APIRouter(prefix="/v1", tags=["info"])


@router.get(
    "/info",
    responses=READ_ERRORS,
    summary="Public key, protocol version, tasks and device of this Prover",
)
def info(service: ServiceDep) -> InfoOut:
    """What a Verifier needs before it challenges: keys, tasks (with spec hashes), limits."""
    return InfoOut.model_validate(service.info())
