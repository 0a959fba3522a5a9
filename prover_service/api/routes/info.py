"""GET /v1/info: the Prover's key, protocol version, tasks with spec hashes, device."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from prover_service.api.deps import ServiceDep
from prover_service.api.schemas import READ_ERRORS

router = APIRouter(prefix="/v1", tags=["info"])


@router.get(
    "/info",
    responses=READ_ERRORS,
    summary="Public key, protocol version, tasks and device of this Prover",
)
def info(service: ServiceDep) -> dict[str, Any]:
    """What a Verifier needs before it challenges: keys, tasks (with spec hashes), limits."""
    return service.info()
