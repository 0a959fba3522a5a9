"""Attribution jobs (signed, within quotas), their progress and cancel, published attributions."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from prover_service.api.deps import RequesterDep, ServiceDep, SignerDep
from prover_service.api.schemas import (
    BINARY,
    READ_ERRORS,
    WRITE_ERRORS,
    AttributionOut,
    AttributionRequest,
    JobOut,
)
from prover_service.store import JobRow

router = APIRouter(prefix="/v1", tags=["attributions"])


def job_out(row: JobRow) -> JobOut:
    return JobOut(id=row.id, kind=row.kind, status=row.status, done=row.done, total=row.total,
                  result=row.result, error=row.error)  # fmt: skip


@router.post("/attributions", status_code=status.HTTP_202_ACCEPTED, responses=WRITE_ERRORS,
             summary="Compute and publish an attribution (a signed request; a job)")  # fmt: skip
def create_attribution(body: AttributionRequest, service: ServiceDep, signer: SignerDep) -> JobOut:
    """Start a job that trains what the method needs and publishes the signed datamodel. The
    request must be signed by a Verifier key the Prover admits; 429 with ``Retry-After`` over a
    quota, 413 over the operator's maximum budget."""
    return job_out(service.submit_attribution(body.task_hash, body.method, body.budget, body.p,
                                              body.seed, owner=signer))  # fmt: skip


@router.get("/jobs/{job_id}", responses=READ_ERRORS, summary="A job's status and progress")
def get_job(job_id: str, service: ServiceDep, requester: RequesterDep) -> JobOut:
    """Progress in trainings done / total; ``result`` is the attribution hash when done. For the
    job's owner (a signed request), or anyone if transcripts are public."""
    return job_out(service.job(job_id, requester))


@router.post("/jobs/{job_id}/cancel", responses=WRITE_ERRORS, summary="Cancel an unfinished job")
def cancel_job(job_id: str, service: ServiceDep, signer: SignerDep) -> JobOut:
    """Signed by the job's owner; a finished job is left as it is. A cancelled challenge's
    session becomes ``cancelled``."""
    return job_out(service.jobs.cancel(job_id, signer))


@router.get("/attributions", responses=READ_ERRORS, summary="The latest attribution for a task")
def latest_attribution(task: str, service: ServiceDep) -> AttributionOut:
    """The most recent published attribution of a task (by task hash)."""
    content_hash = service.latest_attribution(task)
    return AttributionOut(content_hash=content_hash, manifest=service.attribution(content_hash)[0])


@router.get("/attributions/{content_hash}", responses=READ_ERRORS,
            summary="A published attribution's signed manifest")  # fmt: skip
def get_attribution(content_hash: str, service: ServiceDep) -> AttributionOut:
    """The signed manifest; the datamodel's bytes are at ``/datamodel``."""
    return AttributionOut(content_hash=content_hash, manifest=service.attribution(content_hash)[0])


@router.get("/attributions/{content_hash}/datamodel", responses=READ_ERRORS | BINARY,
            response_class=Response, summary="A published datamodel's binary form")  # fmt: skip
def get_datamodel(content_hash: str, service: ServiceDep) -> Response:
    """``Datamodel.to_bytes()``; its SHA-256 is the content hash."""
    return Response(service.attribution(content_hash)[1], media_type="application/octet-stream")
