"""Attribution jobs and published attributions."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from prover_service.api.deps import ServiceDep
from prover_service.api.schemas import AttributionOut, AttributionRequest, ErrorResponse, JobOut
from prover_service.store import JobRow

router = APIRouter(prefix="/v1", tags=["attributions"])
ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}


def job_out(row: JobRow) -> JobOut:
    return JobOut(id=row.id, kind=row.kind, status=row.status, done=row.done, total=row.total,
                  result=row.result, error=row.error)  # fmt: skip


@router.post("/attributions", status_code=status.HTTP_202_ACCEPTED, responses=ERRORS,
             summary="Compute and publish an attribution (a job)")  # fmt: skip
def create_attribution(body: AttributionRequest, service: ServiceDep) -> JobOut:
    """Start a job that trains what the method needs and publishes the signed datamodel."""
    return job_out(service.submit_attribution(body.task_hash, body.method, body.budget, body.p,
                                              body.seed))  # fmt: skip


@router.get("/jobs/{job_id}", responses=ERRORS, summary="A job's status and progress")
def get_job(job_id: str, service: ServiceDep) -> JobOut:
    """Progress in trainings done / total; ``result`` is the attribution hash when done."""
    return job_out(service.job(job_id))


@router.get("/attributions", responses=ERRORS, summary="The latest attribution for a task")
def latest_attribution(task: str, service: ServiceDep) -> AttributionOut:
    """The most recent published attribution of a task (by task hash)."""
    content_hash = service.latest_attribution(task)
    return AttributionOut(content_hash=content_hash, manifest=service.attribution(content_hash)[0])


@router.get("/attributions/{content_hash}", responses=ERRORS,
            summary="A published attribution's signed manifest")  # fmt: skip
def get_attribution(content_hash: str, service: ServiceDep) -> AttributionOut:
    """The signed manifest; the datamodel's bytes are at ``/datamodel``."""
    return AttributionOut(content_hash=content_hash, manifest=service.attribution(content_hash)[0])


@router.get("/attributions/{content_hash}/datamodel", responses=ERRORS,
            response_class=Response, summary="A published datamodel's binary form")  # fmt: skip
def get_datamodel(content_hash: str, service: ServiceDep) -> Response:
    """``Datamodel.to_bytes()``; its SHA-256 is the content hash."""
    return Response(service.attribution(content_hash)[1], media_type="application/octet-stream")
