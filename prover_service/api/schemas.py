"""Request and response bodies of the HTTP API (one schema per use)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from protocol.signing import SignedMessage

__all__ = [
    "AttributionOut",
    "AttributionRequest",
    "ErrorResponse",
    "JobOut",
    "READ_ERRORS",
    "SessionCreated",
    "SessionOut",
    "TranscriptOut",
    "WRITE_ERRORS",
]


class ErrorResponse(BaseModel):
    """Every error: a stable code and a sentence for a person (codes: prover_service.errors)."""

    code: str
    detail: str


_READ = (401, 403, 404, 405, 413, 422, 500, 503)
_WRITE = (*_READ, 409, 429, 507)
READ_ERRORS: dict[int | str, dict[str, object]] = {c: {"model": ErrorResponse} for c in _READ}
WRITE_ERRORS: dict[int | str, dict[str, object]] = {c: {"model": ErrorResponse} for c in _WRITE}


class AttributionRequest(BaseModel):
    """Ask the Prover to compute and publish an attribution."""

    model_config = ConfigDict(extra="forbid")
    task_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    method: str = Field(max_length=32)
    budget: int = Field(ge=1, strict=True)  # the operator's cap is settings.max_budget (413)
    p: float = Field(default=0.5, gt=0, lt=1, strict=True)
    seed: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")


class JobOut(BaseModel):
    """A training job and its progress."""

    id: str
    kind: str
    status: str
    done: int
    total: int
    result: str | None
    error: str | None


class AttributionOut(BaseModel):
    """A published attribution: its signed manifest (the datamodel bytes are a separate GET)."""

    content_hash: str
    manifest: SignedMessage


class SessionCreated(BaseModel):
    """A challenge was accepted: follow the session and its job."""

    session_id: str
    job_id: str


class SessionOut(BaseModel):
    """A verification session's state."""

    session_id: str
    task_hash: str
    attribution_hash: str
    challenge_digest: str
    status: str
    verdict: str | None
    job: JobOut
    created_at: float


class TranscriptOut(BaseModel):
    """Every signed message of a session; arrays are fetched by hash from /v1/arrays/{sha}."""

    session_id: str
    status: str
    verdict: str | None
    prover_key: str
    attribution: SignedMessage
    challenge: SignedMessage
    response: SignedMessage | None
    verdict_message: SignedMessage | None
