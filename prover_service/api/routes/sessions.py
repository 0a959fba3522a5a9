"""Challenges, sessions, responses, verdicts, arrays and transcripts.

Reads are for the session's own Verifier (a signed request: ``X-VDA-*`` headers) unless the
operator made transcripts public; a challenge and a verdict are signed messages themselves.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from protocol.signing import SignedMessage
from prover_service.api.deps import AddressDep, RequesterDep, ServiceDep
from prover_service.api.routes.attributions import job_out
from prover_service.api.schemas import (
    BINARY,
    READ_ERRORS,
    WRITE_ERRORS,
    SessionCreated,
    SessionOut,
    TranscriptOut,
)
from prover_service.tables import SessionRow

router = APIRouter(prefix="/v1", tags=["sessions"])


def _session_out(row: SessionRow, service: ServiceDep) -> SessionOut:
    return SessionOut(session_id=row.id, task_hash=row.task_hash,
                      attribution_hash=row.attribution_hash,
                      challenge_digest=row.challenge_digest, status=row.status,
                      verdict=row.verdict, job=job_out(service.job(row.job_id)),
                      created_at=row.created_at)  # fmt: skip


@router.post("/challenges", status_code=status.HTTP_201_CREATED, responses=WRITE_ERRORS,
             summary="Send a signed challenge; training starts in the background")  # fmt: skip
def create_challenge(
    body: SignedMessage, service: ServiceDep, address: AddressDep
) -> SessionCreated:
    """Signed by the key it names, with a fresh nonce and time stamp, from a key the Prover
    admits, within its quotas. A nonce seen before is 409 (naming the session when the challenge
    is the same), even after the time window: a resuming Verifier finds its session."""
    row = service.sessions.submit(body, address)
    return SessionCreated(session_id=row.id, job_id=row.job_id)


@router.get("/sessions", responses=READ_ERRORS, summary="Sessions visible to the requester")
def list_sessions(
    service: ServiceDep, requester: RequesterDep, task: str | None = None,
    status: str | None = None, verdict: str | None = None,
) -> list[SessionOut]:  # fmt: skip
    """Filter by task hash, status (training, ready, decided, failed, cancelled) and verdict."""
    return [
        _session_out(r, service) for r in service.sessions.list(requester, task, status, verdict)
    ]


@router.get("/sessions/{session_id}", responses=READ_ERRORS,
            summary="A session's status and progress")  # fmt: skip
def get_session(session_id: str, service: ServiceDep, requester: RequesterDep) -> SessionOut:
    """Training progress of the session's job, and the verdict once posted."""
    return _session_out(service.sessions.read(session_id, requester), service)


@router.get("/sessions/{session_id}/response", responses=WRITE_ERRORS,
            summary="The signed response manifest (409 until training is done)")  # fmt: skip
def get_response(session_id: str, service: ServiceDep, requester: RequesterDep) -> SignedMessage:
    """The manifest binds the values and probe arrays by SHA-256; fetch them from /v1/arrays."""
    return service.sessions.response(session_id, requester)


@router.get("/arrays/{sha}", responses=READ_ERRORS | BINARY, response_class=Response,
            summary="A response's binary array (.npy bytes) by its SHA-256")  # fmt: skip
def get_array(sha: str, service: ServiceDep, requester: RequesterDep) -> Response:
    """Content-addressed and re-hashed on every read; for the Verifier of a session it answers."""
    return Response(service.sessions.array(sha, requester), media_type="application/octet-stream")


@router.post("/sessions/{session_id}/verdict", responses=WRITE_ERRORS,
             summary="Post the signed verdict, opening the spot-check commitment")  # fmt: skip
def post_verdict(session_id: str, body: SignedMessage, service: ServiceDep) -> SessionOut:
    """Recorded once; it must open the challenge's commitment. The same signed verdict posted
    again is answered 200 (a re-post after a lost reply); a different one 409."""
    return _session_out(service.sessions.post_verdict(session_id, body), service)


@router.get("/sessions/{session_id}/transcript", responses=READ_ERRORS,
            summary="Every signed message of a session, for a third-party audit")  # fmt: skip
def get_transcript(session_id: str, service: ServiceDep, requester: RequesterDep) -> TranscriptOut:
    """Visible to the session's verifier (signed request) or to anyone if transcripts are public."""
    return TranscriptOut.model_validate(service.sessions.transcript(session_id, requester))
