"""The HTTP bodies both sides use (pure pydantic): what the Prover sends, what the Verifier parses.

The signed messages themselves (challenge, response, verdict, tree head) are
:class:`protocol.signing.SignedMessage`; this module holds the plain JSON around them: requests,
job and session states, the Prover's info, the log's proofs and the one error shape. The Prover's
routes declare them as their bodies (so ``/openapi.json`` is generated from them) and the
Verifier's client parses every reply into them, where a reply that does not fit -- wrong types,
missing or extra fields -- is :class:`protocol.errors.MalformedResponseError`: the Prover's
misbehaviour, never a traceback.

Replies forbid extra fields and are frozen: a field the Verifier does not know is a change of
the wire format, to be made here on both sides at once.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from protocol.errors import MalformedResponseError
from protocol.signing import SignedMessage

__all__ = [
    "AttributionOut",
    "AttributionRequest",
    "ConsistencyProofOut",
    "ErrorResponse",
    "ImportAccepted",
    "InclusionProofOut",
    "InfoOut",
    "JobOut",
    "LimitsOut",
    "ReadyOut",
    "SessionCreated",
    "SessionOut",
    "TaskInfo",
    "TranscriptOut",
    "parse_reply",
]

Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_REPLY = ConfigDict(extra="forbid", frozen=True)


class ErrorResponse(BaseModel):
    """Every error reply: a stable ``code`` (``prover_service.errors``) and a sentence for a
    person in ``detail``."""

    model_config = _REPLY
    code: str = Field(max_length=64)
    detail: str


class AttributionRequest(BaseModel):
    """Ask the Prover to compute and publish an attribution (a signed request)."""

    model_config = ConfigDict(extra="forbid")
    task_hash: Hex64
    method: str = Field(max_length=128)  # a name, or a name with settings: trak:proj_dim=128
    budget: int = Field(ge=1, strict=True)  # the operator's cap is settings.max_budget (413)
    p: float = Field(default=0.5, gt=0, lt=1, strict=True)
    seed: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")


class JobOut(BaseModel):
    """A training job and its progress: ``done`` of ``total`` trainings; ``result`` is the
    attribution's content hash once an attribution job is done, ``error`` why one failed.
    ``status`` is one of queued, running, done, failed, cancelled."""

    model_config = _REPLY
    id: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    status: str = Field(max_length=16)
    done: int = Field(ge=0)
    total: int = Field(ge=0)
    result: str | None
    error: str | None


class AttributionOut(BaseModel):
    """A published attribution: its signed manifest (the datamodel bytes are a separate GET)."""

    model_config = _REPLY
    content_hash: Hex64
    manifest: SignedMessage


class ImportAccepted(BaseModel):
    """Uploaded scores were read and checked; ``job`` calibrates and publishes them (its
    ``result`` is the content hash). ``notes``: the inferred orientation, a small budget."""

    model_config = _REPLY
    job: JobOut
    orientation: str = Field(max_length=32)
    orientation_inferred: bool
    notes: list[str]


class SessionCreated(BaseModel):
    """A challenge was accepted: follow the session and its job."""

    model_config = _REPLY
    session_id: str = Field(max_length=64)
    job_id: str = Field(max_length=64)


class SessionOut(BaseModel):
    """A verification session's state: ``status`` is one of training, ready, decided, failed,
    cancelled; ``verdict`` (accept or abort) once the Verifier posted it."""

    model_config = _REPLY
    session_id: str = Field(max_length=64)
    task_hash: Hex64
    attribution_hash: Hex64
    challenge_digest: Hex64
    status: str = Field(max_length=16)
    verdict: str | None
    job: JobOut
    created_at: float


class TranscriptOut(BaseModel):
    """Every signed message of a session; arrays are fetched by hash from /v1/arrays/{sha}."""

    model_config = _REPLY
    session_id: str = Field(max_length=64)
    status: str = Field(max_length=16)
    verdict: str | None
    prover_key: Hex64
    attribution: SignedMessage
    challenge: SignedMessage
    response: SignedMessage | None
    verdict_message: SignedMessage | None


class TaskInfo(BaseModel):
    """One task a Prover serves: its spec hash, sizes (N train points, Z targets), the bound b
    on f, CHECKEQUIV's tolerance tau, and the spec itself (the recipe both sides train)."""

    model_config = _REPLY
    task_hash: Hex64
    name: str
    n_train: int = Field(ge=1)
    n_targets: int = Field(ge=1)
    bound: float = Field(gt=0)
    tau: float = Field(ge=0)
    spec: dict[str, Any]


class LimitsOut(BaseModel):
    """The protocol's size limits (``protocol.messages.LIMITS``) and the operator's quotas:
    |E| and budget caps, signed requests per minute, unfinished jobs and trainings per day per
    key."""

    model_config = _REPLY
    n_train: int = Field(ge=1)
    n_targets: int = Field(ge=1)
    n_subsets: int = Field(ge=1)
    spot_checks: int = Field(ge=0)
    array_bytes: int = Field(ge=1)
    json_bytes: int = Field(ge=1)
    max_subsets: int = Field(ge=1)
    max_budget: int = Field(ge=1)
    rate_per_minute: int = Field(ge=1)
    max_active_jobs_per_key: int = Field(ge=1)
    trainings_per_day: int = Field(ge=1)


class InfoOut(BaseModel):
    """``GET /v1/info``: what a Verifier needs before it challenges (keys, tasks, limits)."""

    model_config = _REPLY
    protocol_version: int
    public_key: Hex64
    tasks: list[TaskInfo]
    device: str
    device_class: str
    limits: LimitsOut
    access: str
    public_transcripts: bool


class ReadyOut(BaseModel):
    """``GET /v1/ready``: every served task's start-up check has finished (while one runs the
    reply is 503 ``task_not_ready`` with ``Retry-After``); ``refused`` maps the spec hash of
    each task whose check failed (and that the Prover therefore refuses) to the reason."""

    model_config = _REPLY
    ready: bool
    refused: dict[str, str]


class InclusionProofOut(BaseModel):
    """RFC 9162 ``PATH`` of the leaf at ``index`` in the tree of ``size`` entries (hex)."""

    model_config = _REPLY
    index: int = Field(ge=0)
    size: int = Field(ge=1)
    leaf_hash: Hex64
    root_hash: Hex64
    proof: list[Hex64]


class ConsistencyProofOut(BaseModel):
    """RFC 9162 ``PROOF`` that the tree of ``first`` entries is a prefix of that of ``second``."""

    model_config = _REPLY
    first: int = Field(ge=0)
    second: int = Field(ge=0)
    first_root: Hex64
    second_root: Hex64
    proof: list[Hex64]


T = TypeVar("T")


_ADAPTERS: dict[object, TypeAdapter[Any]] = {}


def _adapter(model: type[T]) -> TypeAdapter[T]:
    if model not in _ADAPTERS:
        _ADAPTERS[model] = TypeAdapter(model)
    return _ADAPTERS[model]


def parse_reply(model: type[T], data: bytes, what: str) -> T:
    """``data`` (a JSON reply's bytes) as ``model`` (a model of this module, ``SignedMessage``
    or a list of either), strictly: no coercion of ``"5"`` into 5. Anything else -- not JSON, a
    wrong type, a missing or extra field -- is :class:`MalformedResponseError` naming ``what``
    and the first offending field."""
    try:
        return _adapter(model).validate_json(data, strict=True)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "does not parse"}
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise MalformedResponseError(f"{what}: malformed reply: {where}: {first['msg']}") from None
