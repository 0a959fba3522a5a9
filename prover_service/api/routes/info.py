"""GET /v1/info: the Prover's key, protocol version, tasks with spec hashes, device; GET
/v1/ready: whether the start-up task checks have finished."""

from __future__ import annotations

from fastapi import APIRouter

from prover_service.api.deps import ServiceDep
from prover_service.api.schemas import READ_ERRORS, InfoOut, ReadyOut
from prover_service.errors import TaskUnavailable

router = APIRouter(prefix="/v1", tags=["info"])


@router.get(
    "/info",
    responses=READ_ERRORS,
    summary="Public key, protocol version, tasks and device of this Prover",
)
def info(service: ServiceDep) -> InfoOut:
    """What a Verifier needs before it challenges: keys, tasks (with spec hashes), limits."""
    return InfoOut.model_validate(service.info())


@router.get(
    "/ready",
    responses=READ_ERRORS,
    summary="Whether every served task has passed its start-up check (503 while one runs)",
)
def ready(service: ServiceDep) -> ReadyOut:
    """200 once every start-up task check has finished, with the tasks refused; 503
    ``task_not_ready`` with ``Retry-After`` while one runs (``/v1/info`` answers meanwhile)."""
    checks = service.checks
    if not checks.wait(timeout=0):
        raise TaskUnavailable(
            "the start-up task checks are still running", retry_after=checks.RETRY_AFTER_S
        )
    return ReadyOut(ready=True, refused=checks.refused())
