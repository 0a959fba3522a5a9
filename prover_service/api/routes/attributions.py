"""Attribution jobs (signed, within quotas), their progress and cancel, published attributions."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status

from protocol.datamodel import Datamodel
from prover_service.api.deps import AddressDep, RequesterDep, ServiceDep, SignerDep
from prover_service.api.schemas import (
    BINARY,
    READ_ERRORS,
    WRITE_ERRORS,
    AttributionOut,
    AttributionRequest,
    ImportAccepted,
    JobOut,
)
from prover_service.errors import Malformed
from prover_service.tables import JobRow

router = APIRouter(prefix="/v1", tags=["attributions"])


def job_out(row: JobRow) -> JobOut:
    return JobOut(id=row.id, kind=row.kind, status=row.status, done=row.done, total=row.total,
                  result=row.result, error=row.error)  # fmt: skip


@router.post("/attributions", status_code=status.HTTP_202_ACCEPTED, responses=WRITE_ERRORS,
             summary="Compute and publish an attribution (a signed request; a job)")  # fmt: skip
def create_attribution(
    body: AttributionRequest, service: ServiceDep, signer: SignerDep, address: AddressDep
) -> JobOut:
    """Start a job that trains what the method needs and publishes the signed datamodel. The
    request must be signed by a Verifier key the Prover admits; 429 with ``Retry-After`` over a
    quota, 413 over the operator's maximum budget."""
    return job_out(service.attributions.submit(body.task_hash, body.method, body.budget, body.p,
                                              body.seed, owner=signer,
                                              address=address))  # fmt: skip


_BINARY_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
}  # fmt: skip
_HEX64 = r"^[0-9a-f]{64}$"


async def raw_body(request: Request) -> bytes:
    """The request body as bytes; it must be ``application/octet-stream`` (not a JSON list)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/octet-stream":
        raise Malformed(
            f"send the array as binary .npy bytes with Content-Type application/octet-stream "
            f"(numpy.save to a buffer), not {kind or 'no content type'}"
        )
    return await request.body()


RawBodyDep = Annotated[bytes, Depends(raw_body)]


def provenance_query(
    tool: Annotated[
        str, Query(max_length=64, description="The outside tool (traker, dattri...)")
    ] = "unknown",
    tool_version: Annotated[str, Query(max_length=64)] = "",
    outside_trainings: Annotated[
        int, Query(ge=0, description="Trainings (checkpoints) spent by the tool")
    ] = 0,
    settings: Annotated[
        str, Query(max_length=4096, description="The tool's settings as a JSON object")
    ] = "{}",
) -> dict[str, Any]:
    """The provenance fields of an upload, from the (signed) query string."""
    try:
        parsed = json.loads(settings)
    except ValueError:
        raise Malformed("settings must be a JSON object") from None
    if not isinstance(parsed, dict):
        raise Malformed("settings must be a JSON object")
    return {"tool": tool, "tool_version": tool_version, "outside_trainings": outside_trainings,
            "settings": parsed}  # fmt: skip


ProvenanceDep = Annotated[dict[str, Any], Depends(provenance_query)]


@router.post("/attributions/import", status_code=status.HTTP_202_ACCEPTED,
             responses=WRITE_ERRORS, openapi_extra=_BINARY_BODY,
             summary="Upload scores to calibrate and publish (signed; a job)")  # fmt: skip
def import_attribution(
    service: ServiceDep, signer: SignerDep, body: RawBodyDep, provenance: ProvenanceDep,
    address: AddressDep, task_hash: Annotated[str, Query(pattern=_HEX64)],
    budget: Annotated[int, Query(ge=1, description="Calibration trainings (64 or more advised)")],
    p: Annotated[float, Query(gt=0, lt=1)] = 0.5,
    seed: Annotated[str, Query(pattern=r"^([0-9a-f]{64})?$")] = "",
    orientation: Annotated[str | None, Query(
        description="train-by-target (TRAK, dattri: (N, Z)) or target-by-train ((Z, N)); "
                    "inferred from the shape when N != Z, required when N = Z")] = None,
) -> ImportAccepted:  # fmt: skip
    """The body is the scores as ``.npy`` bytes (``numpy.save``), (Z, N) or (N, Z); the
    parameters and the tool's provenance (``tool``, ``tool_version``, ``outside_trainings``,
    ``settings`` as JSON) are in the query string, which the request signature covers. Shape,
    orientation and finite values are checked before the job is queued; the job trains
    ``budget`` subsets, fits each target's scale and publishes the datamodel with its
    provenance and calibration figures in the signed manifest. The body may reach
    ``max_upload_bytes`` for an admitted key; past ``max_body_bytes`` it is streamed to disk and
    its signature checked before it is loaded (:mod:`prover_service.limits`). The ``.npy``
    header is checked against the task's shape before anything is allocated."""
    job, loaded, notes = service.attributions.submit_import(
        task_hash, body, budget, p, seed, orientation, provenance, owner=signer, address=address
    )
    return ImportAccepted(job=job_out(job), orientation=loaded.orientation.value,
                          orientation_inferred=loaded.inferred, notes=notes)  # fmt: skip


@router.post("/attributions/datamodel", status_code=status.HTTP_201_CREATED,
             responses=WRITE_ERRORS, openapi_extra=_BINARY_BODY,
             summary="Publish a complete outside datamodel as it is (signed)")  # fmt: skip
def publish_datamodel(
    service: ServiceDep,
    signer: SignerDep,
    body: RawBodyDep,
    provenance: ProvenanceDep,
    address: AddressDep,
    task_hash: Annotated[str, Query(pattern=_HEX64)],
) -> AttributionOut:
    """The body is ``Datamodel.to_bytes()`` (intercept (Z,) and weights (Z, N)); nothing is
    trained. The signed manifest records the provenance; its ``trainings`` are the tool's."""
    content_hash = service.attributions.publish_datamodel(
        task_hash, Datamodel.from_bytes(body), provenance, owner=signer, address=address
    )
    return AttributionOut(
        content_hash=content_hash, manifest=service.attributions.attribution(content_hash)[0]
    )


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


@router.post("/jobs/{job_id}/resume", responses=WRITE_ERRORS,
             summary="Queue a cancelled job again")  # fmt: skip
def resume_job(job_id: str, service: ServiceDep, signer: SignerDep) -> JobOut:
    """Signed by the job's owner, within the quotas; it trains again from its first chunk (a
    cancel deleted its partial arrays) and its session returns to ``training``. An unfinished
    job is left as it is; a finished or failed one is 409."""
    service.gate.admit(signer)  # new work: the allow-list and the expensive-request rate
    return job_out(service.jobs.resume(job_id, signer))


@router.get("/attributions", responses=READ_ERRORS, summary="The latest attribution for a task")
def latest_attribution(task: str, service: ServiceDep) -> AttributionOut:
    """The most recent published attribution of a task (by task hash)."""
    content_hash = service.attributions.latest(task)
    return AttributionOut(
        content_hash=content_hash, manifest=service.attributions.attribution(content_hash)[0]
    )


@router.get("/attributions/{content_hash}", responses=READ_ERRORS,
            summary="A published attribution's signed manifest")  # fmt: skip
def get_attribution(content_hash: str, service: ServiceDep) -> AttributionOut:
    """The signed manifest; the datamodel's bytes are at ``/datamodel``."""
    return AttributionOut(
        content_hash=content_hash, manifest=service.attributions.attribution(content_hash)[0]
    )


@router.get("/attributions/{content_hash}/datamodel", responses=READ_ERRORS | BINARY,
            response_class=Response, summary="A published datamodel's binary form")  # fmt: skip
def get_datamodel(content_hash: str, service: ServiceDep) -> Response:
    """``Datamodel.to_bytes()``; its SHA-256 is the content hash."""
    return Response(
        service.attributions.attribution(content_hash)[1], media_type="application/octet-stream"
    )
